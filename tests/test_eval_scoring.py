"""`kmscale score` / `kmscale report` end to end on tiny stores, and the scoring numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kmscale.cli import main
from kmscale.data.store import StoreWriter
from kmscale.errors import AlignmentError, GridError, SchemaError, UnitsError
from kmscale.evaluation.deterministic import ssim_field
from kmscale.evaluation.probabilistic import CRPS, RankHistogram, SpreadSkillRatio
from kmscale.evaluation.scoring import ScoreOptions, netcdf_engine, score

T, M, H, W = 6, 4, 24, 32


def datasets(rng, members=M, shift=0.0):
    times = pd.date_range("2019-03-21", periods=T, freq="h")
    lat, lon = np.linspace(50, 58, H), np.linspace(-10, 2, W)
    mu = rng.standard_normal((T, 1, H, W)) + 280
    truth = xr.Dataset(
        {
            "t2m": (
                ("time", "lat", "lon"),
                mu[:, 0] + rng.standard_normal((T, H, W)),
                {"units": "K"},
            ),
            "tp": (("time", "lat", "lon"), rng.gamma(0.3, 2, (T, H, W)), {"units": "mm h-1"}),
            "land_sea_mask": (
                ("lat", "lon"),
                (rng.random((H, W)) > 0.5).astype("float32"),
                {"units": "1"},
            ),
        },
        coords={"time": times, "lat": lat, "lon": lon},
    )
    lead = ("time", np.array([6, 6, 12, 12, 24, 24]))
    fc = xr.Dataset(
        {
            "t2m": (
                ("time", "member", "lat", "lon"),
                mu + shift + rng.standard_normal((T, members, H, W)),
                {"units": "K"},
            ),
            "tp": (
                ("time", "member", "lat", "lon"),
                rng.gamma(0.3, 2, (T, members, H, W)),
                {"units": "mm/h"},
            ),
        },
        coords={"time": times, "lat": lat, "lon": lon, "lead_time": lead},
    )
    return fc, truth


def write_store(ds, path, kind):
    w = StoreWriter(path, ds, kind=kind, fingerprint="test", chunk=2)
    for i in w.pending():
        w.write(i, ds.isel(time=w.chunk_slice(i)))
    w.finalize()
    return path


def test_per_time_numbers_match_the_metric_classes(rng):
    fc, truth = datasets(rng)
    ds = score(
        {"a": fc}, truth, ScoreOptions(masks=["land_sea_mask"], time_chunk=4), progress=False
    )
    f, t = fc["t2m"], truth["t2m"]
    np.testing.assert_allclose(
        ds["crps_fair"].sel(forecast="a", variable="t2m", region="all"), CRPS().compute(f, t)
    )
    np.testing.assert_allclose(
        ds["crps_standard"].sel(forecast="a", variable="t2m", region="all"),
        CRPS(fair=False).compute(f, t),
    )
    mask = truth["land_sea_mask"] > 0.5
    np.testing.assert_allclose(
        ds["crps_fair"].sel(forecast="a", variable="t2m", region="land_sea_mask"),
        CRPS().compute(f, t, mask=mask),
    )
    hist = RankHistogram().compute(f, t, reduce_dims=("lat", "lon"))
    assert ds["rank_histogram"].sel(forecast="a", variable="t2m", region="all").sum() == hist.sum()
    # spread-skill over all times = the ratio of time-mean parts (equal-area weights per time)
    ssr = SpreadSkillRatio().compute(f, t, reduce_dims=("time", "lat", "lon"))
    got = (
        ds["summary_spread_skill_ratio"]
        .sel(forecast="a", variable="t2m", region="all")
        .isel(lead_time_group=0)
    )
    assert float(got) == pytest.approx(float(ssr), rel=1e-6)
    assert float(got) == pytest.approx(1.0, abs=0.15)
    assert ds["ssim_ensmean"].sel(forecast="a", variable="t2m", region="all")[2] == pytest.approx(
        ssim_field(f[2].mean("member").values, t[2].values)
    )
    # lead-time groups: NaN (all times) then 6, 12, 24 h
    np.testing.assert_array_equal(ds["lead_time_group"].values[1:], [6, 12, 24])
    crps_6h = ds["summary_crps_fair"].sel(
        forecast="a", variable="t2m", region="all", lead_time_group=6.0
    )
    assert float(crps_6h) == pytest.approx(float(CRPS().compute(f, t)[:2].mean()))
    # precipitation-only scores exist for tp and are NaN for t2m
    assert (
        np.isfinite(ds["fss"].sel(variable="tp")).any()
        and np.isnan(ds["fss"].sel(variable="t2m")).all()
    )
    assert ds["spectrum_truth"].sizes["wavenumber"] == W // 2
    assert ds["map_truth"].shape == (2, H, W)


def test_nan_truth_region_is_nan_not_zero(rng):
    fc, truth = datasets(rng)
    truth["t2m"][1] = np.nan
    ds = score({"a": fc}, truth, ScoreOptions(ssim=False, quantiles=()), progress=False)
    c = ds["crps_fair"].sel(forecast="a", variable="t2m", region="all")
    assert np.isnan(c[1]) and np.isfinite(c[[0, 2, 3, 4, 5]]).all()
    assert int(ds["n_valid"].sel(forecast="a", variable="t2m", region="all")[1]) == 0


def test_bad_inputs(rng):
    fc, truth = datasets(rng)
    with pytest.raises(SchemaError, match="member"):
        score({"a": fc.isel(member=0)}, truth, progress=False)
    with pytest.raises(AlignmentError, match="missing"):
        score({"a": fc}, truth.isel(time=slice(0, 3)), progress=False)
    with pytest.raises(GridError):
        score({"a": fc}, truth.assign_coords(lat=truth.lat + 1), progress=False)
    bad = truth.copy()
    bad["t2m"].attrs = {}
    with pytest.raises(UnitsError, match="units"):
        score({"a": fc}, bad, progress=False)
    fc2 = fc.copy()
    fc2["t2m"].attrs = {"units": "degC"}
    with pytest.raises(UnitsError, match="expected units 'K'"):
        score({"a": fc2}, truth, progress=False)
    with pytest.raises(SchemaError, match="mask 'nope'"):
        score({"a": fc}, truth, ScoreOptions(masks=["nope"]), progress=False)
    with pytest.raises(SchemaError, match="expected variable 'q'"):
        score({"a": fc}, truth, ScoreOptions(variables=["q"]), progress=False)


def test_cli_score_and_report(tmp_path, rng, capsys):
    fc, truth = datasets(rng)
    fc2, _ = datasets(rng, members=3, shift=0.5)
    write_store(fc, tmp_path / "ens.zarr", "ensemble")
    write_store(fc2.assign_coords(time=fc.time), tmp_path / "ens2.zarr", "ensemble")
    write_store(truth, tmp_path / "truth.zarr", "targets")
    out = tmp_path / "metrics.nc"
    rc = main(["score", "--forecast", str(tmp_path / "ens.zarr"),
               "--forecast", f"biased={tmp_path / 'ens2.zarr'}",
               "--truth", str(tmp_path / "truth.zarr"),
               "--out", str(out), "--mask", "land_sea_mask", "--no-progress"])  # fmt: skip
    assert rc == 0 and out.exists()
    assert "fair CRPS" in capsys.readouterr().out
    ds = xr.open_dataset(out, engine=netcdf_engine())
    assert list(ds["forecast"].values) == ["ens", "biased"]
    assert ds.attrs["Conventions"].startswith("CF")
    assert list(ds["ensemble_size"].values) == [4, 3]
    # the biased method is worse
    c = ds["summary_crps_fair"].sel(variable="t2m", region="all").isel(lead_time_group=0)
    assert float(c.sel(forecast="biased")) > float(c.sel(forecast="ens"))
    # refuses to overwrite, refuses a store of the wrong kind
    assert (
        main(
            [
                "score",
                "--forecast",
                str(tmp_path / "ens.zarr"),
                "--truth",
                str(tmp_path / "truth.zarr"),
                "--out",
                str(out),
            ]
        )
        == 1
    )
    assert "--overwrite" in capsys.readouterr().err
    assert main(["score", "--forecast", str(tmp_path / "truth.zarr"),
                 "--truth", str(tmp_path / "truth.zarr"),
                 "--out", str(tmp_path / "m2.nc")]) == 1  # fmt: skip
    assert "expected a 'ensemble' store" in capsys.readouterr().err

    for fmt, page in (("html", "index.html"), ("md", "report.md")):
        rep = tmp_path / f"report_{fmt}"
        assert main(["report", "--metrics", str(out), "--out", str(rep), "--format", fmt]) == 0
        text = (rep / page).read_text()
        assert "CRPS fair" in text and "biased" in text
        pngs = sorted(p.name for p in (rep / "figures").glob("*.png"))
        assert {
            "t2m_maps.png",
            "t2m_spectra.png",
            "t2m_rank.png",
            "t2m_box.png",
            "tp_density.png",
        } <= set(pngs)


def test_plain_netcdf_inputs_and_merged_reports(tmp_path, rng):
    fc, truth = datasets(rng)
    fc.to_netcdf(tmp_path / "f.nc", engine=netcdf_engine())
    truth.to_netcdf(tmp_path / "t.nc", engine=netcdf_engine())
    assert main(["score", "--forecast", f"x={tmp_path / 'f.nc'}", "--truth", str(tmp_path / "t.nc"),
                 "--out", str(tmp_path / "a.nc"),
                 "--variables", "t2m", "--no-progress"]) == 0  # fmt: skip
    assert main(["score", "--forecast", f"y={tmp_path / 'f.nc'}", "--truth", str(tmp_path / "t.nc"),
                 "--out", str(tmp_path / "b.nc"), "--variables", "t2m", "--no-progress",
                 "--no-ssim"]) == 0  # fmt: skip
    rep = tmp_path / "rep"
    assert (
        main(
            [
                "report",
                "--metrics",
                str(tmp_path / "a.nc"),
                "--metrics",
                str(tmp_path / "b.nc"),
                "--out",
                str(rep),
            ]
        )
        == 0
    )
    assert "<td>y</td>" in (rep / "index.html").read_text()
    assert (
        main(
            [
                "report",
                "--metrics",
                str(tmp_path / "a.nc"),
                "--metrics",
                str(tmp_path / "a.nc"),
                "--out",
                str(rep),
            ]
        )
        == 1
    )
