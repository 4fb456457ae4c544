"""Interpolation baselines scored beside the models, and the report's ranking table."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from kmscale.cli import main
from kmscale.data.grids import grid_of, regrid
from kmscale.errors import SchemaError, UnitsError
from kmscale.evaluation.baselines import baseline_forecasts, parse_baselines
from kmscale.evaluation.report import load_metrics, ranking_rows
from kmscale.evaluation.scoring import ScoreOptions, netcdf_engine, score
from tests.test_eval_scoring import datasets, write_store


def predictors_for(truth: xr.Dataset, rng, variables=("t2m", "tp")) -> xr.Dataset:
    """A coarse (2 deg) grid covering the truth's, values near the truth's."""
    lat, lon = np.arange(49.0, 59.1, 2.0), np.arange(-11.0, 3.1, 2.0)
    coarse = truth[list(variables)].interp(lat=lat, lon=lon, kwargs={"fill_value": None})
    coarse = coarse + 0.1 * rng.standard_normal(coarse["t2m"].shape)
    for v in variables:
        coarse[v].attrs = dict(truth[v].attrs)
    if "tp" in variables:
        coarse["tp"] = coarse["tp"].clip(min=0).assign_attrs(units="mm/h")
    return coarse


def test_baseline_is_the_regridded_predictor_and_its_crps_is_its_mae(rng):
    fc, truth = datasets(rng)
    pred = predictors_for(truth, rng)
    base = baseline_forecasts(
        pred, truth, ["bilinear", "bicubic"], ["t2m", "tp"], fc["time"].values
    )
    assert set(base) == {"bilinear", "bicubic"}
    want = regrid(pred[["t2m"]], grid_of(truth), "bilinear")["t2m"]
    np.testing.assert_allclose(base["bilinear"]["t2m"].isel(member=0), want)
    assert base["bilinear"]["t2m"].dims == ("time", "member", "lat", "lon")
    assert not np.allclose(base["bicubic"]["t2m"], base["bilinear"]["t2m"])
    ds = score({"model": fc, **base}, truth, ScoreOptions(ssim=False, quantiles=()), progress=False)
    assert list(ds["forecast_kind"].values) == ["model", "baseline", "baseline"]
    crps = ds["crps_fair"].sel(forecast="bilinear", region="all")
    np.testing.assert_allclose(
        crps, ds["ensmean_mae"].sel(forecast="bilinear", region="all"), rtol=1e-6
    )


def test_requested_baseline_needs_the_variable_default_fills_nan(rng):
    fc, truth = datasets(rng)
    pred = predictors_for(truth, rng, variables=("t2m",))
    times = fc["time"].values
    with pytest.raises(SchemaError, match=r"hold the target variable\(s\) \['tp'\]"):
        baseline_forecasts(pred, truth, ["bilinear"], ["t2m", "tp"], times)
    base = baseline_forecasts(pred, truth, ["bilinear"], ["t2m", "tp"], times, strict=False)
    ds = score({"model": fc, **base}, truth, ScoreOptions(ssim=False, quantiles=()), progress=False)
    assert np.isnan(ds["summary_crps_fair"].sel(forecast="bilinear", variable="tp")).all()
    assert int(ds["n_valid"].sel(forecast="bilinear", variable="tp").sum()) == 0
    assert np.isfinite(
        ds["summary_crps_fair"].sel(forecast="bilinear", variable="t2m", region="all")
    ).all()
    bad = pred.copy()
    bad["t2m"].attrs["units"] = "degC"
    with pytest.raises(UnitsError, match="expected units 'K'"):
        baseline_forecasts(bad, truth, ["bilinear"], ["t2m"], times)
    with pytest.raises(SchemaError, match="--baseline"):
        parse_baselines("bilinear,spline")
    assert parse_baselines("none") == [] and parse_baselines(None) is None


def test_cli_scores_baselines_and_report_ranks_them(tmp_path, rng, capsys):
    fc, truth = datasets(rng)
    write_store(fc, tmp_path / "ens.zarr", "ensemble")
    truth.to_netcdf(tmp_path / "truth.nc", engine=netcdf_engine())
    predictors_for(truth, rng).to_netcdf(tmp_path / "pred.nc", engine=netcdf_engine())
    out = tmp_path / "m.nc"
    common = ["score", "--forecast", f"ldm={tmp_path / 'ens.zarr'}",
              "--truth", str(tmp_path / "truth.nc"), "--no-progress", "--no-ssim"]  # fmt: skip
    assert main([*common, "--predictors", str(tmp_path / "pred.nc"), "--out", str(out)]) == 0
    ds = xr.open_dataset(out, engine=netcdf_engine())
    assert list(ds["forecast"].values) == ["ldm", "bilinear", "bicubic"]
    assert main([*common, "--baseline", "bilinear", "--out", str(tmp_path / "x.nc")]) == 1
    assert "expected --predictors" in capsys.readouterr().err
    assert main([*common, "--predictors", str(tmp_path / "pred.nc"), "--baseline", "none",
                 "--out", str(tmp_path / "n.nc")]) == 0  # fmt: skip
    assert list(xr.open_dataset(tmp_path / "n.nc", engine=netcdf_engine())["forecast"].values) == [
        "ldm"
    ]

    header, rows = ranking_rows(load_metrics([out]))
    t2m = [r for r in rows if r[0].startswith("t2m")]
    assert [r[1] for r in t2m] == ["1", "2", "3"]
    crps = [float(r[4]) for r in t2m]
    assert crps == sorted(crps)
    best_base = min(float(r[4]) for r in t2m if r[3] == "baseline")
    ldm = next(r for r in t2m if r[2] == "ldm")
    assert float(ldm[6]) == pytest.approx(float(ldm[4]) / best_base, rel=2e-3)
    rep = tmp_path / "rep"
    assert main(["report", "--metrics", str(out), "--out", str(rep)]) == 0
    page = (rep / "index.html").read_text()
    assert page.index("<h2>Ranking") < page.index("<h2>Summary") and "vs best baseline" in page
