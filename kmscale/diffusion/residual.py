"""The residual: THE one definition of what the diffusion model generates.

The regression U-Net predicts the latent mean ``z_mean`` (written ẑ in the architecture
doc); the diffusion model learns the distribution of what is left over::

    r = (z - ẑ) / scale          (make: training targets)
    z = ẑ + scale · r            (compose: sampling output)

``scale`` rescales the residual towards unit variance (CorrDiff and LDM_res both
train on a residual whose spread is far below that of z; EDM assumes
``sigma_data``-sized data). It is a scalar or anything broadcastable against
``z`` (e.g. a per-channel tensor shaped ``(C, 1, 1)``). Training and sampling both
call these two functions, so the definition cannot drift between them.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from kmscale.errors import GridError, describe

Array = TypeVar("Array", torch.Tensor, np.ndarray)


def _check_shapes(a, b, names: tuple[str, str]) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise GridError(
            describe(
                f"{names[1]} shaped like {names[0]} {tuple(a.shape)}",
                tuple(b.shape),
                where="residual",
            )
        )


def _check_scale(scale) -> None:
    s = scale.detach().cpu().numpy() if isinstance(scale, torch.Tensor) else np.asarray(scale)
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(describe("a finite residual scale > 0", scale, where="residual"))


def make(z: Array, z_mean: Array, scale: float | Array = 1.0) -> Array:
    """Residual ``r = (z - z_mean) / scale``.

    Args:
        z: target latents (B, C, H, W) (any shape; numpy or torch), normalized latent units.
        z_mean: regression prediction of ``z``, same shape.
        scale: positive scalar or array broadcastable to ``z`` (e.g. per channel (C, 1, 1)).

    Returns:
        r: same shape and type as ``z``, dimensionless.
    """
    _check_shapes(z, z_mean, ("z", "z_mean"))
    _check_scale(scale)
    return (z - z_mean) / scale


def compose(z_mean: Array, r: Array, scale: float | Array = 1.0) -> Array:
    """Inverse of :func:`make`: ``z = z_mean + scale * r``.

    Args:
        z_mean: regression prediction (B, C, H, W) (or (..., C, H, W) broadcast against
            an ensemble: ``r`` may carry extra leading dims, e.g. (M, B, C, H, W)).
        r: residual samples.
        scale: the same scale that was given to :func:`make`.

    Returns:
        z: shape of ``r``.
    """
    if tuple(r.shape[-z_mean.ndim :]) != tuple(z_mean.shape):
        raise GridError(
            describe(
                f"residual ending in z_mean's shape {tuple(z_mean.shape)}",
                tuple(r.shape),
                where="residual",
            )
        )
    _check_scale(scale)
    return z_mean + scale * r


def center_members(r: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """An ensemble of residuals with its member mean removed and its variance kept.

    The regression U-Net is trained with a squared error, so it estimates the
    conditional mean and ``E[r | predictors] = 0`` by construction. A diffusion model
    trained on cross-fitted residuals (fold regressions that each extrapolate to the
    days they did not see) can carry the folds' systematic errors into its members'
    mean, which the full regression does not make. Centering enforces the
    definition: ``r_m - mean_m(r)``, times ``sqrt(M / (M - 1))`` because removing the
    sample mean of M independent members shrinks each one's variance by ``(M - 1)/M``.
    This holds only as far as the regression reaches the conditional mean: where it
    misses real structure that the members share (an under-fitted pixel-space U-Net
    without the smallest scales), centring removes that structure too, so it is an
    option (``SamplerSettings.center_residuals``), off by default.
    It is the ensemble re-centring of NWP (members re-centred on the best
    deterministic estimate) done on the residual. Members then depend on the whole
    ensemble (on M and every seed), not on their own seed alone.

    Args:
        r: residual members, members along ``dim`` (e.g. (M, C, H, W)).
        dim: the member dimension.

    Returns:
        centred residuals, same shape.
    """
    m = r.shape[dim]
    if m < 2:
        raise ValueError(
            describe("at least 2 members to centre an ensemble", m, where="residual.center_members")
        )
    return (r - r.mean(dim=dim, keepdim=True)) * (m / (m - 1)) ** 0.5
