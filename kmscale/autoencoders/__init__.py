"""Autoencoders: physical fields <-> normalized latents (see base.Autoencoder)."""

from kmscale.autoencoders.base import Autoencoder
from kmscale.autoencoders.registry import (
    available,
    get_autoencoder_class,
    load_autoencoder,
    register,
)

__all__ = ["Autoencoder", "available", "get_autoencoder_class", "load_autoencoder", "register"]
