"""Interpolation baselines: the coarse predictors on the target grid, scored as forecasts.

A downscaling model is worth its cost only where it beats simply interpolating the
coarse forecast it was given. ``baseline_forecasts(predictors, truth, ["bilinear",
"bicubic"], variables, times)`` regrids each target variable found in the predictors
onto the truth's grid with :func:`kmscale.data.grids.regrid` (the same interpolation
code as ``kmscale prepare``) and returns one single-member ensemble per method, ready
for :func:`kmscale.evaluation.scoring.score` (with one member the fair CRPS is the MAE).

Baselines are marked by the attribute ``kmscale_forecast_kind = "baseline"``; ``score``
copies it to the ``forecast_kind`` coordinate, which the report uses to rank models
against the best baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from kmscale.data.variables import CATALOGUE
from kmscale.errors import AlignmentError, SchemaError, UnitsError
from kmscale.evaluation.base import MEMBER_DIM

if TYPE_CHECKING:  # grids (scipy) is imported where it is used
    from kmscale.data.grids import Grid

BASELINES = ("bilinear", "bicubic")
KIND_ATTR = "kmscale_forecast_kind"


def parse_baselines(text: str | None) -> list[str] | None:
    """``"bilinear,bicubic"`` -> list; ``"none"`` -> []; None (not given) -> None."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return []
    bad = [n for n in names if n not in BASELINES]
    if bad or not names:
        raise SchemaError(
            f"--baseline: expected 'none' or a comma-separated subset of {BASELINES}, "
            f"found {text!r}"
        )
    return names


def baseline_forecasts(
    predictors: xr.Dataset,
    truth: xr.Dataset,
    methods: Sequence[str],
    variables: Sequence[str],
    times: np.ndarray,
    *,
    strict: bool = True,
) -> dict[str, xr.Dataset]:
    """Interpolated predictors as one-member ensembles on the truth's grid.

    Args:
        predictors: coarse fields (time, lat, lon) in physical units, named as the truth.
        truth: the truth dataset (its grid and units are the target).
        methods: subset of :data:`BASELINES` (``grids.regrid`` methods).
        variables: target variables to provide.
        times: valid times to provide (those of the scored forecasts).
        strict: a variable absent from the predictors is an error; otherwise the
            baseline holds NaN for it (scored as NaN with ``n_valid`` 0: "not available").

    Returns:
        ``{method: Dataset}``, each variable (time, member=1, <truth grid dims>), units
        of the truth, attribute ``kmscale_forecast_kind = "baseline"``. Empty when no
        variable is available (``strict=False``) or no method is asked for.

    Raises:
        SchemaError: unknown method; with ``strict``, a variable missing from the predictors.
        UnitsError: a predictor in other units than the truth.
        AlignmentError: predictor times missing.
    """
    from kmscale.data.grids import grid_of

    have, missing = _available(predictors, truth, methods, variables, times, strict)
    if not have or not methods:
        return {}
    coarse = predictors[have].sel(time=times)
    coarse = coarse.drop_vars([c for c in coarse.coords if c not in coarse.dims and c != "time"])
    target = grid_of(truth)
    return {m: _interpolated(coarse, target, m, truth, missing, times) for m in methods}


def _available(
    predictors: xr.Dataset,
    truth: xr.Dataset,
    methods: Sequence[str],
    variables: Sequence[str],
    times: np.ndarray,
    strict: bool,
) -> tuple[list[str], list[str]]:
    """The ``variables`` the predictors hold and those they lack, after the checks of
    :func:`baseline_forecasts` (methods, missing variables, units, times)."""
    from kmscale.data.variables import normalize_units

    bad = [m for m in methods if m not in BASELINES]
    if bad:
        raise SchemaError(f"baselines: expected methods in {BASELINES}, found {bad}")
    have = [v for v in variables if v in predictors.data_vars]
    missing = [v for v in variables if v not in predictors.data_vars]
    if missing and strict:
        raise SchemaError(
            f"baseline {', '.join(methods)}: expected the predictors to hold the target "
            f"variable(s) {missing}, found predictors {list(predictors.data_vars)} (drop "
            f"--baseline, or score only --variables {have})"
        )
    if not have or not methods:
        return have, missing
    for v in have:
        pu, tu = predictors[v].attrs.get("units"), truth[v].attrs.get("units")
        if (normalize_units(pu) or pu) != (normalize_units(tu) or tu):
            raise UnitsError(
                f"baseline: predictor {v!r} expected units {tu!r} (the truth's), found {pu!r}"
            )
    absent = np.setdiff1d(times, predictors["time"].values)
    if absent.size:
        raise AlignmentError(
            f"baseline: expected the predictors at every forecast time, found {absent.size} "
            f"missing (first {absent[0]})"
        )
    return have, missing


def _interpolated(
    coarse: xr.Dataset,
    target: Grid,
    method: str,
    truth: xr.Dataset,
    missing: Sequence[str],
    times: np.ndarray,
) -> xr.Dataset:
    """One baseline: ``coarse`` regridded onto ``target`` by ``method`` as a one-member
    ensemble, plus lazy NaN fields for the ``missing`` variables."""
    from kmscale.data.grids import regrid

    have = list(coarse.data_vars)
    ds = regrid(coarse, target, method, where=f"baseline {method}")
    for v in have:  # bicubic overshoots below 0 near dry cells: tp >= 0 holds here too
        if v in CATALOGUE and CATALOGUE[v].valid_range[0] == 0:
            ds[v] = ds[v].clip(min=0)
    ds = ds.expand_dims({MEMBER_DIM: 1}, axis=1)
    for v in have:
        ds[v].attrs = {
            "units": truth[v].attrs["units"],
            "long_name": f"{method} interpolation of the predictor {v}",
        }
    for v in missing:  # lazy NaN field: scored as "not available"
        like = truth[v].sel(time=times)
        like = like.drop_vars([c for c in like.coords if c not in like.dims])
        nan = xr.full_like(like, np.nan, dtype=np.float32).expand_dims({MEMBER_DIM: 1}, axis=1)
        ds[v] = nan.assign_attrs(
            units=truth[v].attrs["units"], long_name=f"{v} not in the predictors"
        )
    ds.attrs = {
        KIND_ATTR: "baseline",
        "title": f"{method} interpolation of the coarse predictors",
    }
    return ds
