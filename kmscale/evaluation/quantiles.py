"""Extremes: errors of high quantiles and the threshold-weighted CRPS.

Quantile error (how well a generative model reproduces the tail of the distribution,
pooled over space, members and the given dims):

    QE_q = Q_q(forecast values) - Q_q(truth values)      e.g. q = 0.99, 0.999

Threshold-weighted CRPS (Gneiting & Ranjan 2011, JBES 29:411; Allen et al. 2023,
SIAM/ASA JUQ 11:396) with weight w(z) = 1{z >= t} puts all the score on exceeding
threshold t; it is the CRPS of the values passed through the chaining function
v(z) = max(z, t):

    twCRPS_t(x, y) = CRPS(v(x_1..x_M), v(y))

so the fair and standard estimators (and the sorting kernel) carry over unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import xarray as xr

from kmscale.evaluation.base import (
    MEMBER_DIM,
    Metric,
    check_aligned,
    require_member_dim,
    spatial_dims,
)
from kmscale.evaluation.probabilistic import crps_parts, spread_from_pair_sum

DEFAULT_QUANTILES = (0.99, 0.999)


def quantile_error(
    forecast: np.ndarray,
    truth: np.ndarray,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    *,
    overwrite: bool = False,
) -> np.ndarray:
    """Q_q(forecast) - Q_q(truth) over all finite values of each, one per q.

    A side with no finite value gives NaN. ``forecast`` may carry members (pooled).
    ``overwrite`` lets the quantile partition the inputs in place (no copy of a
    possibly multi-GB pooled ensemble).
    """
    q = np.asarray(quantiles, dtype=float)

    def finite(a):
        a = np.asarray(a).ravel()
        ok = np.isfinite(a)
        return (a, overwrite) if ok.all() else (a[ok], True)

    (f, fo), (t, to) = finite(forecast), finite(truth)
    if f.size == 0 or t.size == 0:
        return np.full(q.shape, np.nan)
    return np.quantile(f, q, overwrite_input=fo) - np.quantile(t, q, overwrite_input=to)


def twcrps(
    ensemble: np.ndarray, truth: np.ndarray, threshold: float, *, axis: int = 0, fair: bool = True
) -> np.ndarray:
    """Point-wise threshold-weighted CRPS, weight 1{z >= threshold}; units of x."""
    ens = np.asarray(ensemble)
    m = ens.shape[axis]
    dtype = np.result_type(ens.dtype, np.float32)
    # np.maximum keeps NaN (a NaN point stays NaN, as for the CRPS).
    skill, pair_sum = crps_parts(
        np.maximum(ens, dtype.type(threshold)),
        np.maximum(np.asarray(truth), dtype.type(threshold)),
        axis=axis,
    )
    return skill - 0.5 * spread_from_pair_sum(pair_sum, m, fair=fair)


@dataclasses.dataclass
class QuantileError(Metric):
    """Forecast minus truth quantile, dim ``quantile``; pooled over members and
    ``reduce_dims`` (default the spatial dims; add ``time`` to pool times).
    """

    quantiles: Sequence[float] = DEFAULT_QUANTILES

    def compute(self, forecast, truth, *, reduce_dims=None, mask=None, area_weighted=False):
        check_aligned(forecast, truth, where="QuantileError")
        dims = list(reduce_dims) if reduce_dims is not None else list(spatial_dims(truth))
        if mask is not None:
            forecast, truth = forecast.where(mask.astype(bool)), truth.where(mask.astype(bool))
        fdims = dims + ([MEMBER_DIM] if MEMBER_DIM in forecast.dims else [])
        return xr.apply_ufunc(
            lambda f, t: _qe_lastaxes(f, t, len(fdims), len(dims), self.quantiles),
            forecast,
            truth,
            input_core_dims=[fdims, dims],
            output_core_dims=[["quantile"]],
            dask="parallelized",
            output_dtypes=[float],
            dask_gufunc_kwargs={
                "output_sizes": {"quantile": len(self.quantiles)},
                "allow_rechunk": True,
            },
        ).assign_coords(quantile=list(self.quantiles))


def _qe_lastaxes(f: np.ndarray, t: np.ndarray, nf: int, nt: int, quantiles) -> np.ndarray:
    lead = np.broadcast_shapes(f.shape[: f.ndim - nf], t.shape[: t.ndim - nt])
    f = np.broadcast_to(f, lead + f.shape[f.ndim - nf :]).reshape(*lead, -1)
    t = np.broadcast_to(t, lead + t.shape[t.ndim - nt :]).reshape(*lead, -1)
    out = np.empty(lead + (len(quantiles),))
    for idx in np.ndindex(*lead):
        out[idx] = quantile_error(f[idx], t[idx], quantiles)
    return out


@dataclasses.dataclass
class ThresholdWeightedCRPS(Metric):
    """twCRPS with weight 1{z >= threshold} (fair by default), units of x."""

    threshold: float = 0.0
    fair: bool = True

    def pointwise(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.DataArray:
        require_member_dim(forecast)
        return xr.apply_ufunc(
            lambda e, y: twcrps(e, y, self.threshold, axis=-1, fair=self.fair),
            forecast,
            truth,
            input_core_dims=[[MEMBER_DIM], []],
            dask="parallelized",
            output_dtypes=[float],
        )
