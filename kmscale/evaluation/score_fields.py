"""Scores of one forecast field (one time, one variable) against the truth, per region.

Every number comes from the metric classes of this package: each point-wise field is
computed once by its metric's ``pointwise`` (or the CRPS parts kernel) and reduced over
each region by the metric's ``reduce`` (the spatial mean ``compute`` takes), so
``kmscale score`` and ``CRPS().compute(...)`` share one definition of each metric.

A point is scored in a region when the truth and every member are finite there and the
region's mask is true (``n_valid`` counts them); the same points enter every score.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from kmscale.evaluation.base import MEMBER_DIM
from kmscale.evaluation.deterministic import MAE, MSE, SSIM, Bias
from kmscale.evaluation.precipitation import FSS
from kmscale.evaluation.probabilistic import (
    CRPSSkill,
    EnsembleMeanMSE,
    EnsembleVariance,
    RankHistogram,
    crps_from_mean_parts,
    crps_parts_xr,
)
from kmscale.evaluation.quantiles import QuantileError, ThresholdWeightedCRPS

# Spatial-mean scores per time step (the names of the metrics file's variables).
PER_TIME = (
    "crps_fair", "crps_standard", "crps_skill", "crps_spread_fair", "crps_spread_standard",
    "ensmean_mse", "ensmean_mae", "ensmean_bias", "ens_variance", "ssim_ensmean",
)  # fmt: skip


@dataclasses.dataclass
class FieldSettings:
    """What is computed for every field (taken from ``ScoreOptions``)."""

    area_weighted: bool
    ssim: bool
    quantiles: Sequence[float]
    precip_thresholds: Sequence[float]
    fss_windows: Sequence[int]


@dataclasses.dataclass
class FieldScores:
    """Scores of one M-member forecast field in R regions.

    Attributes:
        per_time: name in :data:`PER_TIME` -> (R,) spatial means (NaN: no valid point).
        n_valid: (R,) points scored.
        member_mse: (R, M) mean squared error of each member.
        rank_counts: (R, M + 1) counts of the truth's rank.
        quantile_error: (R, Q) forecast minus truth quantiles.
        twcrps: (R, n_thresholds) fair threshold-weighted CRPS (precipitation only, else empty).
        fss: (R, n_thresholds, n_windows) fractions skill score (precipitation only).
        ensmean: (H, W) ensemble mean (for spectra and maps).
    """

    per_time: dict[str, np.ndarray]
    n_valid: np.ndarray
    member_mse: np.ndarray
    rank_counts: np.ndarray
    quantile_error: np.ndarray
    twcrps: np.ndarray
    fss: np.ndarray
    ensmean: np.ndarray


def score_field(
    ensemble: xr.DataArray,
    truth: xr.DataArray,
    regions: Mapping[str, xr.DataArray],
    settings: FieldSettings,
    *,
    precip: bool,
    seed: int,
) -> FieldScores:
    """Score one field.

    Args:
        ensemble: (member, y, x) members, in memory.
        truth: (y, x) truth on the same grid.
        regions: name -> (y, x) boolean mask (``"all"`` is all True).
        precip: also twCRPS and FSS at ``settings.precip_thresholds``.
        seed: seed of the rank histogram's random tie-breaking.
    """
    m = ensemble.sizes[MEMBER_DIM]
    skill, pair_sum = crps_parts_xr(ensemble, truth)
    valid = skill.notnull()
    ensmean = ensemble.mean(MEMBER_DIM, skipna=False)
    # Point-wise fields, each by its metric's definition; the CRPS composites are linear
    # in the means of skill and D (crps_from_mean_parts).
    metrics = {
        "crps_skill": (CRPSSkill(), skill),
        "pair_sum": (CRPSSkill(), pair_sum),
        "ensmean_mse": (EnsembleMeanMSE(), EnsembleMeanMSE().pointwise(ensemble, truth)),
        "ensmean_mae": (MAE(), MAE().pointwise(ensmean, truth)),
        "ensmean_bias": (Bias(), Bias().pointwise(ensmean, truth)),
        "ens_variance": (EnsembleVariance(), EnsembleVariance().pointwise(ensemble, truth)),
    }
    thresholds = list(settings.precip_thresholds) if precip else []
    for t in thresholds:
        tw = ThresholdWeightedCRPS(threshold=t)
        metrics[f"twcrps_{t}"] = (tw, tw.pointwise(ensemble, truth))
    ranks = RankHistogram(seed=seed).pointwise(ensemble, truth)

    r = len(regions)
    per_time = {k: np.full(r, np.nan) for k in PER_TIME}
    out = FieldScores(
        per_time=per_time,
        n_valid=np.zeros(r, np.int64),
        member_mse=np.full((r, m), np.nan),
        rank_counts=np.zeros((r, m + 1)),
        quantile_error=np.full((r, len(settings.quantiles)), np.nan),
        twcrps=np.full((r, len(thresholds)), np.nan),
        fss=np.full((r, len(thresholds), len(settings.fss_windows)), np.nan),
        ensmean=np.asarray(ensmean.values),
    )
    for ir, region in enumerate(regions.values()):
        ok = valid & region
        out.n_valid[ir] = int(ok.sum())
        if not out.n_valid[ir]:
            continue
        kw = dict(mask=ok, area_weighted=settings.area_weighted)
        means = {
            k: float(metric.reduce(field, truth, **kw)) for k, (metric, field) in metrics.items()
        }
        for k, val in crps_from_mean_parts(means["crps_skill"], means["pair_sum"], m).items():
            per_time[k][ir] = val
        for k in ("ensmean_mse", "ensmean_mae", "ensmean_bias", "ens_variance"):
            per_time[k][ir] = means[k]
        out.twcrps[ir] = [means[f"twcrps_{t}"] for t in thresholds]
        if settings.ssim:
            per_time["ssim_ensmean"][ir] = float(SSIM().compute(ensmean, truth, mask=ok))
        for j in range(m):  # member by member: an (M, H, W) float64 temporary is GBs on km grids
            member = ensemble.isel({MEMBER_DIM: j})
            out.member_mse[ir, j] = float(MSE().reduce(MSE().pointwise(member, truth), truth, **kw))
        out.rank_counts[ir] = RankHistogram.counts(ranks, m, truth, mask=ok).values
        if len(settings.quantiles):
            qe = QuantileError(quantiles=settings.quantiles).compute(ensemble, truth, mask=ok)
            out.quantile_error[ir] = qe.values
        if thresholds:
            fss = FSS(thresholds=thresholds, windows=settings.fss_windows).compute(
                ensemble, truth, mask=ok
            )
            out.fss[ir] = fss.values
    return out
