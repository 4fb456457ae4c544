"""Autoencoders: physical fields <-> normalized latents (see base.Autoencoder).

The names below are resolved lazily, so that importing a submodule (for example the
command-line module, which must stay light) does not import torch and diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Autoencoder": "kmscale.autoencoders.base",
    "available": "kmscale.autoencoders.registry",
    "get_autoencoder_class": "kmscale.autoencoders.registry",
    "load_autoencoder": "kmscale.autoencoders.registry",
    "register": "kmscale.autoencoders.registration",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kmscale.autoencoders' has no attribute {name!r}")
