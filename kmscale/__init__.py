"""kmscale: generative emulation of km-scale weather.

Autoencoders compress high-resolution targets into latents; a regression U-Net maps
coarse predictors and static fields to the latent mean; an EDM diffusion model
generates the residual; the decoded ensembles are scored with CRPS and spectra.
See ARCHITECTURE.md in the shared folder and the README for the data flow.

Importing ``kmscale`` is cheap: the subpackages import torch and friends lazily.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kmscale")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
