"""Imports every built-in autoencoder module so that their @register decorators run.

Add a line here for each new built-in implementation.
"""

from kmscale.autoencoders import (
    face_vae,  # noqa: F401
    fsae,  # noqa: F401
    grouped,  # noqa: F401
    hyperprior,  # noqa: F401
    identity,  # noqa: F401
    pseudo_precip,  # noqa: F401
    vae,  # noqa: F401
)
