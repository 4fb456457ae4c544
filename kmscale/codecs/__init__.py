"""Bitstreams: entropy models, range coding, the archive container, error-bounded residuals.

The modules here turn integer symbols into bytes and back; they import nothing from the
model packages, which build on them (``kmscale.autoencoders`` uses them for
``Autoencoder.compress``/``decompress``)::

    entropy_models  EntropyBottleneck (factorized prior), GaussianConditional (scale table)
    coding          integer frequency tables -> bytes with constriction's range coder
    container       the versioned, checksummed archive file
    error_bound     residual quantizer with a guaranteed maximum absolute error
"""
