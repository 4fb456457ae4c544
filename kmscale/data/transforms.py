"""Invertible per-variable value transforms applied before standardization.

One place defines them, used by the normalization statistics (kmscale.data.stats),
the autoencoders and the pipeline, for NumPy arrays and torch tensors alike.

- ``none``: y = x
- ``log1p``: y = log(1 + x / scale), for precipitation (x >= 0); inverse clamps at 0.
- ``sqrt``: y = sqrt(x / scale), a milder alternative for precipitation.

Standardization then applies z = (y - mean) / std with statistics fitted on the
training period only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TRANSFORMS = ("none", "log1p", "sqrt")


def _lib(x: Any):
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np
    import torch  # local import: NumPy-only users need not pay for torch

    return torch


def _check(name: str) -> None:
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}: expected one of {TRANSFORMS}")


def forward(x: Any, name: str = "none", scale: float = 1.0) -> Any:
    """Apply transform ``name`` to ``x`` (array or tensor, NaNs pass through)."""
    _check(name)
    if name == "none":
        return x
    lib = _lib(x)
    clipped = lib.clip(x, 0, None) if lib is np else x.clamp(min=0)
    if name == "log1p":
        return lib.log1p(clipped / scale)
    return lib.sqrt(clipped / scale)


def inverse(y: Any, name: str = "none", scale: float = 1.0) -> Any:
    """Invert :func:`forward`; physical values that must be non-negative are clamped at 0."""
    _check(name)
    if name == "none":
        return y
    lib = _lib(y)
    if name == "log1p":
        x = lib.expm1(y) * scale
    else:
        x = (lib.clip(y, 0, None) if lib is np else y.clamp(min=0)) ** 2 * scale
    return lib.clip(x, 0, None) if lib is np else x.clamp(min=0)


def standardize(x: Any, stat: dict) -> Any:
    """Transform then standardize with one variable's statistics dict.

    ``stat`` holds ``mean``, ``std`` and optionally ``transform`` and ``scale``:
    the schema written by :mod:`kmscale.data.stats`.
    """
    y = forward(x, stat.get("transform", "none"), stat.get("scale", 1.0))
    return (y - stat["mean"]) / stat["std"]


def destandardize(z: Any, stat: dict) -> Any:
    """Invert :func:`standardize`."""
    y = z * stat["std"] + stat["mean"]
    return inverse(y, stat.get("transform", "none"), stat.get("scale", 1.0))
