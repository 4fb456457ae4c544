"""Imports every built-in autoencoder module so that their @register decorators run.

Add a line here for each new built-in implementation.
"""

from kmscale.autoencoders import (
    grouped,  # noqa: F401
    identity,  # noqa: F401
    vae,  # noqa: F401
)
