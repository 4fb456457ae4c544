"""Whether a demo run shows skill: the checks ``kmscale demo`` reports per variable.

On the validation hours, for every variable:

- the ensemble's fair CRPS is below the regression's MAE, which is below the MAE of the
  bilinear interpolation of the coarse predictors (a model that does not beat
  interpolating the forecast it is given has no skill to show);
- the spread-skill ratio (sqrt((M+1)/M) corrected, Fortin et al. 2014) lies within
  ``spread_skill`` (calibration);
- for precipitation, the ensemble's wet fraction (> ``wet_threshold``) and its 99th
  percentile, over every member, time and pixel, are within ``wet_fraction_tolerance``
  and ``q99_tolerance`` of the truth's (rain that exists, with a tail).

Every figure goes through the evaluation package's metric classes; a failed check is
reported with its value and limit, never raised: the run's outputs stay usable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from kmscale.evaluation.deterministic import MAE
from kmscale.evaluation.probabilistic import CRPS, SpreadSkillRatio

PRECIP_VARIABLES = ("tp",)
REDUCE = ("time", "lat", "lon")


@dataclass
class DemoCriteria:
    """Limits of the demo checks (one place)."""

    spread_skill: tuple[float, float] = (0.7, 1.3)
    wet_threshold: float = 0.1  # mm h-1
    wet_fraction_tolerance: float = 0.2  # |ensemble / truth - 1|
    quantile: float = 0.99
    q99_tolerance: float = 0.25  # |ensemble / truth - 1|


def _check(name: str, value: float, limit: float | tuple[float, float], passed: bool) -> dict:
    return {
        "check": name,
        "value": round(float(value), 4),
        "limit": [round(float(x), 4) for x in limit]
        if isinstance(limit, tuple)
        else round(float(limit), 4),
        "passed": bool(passed),
    }


def variable_checks(
    ensemble: xr.DataArray,
    regression: xr.DataArray,
    bilinear: xr.DataArray,
    truth: xr.DataArray,
    name: str,
    criteria: DemoCriteria,
) -> dict:
    """Figures and checks of one variable.

    Args:
        ensemble: (time, member, lat, lon) members.
        regression: (time, lat, lon) deterministic regression mean, decoded.
        bilinear: (time, lat, lon) bilinear interpolation of the coarse predictor.
        truth: (time, lat, lon).
    Returns:
        {"values": {crps_fair, regression_mae, bilinear_mae, spread_skill[, wet_fraction_ratio,
        q99_ratio]}, "checks": [{check, value, limit, passed}, ...]}.
    """
    values = {
        "crps_fair": float(CRPS().compute(ensemble, truth, reduce_dims=REDUCE)),
        "regression_mae": float(MAE().compute(regression, truth, reduce_dims=REDUCE)),
        "bilinear_mae": float(MAE().compute(bilinear, truth, reduce_dims=REDUCE)),
        "spread_skill": float(SpreadSkillRatio().compute(ensemble, truth, reduce_dims=REDUCE)),
    }
    lo, hi = criteria.spread_skill
    checks = [
        _check(
            "crps_fair < regression_mae",
            values["crps_fair"],
            values["regression_mae"],
            values["crps_fair"] < values["regression_mae"],
        ),
        _check(
            "regression_mae < bilinear_mae",
            values["regression_mae"],
            values["bilinear_mae"],
            values["regression_mae"] < values["bilinear_mae"],
        ),
        _check(
            "spread_skill in range",
            values["spread_skill"],
            (lo, hi),
            lo <= values["spread_skill"] <= hi,
        ),
    ]
    if name in PRECIP_VARIABLES:
        ens = np.asarray(ensemble.values, np.float64)
        obs = np.asarray(truth.values, np.float64)
        ens, obs = ens[np.isfinite(ens)], obs[np.isfinite(obs)]
        wet_obs = float(np.mean(obs > criteria.wet_threshold))
        q_obs = float(np.quantile(obs, criteria.quantile))
        values["wet_fraction_ratio"] = (
            float(np.mean(ens > criteria.wet_threshold)) / wet_obs if wet_obs else np.nan
        )
        values["q99_ratio"] = (
            float(np.quantile(ens, criteria.quantile)) / q_obs if q_obs else np.nan
        )
        for key, tol in (
            ("wet_fraction_ratio", criteria.wet_fraction_tolerance),
            ("q99_ratio", criteria.q99_tolerance),
        ):
            limit = (1.0 - tol, 1.0 + tol)
            checks.append(
                _check(f"{key} in range", values[key], limit, limit[0] <= values[key] <= limit[1])
            )
    return {"values": {k: round(v, 4) for k, v in values.items()}, "checks": checks}


def demo_checks(
    ensemble: xr.Dataset,
    regression: xr.Dataset,
    bilinear: xr.Dataset,
    truth: xr.Dataset,
    variables: Sequence[str],
    criteria: DemoCriteria | None = None,
) -> dict:
    """The checks of every variable: ``{variable: variable_checks(...), "all_passed": bool,
    "failed": ["<variable>: <check> (value ..., limit ...)", ...]}``.

    ``regression`` and ``bilinear`` may carry a member dim of size 1 (one-member ensembles).
    """
    criteria = criteria or DemoCriteria()
    out: dict = {}
    failed = []
    for name in variables:
        reg, bil = (
            ds[name].isel(member=0, drop=True) if "member" in ds[name].dims else ds[name]
            for ds in (regression, bilinear)
        )
        res = variable_checks(ensemble[name], reg, bil, truth[name], name, criteria)
        out[name] = res
        failed += [
            f"{name}: {c['check']} (value {c['value']:g}, limit {c['limit']})"
            for c in res["checks"]
            if not c["passed"]
        ]
    out["all_passed"] = not failed
    out["failed"] = failed
    return out


def format_checks(result: dict) -> str:
    """A short plain-text table of :func:`demo_checks` (one line per check)."""
    lines = [f"{'variable':<9}{'check':<32}{'value':>10}  {'limit':<18}result"]
    for name, res in result.items():
        if not isinstance(res, dict):
            continue
        for c in res["checks"]:
            limit = c["limit"]
            text = f"{limit[0]:g}..{limit[1]:g}" if isinstance(limit, list) else f"{limit:g}"
            lines.append(
                f"{name:<9}{c['check']:<32}{c['value']:>10.4g}  {text:<18}"
                f"{'pass' if c['passed'] else 'FAIL'}"
            )
    verdict = (
        "all demo checks passed"
        if result.get("all_passed")
        else (
            f"{len(result.get('failed', []))} demo check(s) failed: "
            + "; ".join(result.get("failed", []))
        )
    )
    return "\n".join(lines + [verdict])
