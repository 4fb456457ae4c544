"""Torch versions of the core metrics: on an accelerator, or as a differentiable loss.

Training validation scores decoded members on the CPU with the numpy kernels of
``probabilistic.py`` and ``spectra.py`` (``kmscale.diffusion.validation``), as ``kmscale
score`` does; these torch versions follow the same definitions and reuse their sorting
network, and ``tests/test_eval_torch.py`` / ``tests/test_validation_scores.py`` check them
against the numpy/xarray versions on the same arrays. They run on any device, keep the input
dtype (compute in float32 or float64), and do not track gradients unless the caller
does (the CRPS here is differentiable almost everywhere and can serve as a loss).

Shapes: ensembles are (M, ...) with members first; truth is (...).
"""

from __future__ import annotations

import torch

from kmscale.evaluation.probabilistic import (
    NETWORK_MAX_MEMBERS,
    sorting_network,
    spread_skill_from_parts,
)


def _check(ensemble: torch.Tensor, truth: torch.Tensor) -> int:
    if ensemble.ndim < 1 or ensemble.shape[1:] != truth.shape:
        raise ValueError(
            f"expected ensemble (M, *truth.shape) = (M, {tuple(truth.shape)}), found "
            f"{tuple(ensemble.shape)}"
        )
    return int(ensemble.shape[0])


def crps_parts(ensemble: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(skill, pair_sum): (1/M) sum_i |x_i - y| and D = sum_ij |x_i - x_j| = 2 sum_i (2i-M-1) d_(i).

    The sort runs on anomalies d_i = x_i - y (D is shift invariant; keeps float32 exact
    enough for 280 K fields). NaN anywhere in a point's inputs gives NaN there.
    """
    m = _check(ensemble, truth)
    d = ensemble - truth.unsqueeze(0)
    skill = d.abs().mean(0)
    if m <= NETWORK_MAX_MEMBERS:
        # Same sorting network as the numpy kernel: elementwise min/max of whole member
        # slices beats torch.sort along a short leading dim (about 5x on CPU).
        rows = list(d.unbind(0))
        for i, j in sorting_network(m):
            rows[i], rows[j] = torch.minimum(rows[i], rows[j]), torch.maximum(rows[i], rows[j])
        pair_sum = torch.zeros_like(skill)
        for i, r in enumerate(rows):
            if 2 * i + 1 != m:
                pair_sum = pair_sum + (2 * (i + 1) - m - 1) * r
        pair_sum = 2.0 * pair_sum
    else:
        ds, _ = torch.sort(d, dim=0)
        coef = (2 * torch.arange(1, m + 1, device=d.device, dtype=d.dtype) - m - 1).view(
            m, *([1] * truth.ndim)
        )
        pair_sum = 2.0 * (coef * ds).sum(0)
    # torch.sort puts NaN last but does not propagate it: make a NaN member poison the point.
    nan = torch.isnan(d).any(0)
    return skill, torch.where(nan, torch.full_like(pair_sum, float("nan")), pair_sum)


def crps_fair(ensemble: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Fair CRPS (M, ...) x (...) -> (...): skill - D / (2 M (M - 1)); MAE for M = 1."""
    m = _check(ensemble, truth)
    skill, pair_sum = crps_parts(ensemble, truth)
    if m == 1:
        return skill
    return skill - pair_sum / (2.0 * m * (m - 1))


def crps_standard(ensemble: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Standard (empirical-distribution, properscoring's) CRPS: skill - D / (2 M^2)."""
    m = _check(ensemble, truth)
    skill, pair_sum = crps_parts(ensemble, truth)
    return skill - pair_sum / (2.0 * m * m)


def spread_skill_ratio(ensemble: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """sqrt((M+1)/M) sqrt(mean s^2) / sqrt(mean (x_bar - y)^2), means over all points.

    s^2 is the unbiased (ddof=1) ensemble variance; NaN points are left out; scalar.
    Needs M >= 2.
    """
    m = _check(ensemble, truth)
    if m < 2:
        raise ValueError(f"spread_skill_ratio: expected at least 2 members, found {m}")
    var = ensemble.var(0, unbiased=True)
    mse = (ensemble.mean(0) - truth) ** 2
    ok = torch.isfinite(var) & torch.isfinite(mse)
    return spread_skill_from_parts(var[ok].mean(), mse[ok].mean(), m)


def _hann(n: int, like: torch.Tensor) -> torch.Tensor:
    """Periodic Hann window, as ``spectra.hann``."""
    return torch.hann_window(n, periodic=True, dtype=like.dtype, device=like.device)


def zonal_power_spectrum(
    x: torch.Tensor, detrend: bool = True, window: str | None = "hann"
) -> torch.Tensor:
    """S_k = 2|F_k|^2, k = 1..W//2, along the last axis: (..., W) -> (..., W//2).

    Same definition as ``spectra.zonal_power_spectrum`` (linear detrend, periodic Hann
    window normalised by sqrt(mean w^2), Nyquist counted once). Average the result over
    lines/batch yourself (``.mean(dim=...)``).
    """
    if window not in ("hann", None):
        raise ValueError(f"zonal_power_spectrum: expected window 'hann' or None, found {window!r}")
    n = x.shape[-1]
    if n < 2:
        raise ValueError(f"zonal_power_spectrum: expected lines of at least 2 points, found {n}")
    if not torch.is_floating_point(x):
        x = x.double()
    if detrend:
        t = torch.arange(n, dtype=x.dtype, device=x.device) - (n - 1) / 2.0
        slope = (x * t).sum(-1, keepdim=True) / (t * t).sum()
        x = x - x.mean(-1, keepdim=True) - slope * t
    if window == "hann":
        w = _hann(n, x)
        x = x * w / torch.sqrt((w * w).mean())
    f = torch.fft.rfft(x, dim=-1) / n
    s = 2.0 * f[..., 1 : n // 2 + 1].abs() ** 2
    if n % 2 == 0:
        s = torch.cat([s[..., :-1], s[..., -1:] / 2.0], dim=-1)
    return s
