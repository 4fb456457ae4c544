"""Ensemble scores: CRPS (fair and standard, with skill and spread parts), ensemble-mean
error, spread, spread-skill ratio, rank histogram.

CRPS of an ensemble x_1..x_M against the truth y (Gneiting & Raftery 2007, eq. 21):

    CRPS = E|X - y| - 1/2 E|X - X'|  =  skill - 1/2 spread

    skill  = (1/M) sum_i |x_i - y|
    spread = D / (M (M - 1))   fair (Ferro 2014; Zamo & Naveau 2018): unbiased for the
                               CRPS of the distribution the members are drawn from
    spread = D / M^2           standard: the CRPS of the empirical distribution (what
                               ``properscoring.crps_ensemble`` returns; biased high for
                               small M, so it is never the headline here)

    D = sum_i sum_j |x_i - x_j| = 2 sum_i (2 i - M - 1) x_(i)

with x_(1) <= ... <= x_(M) the sorted members, so D costs a sort, O(M log M), instead of
the O(M^2) pairs. The sort runs on anomalies d_i = x_i - y (D is shift invariant), which
keeps float32 accurate for fields such as 280 K temperatures. Up to 64 members the sort
is a sorting network (Batcher's odd-even merge sort, O(M log^2 M) comparators: 63 for
M = 16) applied elementwise to cache-sized blocks of points: numpy has no fast batched
sort of short rows, and min/max over blocks runs at memory speed without a compiler
(see ``benchmarks/evaluation_speed.py``); larger ensembles use np.sort, O(M log M).

NaN policy: a NaN in the truth or in any member gives NaN at that point (the ensemble
is not silently shrunk); spatial means leave such points out (``base.spatial_mean``).
With one member the fair spread is defined as 0, so both CRPS reduce to the MAE.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
import xarray as xr

from kmscale.evaluation.base import (
    MEMBER_DIM,
    Metric,
    area_weights,
    check_aligned,
    require_member_dim,
    spatial_dims,
    spatial_mean,
)

# Points per block of the sorting network: 16 members x 16384 float64 = 2 MiB, which
# stays in L2/L3 cache while the ~60 min/max passes run over it.
BLOCK_POINTS = 16384
# Up to this ensemble size the sorting network is used (fewer passes than np.sort's
# per-row calls); larger ensembles sort each block with np.sort.
NETWORK_MAX_MEMBERS = 64


# ---------------------------------------------------------------------------------------
# numpy kernels (member axis first or given); the xarray metrics below call these
# ---------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def sorting_network(m: int) -> tuple[tuple[int, int], ...]:
    """Comparator pairs (i, j), i < j, of Batcher's odd-even merge sort for ``m`` inputs.

    Built for the next power of two; comparators touching padded inputs (index >= m)
    are dropped, which is exact because the padding acts as +inf.
    """
    p = 1
    while p < m:
        p *= 2
    pairs = []
    t = 1
    while t < p:
        k = t
        while k >= 1:
            for j in range(k % t, p - k, 2 * k):
                for i in range(min(k, p - j - k)):
                    if (i + j) // (2 * t) == (i + j + k) // (2 * t):
                        pairs.append((i + j, i + j + k))
            k //= 2
        t *= 2
    return tuple((a, b) for a, b in pairs if b < m)


def _float_dtype(*arrays: np.ndarray) -> np.dtype:
    dt = np.result_type(*arrays)
    return dt if dt in (np.float32, np.float64) else np.dtype(np.float64)


def crps_parts(
    ensemble: np.ndarray, truth: np.ndarray, *, axis: int = 0, block: int = BLOCK_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """Point-wise CRPS parts of an ensemble.

    Args:
        ensemble: (M, ...) members along ``axis``; any float or int dtype.
        truth: (...) the ensemble's shape without ``axis``.

    Returns:
        ``(skill, pair_sum)``, each shaped like ``truth`` (float32 for float32 input,
        else float64): skill = (1/M) sum_i |x_i - y|, pair_sum = D = sum_ij |x_i - x_j|.
        NaN where the truth or any member is NaN.
    """
    ens = np.moveaxis(np.asarray(ensemble), axis, 0)
    truth = np.asarray(truth)
    if ens.shape[1:] != truth.shape:
        raise ValueError(
            f"crps: expected truth shape {ens.shape[1:]} (ensemble without members), found "
            f"{truth.shape}"
        )
    m = ens.shape[0]
    if m < 1:
        raise ValueError("crps: expected at least one member, found 0")
    dtype = _float_dtype(ens, truth)
    e = ens.reshape(m, -1)
    y = truth.reshape(-1)
    n = y.size
    skill = np.empty(n, dtype)
    pair_sum = np.empty(n, dtype)
    net = sorting_network(m)
    coef = [2 * (i + 1) - m - 1 for i in range(m)]
    if m > NETWORK_MAX_MEMBERS:
        _crps_parts_sorted(e, y, skill, pair_sum, coef, block)
        skill /= m
        pair_sum *= 2
        return skill.reshape(truth.shape), pair_sum.reshape(truth.shape)
    bufs = [np.empty(min(block, max(n, 1)), dtype) for _ in range(m + 2)]
    for s in range(0, n, block):
        b = min(block, n - s)
        views = [buf[:b] for buf in bufs]
        rows = list(range(m))  # rows[i]: index of the buffer holding sorted slot i
        spare, tmp = m, views[m + 1]
        yb = y[s : s + b]
        sk, ps = skill[s : s + b], pair_sum[s : s + b]
        for i in range(m):
            np.subtract(e[i, s : s + b], yb, out=views[i], casting="unsafe")
        np.abs(views[0], out=sk)
        for i in range(1, m):
            np.abs(views[i], out=tmp)
            sk += tmp
        for i, j in net:
            a, c = views[rows[i]], views[rows[j]]
            # NaN propagates through both min and max: one NaN member -> NaN result.
            np.minimum(a, c, out=views[spare])
            np.maximum(a, c, out=c)
            rows[i], spare = spare, rows[i]
        ps.fill(0)
        for i in range(m):
            if coef[i]:
                np.multiply(views[rows[i]], coef[i], out=tmp)
                ps += tmp
    skill /= m
    pair_sum *= 2
    return skill.reshape(truth.shape), pair_sum.reshape(truth.shape)


def _crps_parts_sorted(e, y, skill, pair_sum, coef, block) -> None:
    """Large ensembles: np.sort per block, O(M log M) per point (the network is O(M log^2 M))."""
    m, n = e.shape
    c = np.asarray(coef, dtype=skill.dtype)
    step = max(1, block * 16 // m)
    for s in range(0, n, step):
        d = e[:, s : s + step] - y[s : s + step]
        skill[s : s + step] = np.abs(d).sum(0)
        d.sort(axis=0)
        pair_sum[s : s + step] = c @ d
        # np.sort puts NaN last instead of propagating it: a NaN member poisons the point.
        bad = np.isnan(d[-1])
        pair_sum[s : s + step][bad] = np.nan


def spread_from_pair_sum(pair_sum: np.ndarray, m: int, *, fair: bool = True) -> np.ndarray:
    """E|X - X'| from D = sum_ij |x_i - x_j|: D/(M(M-1)) (fair) or D/M^2 (standard)."""
    if fair:
        return pair_sum / (m * (m - 1)) if m > 1 else np.zeros_like(pair_sum)
    return pair_sum / (m * m)


def crps_ensemble(
    ensemble: np.ndarray, truth: np.ndarray, *, axis: int = 0, fair: bool = True
) -> np.ndarray:
    """Point-wise CRPS of ``ensemble`` (M, ...) against ``truth`` (...); see module doc."""
    m = np.asarray(ensemble).shape[axis]
    skill, pair_sum = crps_parts(ensemble, truth, axis=axis)
    return skill - 0.5 * spread_from_pair_sum(pair_sum, m, fair=fair)


def rank_of_truth(
    ensemble: np.ndarray, truth: np.ndarray, *, axis: int = 0, seed: int = 0
) -> np.ndarray:
    """Rank of the truth among the members, 0..M (float, NaN where any input is NaN).

    Ties (e.g. many zero-precipitation members equal to a zero truth) are broken
    uniformly at random, the standard treatment (Hamill 2001), with a fixed seed so the
    histogram is reproducible.
    """
    ens = np.moveaxis(np.asarray(ensemble), axis, 0)
    y = np.asarray(truth)
    below = (ens < y).sum(0)
    ties = (ens == y).sum(0)
    rng = np.random.default_rng(seed)
    rank = below + np.floor(rng.random(y.shape) * (ties + 1)).astype(below.dtype)
    bad = np.isnan(y) | np.isnan(ens).any(0)
    return np.where(bad, np.nan, rank.astype(float))


# ---------------------------------------------------------------------------------------
# xarray metrics (weatherbench2 style)
# ---------------------------------------------------------------------------------------
def crps_parts_xr(forecast: xr.DataArray, truth: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """:func:`crps_parts` over named dims: (skill, pair_sum), dims of ``truth``.

    In-memory inputs go to the kernel member-first without a copy (a member-last
    transpose would copy the whole ensemble); dask inputs run block-wise.
    """
    require_member_dim(forecast)
    fc, tr = xr.align(forecast, truth, join="exact")
    if fc.chunks is None and tr.chunks is None:
        dims = [d for d in fc.dims if d != MEMBER_DIM]
        tr = tr.broadcast_like(fc.isel({MEMBER_DIM: 0}, drop=True)).transpose(*dims)
        skill, pair_sum = crps_parts(fc.transpose(MEMBER_DIM, *dims).values, tr.values, axis=0)
        return tr.copy(data=skill), tr.copy(data=pair_sum)
    skill, pair_sum = xr.apply_ufunc(
        lambda e, y: crps_parts(e, y, axis=-1),
        fc,
        tr,
        input_core_dims=[[MEMBER_DIM], []],
        output_core_dims=[[], []],
        dask="parallelized",
        output_dtypes=[_float_dtype(np.empty(0, fc.dtype)), _float_dtype(np.empty(0, fc.dtype))],
    )
    return skill, pair_sum


@dataclasses.dataclass
class CRPSSkill(Metric):
    """skill = E|X - y| = (1/M) sum_i |x_i - y|, the first part of the CRPS (units of x)."""

    def pointwise(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.DataArray:
        return crps_parts_xr(forecast, truth)[0]


@dataclasses.dataclass
class CRPSSpread(Metric):
    """spread = E|X - X'|: D/(M(M-1)) when ``fair`` (default), else D/M^2."""

    fair: bool = True

    def pointwise(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.DataArray:
        m = require_member_dim(forecast)
        _, pair_sum = crps_parts_xr(forecast, truth)
        return spread_from_pair_sum(pair_sum, m, fair=self.fair)


@dataclasses.dataclass
class CRPS(Metric):
    """CRPS = skill - 1/2 spread (fair by default; ``fair=False`` gives properscoring's).

    References: Gneiting & Raftery (2007) JASA 102:359; Ferro (2014) QJRMS 140:1917;
    Zamo & Naveau (2018) Math. Geosci. 50:209.
    """

    fair: bool = True

    def pointwise(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.DataArray:
        m = require_member_dim(forecast)
        skill, pair_sum = crps_parts_xr(forecast, truth)
        return skill - 0.5 * spread_from_pair_sum(pair_sum, m, fair=self.fair)


@dataclasses.dataclass
class EnsembleMeanMSE(Metric):
    """(mean_i x_i - y)^2, the skill half of the spread-skill ratio (units of x squared)."""

    def pointwise(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.DataArray:
        require_member_dim(forecast)
        return (forecast.mean(MEMBER_DIM, skipna=False) - truth) ** 2


@dataclasses.dataclass
class EnsembleMeanRMSE(Metric):
    """sqrt of the spatial mean of the ensemble-mean squared error."""

    def compute(self, forecast, truth, *, reduce_dims=None, mask=None, area_weighted=True):
        return np.sqrt(
            EnsembleMeanMSE().compute(
                forecast, truth, reduce_dims=reduce_dims, mask=mask, area_weighted=area_weighted
            )
        )


@dataclasses.dataclass
class EnsembleVariance(Metric):
    """Unbiased ensemble variance s^2 = 1/(M-1) sum_i (x_i - mean)^2; NaN for M = 1.

    The truth is used only for its NaNs (so the same points enter spread and skill).
    """

    def pointwise(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.DataArray:
        m = require_member_dim(forecast)
        if m < 2:
            return xr.full_like(truth, np.nan, dtype=float)
        var = forecast.var(MEMBER_DIM, ddof=1, skipna=False)
        return var.where(truth.notnull())


@dataclasses.dataclass
class EnsembleSpread(Metric):
    """sqrt of the spatial mean unbiased ensemble variance (units of x)."""

    def compute(self, forecast, truth, *, reduce_dims=None, mask=None, area_weighted=True):
        return np.sqrt(
            EnsembleVariance().compute(
                forecast, truth, reduce_dims=reduce_dims, mask=mask, area_weighted=area_weighted
            )
        )


def spread_skill_from_parts(mean_variance, mean_mse, m: int):
    """SSR = sqrt((M+1)/M) * sqrt(mean s^2) / sqrt(mean (x_bar - y)^2).

    For an ensemble whose members and truth are exchangeable draws, E(x_bar - y)^2 =
    sigma^2 (1 + 1/M) and E s^2 = sigma^2, so the factor makes SSR = 1 (Fortin et al.
    2014, MWR 142:1113). Works on numbers, numpy arrays, DataArrays and tensors.
    """
    return ((m + 1) / m) ** 0.5 * (mean_variance**0.5) / (mean_mse**0.5)


@dataclasses.dataclass
class SpreadSkillRatio(Metric):
    """Spread-skill ratio with the sqrt((M+1)/M) correction; 1 for a calibrated ensemble.

    The means over ``reduce_dims`` are taken before the ratio (pass ``("time", "lat",
    "lon")`` to pool times), never a mean of per-point ratios.
    """

    def compute(self, forecast, truth, *, reduce_dims=None, mask=None, area_weighted=True):
        m = require_member_dim(forecast)
        kw = dict(reduce_dims=reduce_dims, mask=mask, area_weighted=area_weighted)
        var = EnsembleVariance().compute(forecast, truth, **kw)
        mse = EnsembleMeanMSE().compute(forecast, truth, **kw)
        return spread_skill_from_parts(var, mse, m)


@dataclasses.dataclass
class RankHistogram(Metric):
    """Counts of the truth's rank among the members, dim ``rank`` = 0..M.

    A calibrated ensemble gives a flat histogram (each count ~ N/(M+1)). Ties are broken
    at random with ``seed``. Not area-weighted (counts of points).
    """

    seed: int = 0

    def pointwise(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.DataArray:
        require_member_dim(forecast)
        return xr.apply_ufunc(
            lambda e, y: rank_of_truth(e, y, axis=-1, seed=self.seed),
            forecast,
            truth,
            input_core_dims=[[MEMBER_DIM], []],
            dask="parallelized",
            output_dtypes=[float],
        )

    def compute(self, forecast, truth, *, reduce_dims=None, mask=None, area_weighted=False):
        check_aligned(forecast, truth, where="RankHistogram")
        m = require_member_dim(forecast)
        return self.counts(
            self.pointwise(forecast, truth), m, truth, reduce_dims=reduce_dims, mask=mask
        )

    @staticmethod
    def counts(
        ranks: xr.DataArray, m: int, truth: xr.DataArray, *, reduce_dims=None, mask=None
    ) -> xr.DataArray:
        """Counts of each rank 0..M of a :meth:`pointwise` field over ``reduce_dims``.

        The result has the dim ``rank``."""
        if mask is not None:
            ranks = ranks.where(mask.astype(bool))
        dims = list(reduce_dims) if reduce_dims is not None else list(spatial_dims(truth))
        counts = [(ranks == r).sum(dims) for r in range(m + 1)]
        return xr.concat(counts, dim="rank").assign_coords(rank=np.arange(m + 1))


def crps_summary(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    *,
    reduce_dims=None,
    mask: xr.DataArray | None = None,
    area_weighted: bool = True,
) -> xr.Dataset:
    """Fair and standard CRPS with their parts from one pass over the data.

    Returns a Dataset with ``crps_fair``, ``crps_standard``, ``crps_skill``,
    ``crps_spread_fair``, ``crps_spread_standard`` (spatial means, units of x).
    """
    check_aligned(forecast, truth, where="crps_summary")
    m = require_member_dim(forecast)
    dims = list(reduce_dims) if reduce_dims is not None else list(spatial_dims(truth))
    weights = area_weights(truth) if area_weighted else None
    skill, pair_sum = crps_parts_xr(forecast, truth)
    # The means of the parts come from the same points: pair_sum is NaN wherever skill is.
    s = spatial_mean(skill, dims, weights=weights, mask=mask)
    d = spatial_mean(pair_sum, dims, weights=weights, mask=mask)
    return xr.Dataset(crps_from_mean_parts(s, d, m))


def crps_from_mean_parts(skill, pair_sum, m: int) -> dict:
    """CRPS composites from the (spatial) means of skill and D: fair/standard CRPS and spreads.

    CRPS = skill - spread / 2 is linear in the parts, so the mean CRPS is built from
    the mean parts. Works on numbers, numpy arrays and DataArrays.
    """
    fair = spread_from_pair_sum(pair_sum, m, fair=True)
    std = spread_from_pair_sum(pair_sum, m, fair=False)
    return {
        "crps_fair": skill - 0.5 * fair,
        "crps_standard": skill - 0.5 * std,
        "crps_skill": skill,
        "crps_spread_fair": fair,
        "crps_spread_standard": std,
    }
