"""Fractions skill score (Roberts & Lean 2008, MWR 136:78) for precipitation.

For threshold t and a square neighbourhood of n x n pixels, the event fractions are

    P_f = mean over the window of 1{x >= t}   (for an ensemble: of the member mean of
                                              1{x_i >= t}, the event probability)
    P_o = mean over the window of 1{y >= t}
    FSS = 1 - sum (P_f - P_o)^2 / (sum P_f^2 + sum P_o^2)

summed over the valid points. Masked/NaN points (outside a radar composite, the sea)
are left out of the windows: each fraction is the mean over the valid pixels of its
window (a normalised convolution), so the edge of the mask does not count as 'dry'.
A field where neither side has an event (denominator 0) gives NaN: the score is
undefined there, not perfect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy import ndimage

from kmscale.evaluation.base import MEMBER_DIM, Metric, check_aligned, spatial_dims

DEFAULT_WINDOWS = (1, 5, 11, 25)


def _fractions(event: np.ndarray, valid: np.ndarray, n: int) -> np.ndarray:
    if n == 1:
        return np.where(valid, event, 0.0)
    num = ndimage.uniform_filter(np.where(valid, event, 0.0), n, mode="constant")
    den = ndimage.uniform_filter(valid.astype(np.float64), n, mode="constant")
    return np.where(valid, num / np.maximum(den, 1e-12), 0.0)


def fss_field(
    forecast: np.ndarray,
    truth: np.ndarray,
    threshold: float,
    window: int,
    *,
    valid: np.ndarray | None = None,
) -> float:
    """FSS of one field. ``forecast`` (H, W) or (M, H, W) (members give probabilities)."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"fss: expected an odd window of at least 1 pixel, found {window}")
    f = np.asarray(forecast, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    fvalid = np.isfinite(f).all(0) if f.ndim == 3 else np.isfinite(f)
    ok = np.isfinite(y) & fvalid
    if valid is not None:
        ok &= np.asarray(valid, bool)
    if not ok.any():
        return float("nan")
    prob = (f >= threshold).mean(0) if f.ndim == 3 else (f >= threshold).astype(np.float64)
    obs = (y >= threshold).astype(np.float64)
    pf, po = _fractions(prob, ok, window), _fractions(obs, ok, window)
    den = (pf[ok] ** 2).sum() + (po[ok] ** 2).sum()
    if den == 0:
        return float("nan")
    return float(1.0 - ((pf[ok] - po[ok]) ** 2).sum() / den)


@dataclasses.dataclass
class FSS(Metric):
    """Fractions skill score per field, dims ``threshold`` x ``window`` (pixels).

    Thresholds are in the variable's units (mm h-1 for ``tp``).
    """

    thresholds: Sequence[float] = (1.0,)
    windows: Sequence[int] = DEFAULT_WINDOWS

    def compute(self, forecast, truth, *, reduce_dims=None, mask=None, area_weighted=False):
        check_aligned(forecast, truth, where="FSS")
        dims = list(spatial_dims(truth))
        fdims = ([MEMBER_DIM] if MEMBER_DIM in forecast.dims else []) + dims
        valid = (
            mask.astype(bool)
            if mask is not None
            else xr.ones_like(
                truth.isel({d: 0 for d in truth.dims if d not in dims}, drop=True), dtype=bool
            )
        )
        nt, nw = len(self.thresholds), len(self.windows)

        def per_field(f, y, ok):
            lead = y.shape[:-2]
            f = f.reshape(-1, *f.shape[len(lead) :]) if lead else f[None]
            y = y.reshape(-1, *y.shape[-2:])
            ok = np.broadcast_to(ok, y.shape)
            out = np.empty((y.shape[0], nt, nw))
            for i in range(y.shape[0]):
                for a, t in enumerate(self.thresholds):
                    for b, n in enumerate(self.windows):
                        out[i, a, b] = fss_field(f[i], y[i], t, n, valid=ok[i])
            return out.reshape(*lead, nt, nw)

        return xr.apply_ufunc(
            per_field,
            forecast,
            truth,
            valid,
            input_core_dims=[fdims, dims, dims],
            output_core_dims=[["threshold", "window"]],
            dask="parallelized",
            output_dtypes=[float],
            dask_gufunc_kwargs={"output_sizes": {"threshold": nt, "window": nw}},
        ).assign_coords(threshold=list(self.thresholds), window=list(self.windows))
