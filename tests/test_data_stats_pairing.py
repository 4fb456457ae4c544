"""Normalization statistics (fit on train only, JSON round trip) and pairing / splits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kmscale.data.pairing import check_time_axis, pair, parse_period, split_by_time
from kmscale.data.stats import NormStats
from kmscale.errors import AlignmentError, ConfigError, GridError, SchemaError


def _targets(rng, nt=48, ny=4, nx=6, start="2020-01-01"):
    t = pd.date_range(start, periods=nt, freq="h")
    return xr.Dataset(
        {
            "t2m": (
                ("time", "lat", "lon"),
                (280 + rng.normal(size=(nt, ny, nx))).astype("float32"),
                {"units": "K"},
            ),
            "tp": (
                ("time", "lat", "lon"),
                rng.gamma(0.3, 2.0, size=(nt, ny, nx)).astype("float32"),
                {"units": "mm h-1"},
            ),
        },
        coords={"time": t, "lat": np.linspace(50, 51, ny), "lon": np.linspace(0, 2, nx)},
        attrs={"kmscale_source": "synthetic"},
    )


def _forecasts(targets, leads=(6.0, 12.0)):
    parts = []
    for lead in leads:
        p = targets.isel(lat=slice(0, 2), lon=slice(0, 3)).copy()
        parts.append(p.assign_coords(lead_time=("time", np.full(p.sizes["time"], lead))))
    return xr.concat(parts, "time")


# ---- statistics ---------------------------------------------------------------------------
def test_stats_fit_on_train_only_and_round_trip(rng, tmp_path):
    ds = _targets(rng)
    ds["t2m"][24:] += 10.0  # the validation period is warmer: must not leak into the stats
    stats = NormStats.fit(ds, ["t2m", "tp"], ("2020-01-01", "2020-01-01"))
    train = ds.isel(time=slice(0, 24))
    assert stats.variables["t2m"]["mean"] == pytest.approx(
        float(train.t2m.astype("float64").mean()), rel=1e-9
    )
    assert stats.variables["t2m"]["std"] == pytest.approx(
        float(train.t2m.astype("float64").std()), rel=1e-6
    )
    assert stats.stat("tp")["transform"] == "log1p"  # catalogue default for precipitation
    assert stats.variables["tp"]["mean"] == pytest.approx(
        float(np.log1p(train.tp.values.astype("float64")).mean()), rel=1e-6
    )
    path = stats.save(tmp_path / "stats.json")
    back = NormStats.load(path)
    assert back.variables == stats.variables and back.train_period == ("2020-01-01", "2020-01-01")
    x = ds.tp.values[:3]
    np.testing.assert_allclose(
        back.destandardize(back.standardize(x, "tp"), "tp"), x, rtol=1e-4, atol=1e-5
    )
    z = back.standardize(ds.t2m, "t2m")
    assert isinstance(z, xr.DataArray) and abs(float(z.isel(time=slice(0, 24)).mean())) < 1e-5
    import torch

    tz = back.standardize(torch.from_numpy(x), "tp")
    np.testing.assert_allclose(tz.numpy(), back.standardize(x, "tp"), rtol=1e-5)


def test_stats_bad_inputs(rng, tmp_path):
    ds = _targets(rng)
    with pytest.raises(SchemaError, match="missing \\['u10'\\]"):
        NormStats.fit(ds, ["u10"], ("2020-01-01", "2020-01-01"))
    with pytest.raises(AlignmentError, match="training period 2021-01-01..2021-02-01"):
        NormStats.fit(ds, ["t2m"], ("2021-01-01", "2021-02-01"))
    with pytest.raises(ConfigError, match="transform"):
        NormStats.fit(ds, ["t2m"], None, transforms={"t2m": "cube"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SchemaError, match="bad.json.*invalid JSON"):
        NormStats.load(bad)
    bad.write_text(
        json.dumps(
            {
                "kmscale_stats_version": 1,
                "variables": {"t2m": {"mean": 1.0, "std": 0.0, "transform": "none", "scale": 1.0}},
            }
        )
    )
    with pytest.raises(SchemaError, match="std > 0"):
        NormStats.load(bad)
    bad.write_text(json.dumps({"kmscale_stats_version": 1, "variables": {"t2m": {"mean": 1.0}}}))
    with pytest.raises(SchemaError, match="missing \\['std', 'transform', 'scale'\\]"):
        NormStats.load(bad)
    with pytest.raises(SchemaError, match="expected variable 'u10'"):
        NormStats.fit(ds, ["t2m"]).stat("u10")


def test_stats_on_real_era5_uk(real_data):
    from kmscale_testdata import ERA5_UK_SPLITS, era5_uk_t2m

    ds = era5_uk_t2m()
    stats = NormStats.fit(ds, ["t2m"], ERA5_UK_SPLITS["train"])
    assert stats.variables["t2m"]["count"] == 480 * 32 * 48
    assert 275 < stats.variables["t2m"]["mean"] < 285 and 1 < stats.variables["t2m"]["std"] < 6


# ---- pairing -----------------------------------------------------------------------------------
def test_pair_selects_lead_time_and_checks_alignment(rng):
    tgt = _targets(rng)
    fc = _forecasts(tgt)
    with pytest.raises(AlignmentError, match="several lead times \\[6.0, 12.0\\]"):
        pair(tgt, fc)
    paired = pair(tgt, fc, lead_time=12)
    assert paired.predictors.sizes["time"] == 48
    np.testing.assert_array_equal(paired.predictors.time.values, tgt.time.values)
    assert (paired.predictors.lead_time.values == 12).all()
    with pytest.raises(AlignmentError, match="lead time 24 h, found lead times \\[6.0, 12.0\\]"):
        pair(tgt, fc, lead_time=24)
    # predictors shifted by 30 min are misaligned with the targets' valid times
    shifted = fc.assign_coords(time=fc.time.values + np.timedelta64(30, "m"))
    with pytest.raises(AlignmentError, match="missing \\[2020-01-01 00:00:00"):
        pair(tgt, shifted, lead_time=6)
    # a predictor time missing
    with pytest.raises(AlignmentError, match="missing \\[2020-01-01 05:00:00\\] \\(1 in all\\)"):
        pair(tgt, fc.isel(time=[i for i in range(96) if i != 53]), lead_time=12)


def test_pair_gaps_duplicates_and_static_grid(rng):
    tgt = _targets(rng)
    gap = tgt.isel(time=[i for i in range(48) if i not in (10, 11)])
    with pytest.raises(
        AlignmentError, match="without gaps, missing \\[2020-01-01 10:00:00, 2020-01-01 11:00:00\\]"
    ):
        pair(gap)
    assert pair(gap, allow_gaps=True).targets.sizes["time"] == 46
    dup = xr.concat([tgt.isel(time=slice(0, 3)), tgt.isel(time=slice(2, 5))], "time")
    with pytest.raises(AlignmentError, match="duplicates"):
        check_time_axis(dup)
    with pytest.raises(AlignmentError, match="off-step"):
        check_time_axis(
            tgt.isel(time=[0, 1, 2]).assign_coords(
                time=pd.DatetimeIndex(["2020-01-01T00", "2020-01-01T02", "2020-01-01T03"])
            ),
            freq="2h",
        )
    static = xr.Dataset(
        {"orography": (("lat", "lon"), np.zeros((4, 6), "float32"), {"units": "m"})},
        coords={"lat": tgt.lat, "lon": tgt.lon},
    )
    assert pair(tgt, static=static).static is static
    with pytest.raises(GridError, match="expected fields on the target grid"):
        pair(tgt, static=static.assign_coords(lat=static.lat + 0.5))
    with pytest.raises(AlignmentError, match="time-invariant"):
        pair(tgt, static=static.expand_dims(time=tgt.time[:1]))


def test_pair_real_era5_uk(real_data):
    from kmscale_testdata import era5_uk_predictors, era5_uk_static, era5_uk_t2m

    tgt = era5_uk_t2m("val")
    paired = pair(tgt, era5_uk_predictors(tgt), era5_uk_static(tgt), lead_time=0)
    assert paired.predictors.t2m.shape == (96, 8, 12)
    assert set(paired.static.data_vars) == {"orography", "land_sea_mask"}


# ---- splits --------------------------------------------------------------------------------------
def test_split_by_time(rng):
    ds = _targets(rng, nt=24 * 6)
    parts = split_by_time(
        ds,
        train=("2020-01-01", "2020-01-04"),
        val=("2020-01-05", "2020-01-05"),
        test=("2020-01-06", "2020-01-06"),
    )
    assert {k: v.sizes["time"] for k, v in parts.items()} == {"train": 96, "val": 24, "test": 24}
    assert (
        parts["train"].time.values[-1] < parts["val"].time.values[0] < parts["test"].time.values[0]
    )
    with pytest.raises(ConfigError, match="non-overlapping.*train.*val"):
        split_by_time(ds, train=("2020-01-01", "2020-01-04"), val=("2020-01-04", "2020-01-05"))
    with pytest.raises(ConfigError, match="start <= end"):
        split_by_time(ds, train=("2020-01-04", "2020-01-01"))
    with pytest.raises(
        AlignmentError, match="test period 2021-01-01..2021-01-02: expected times, found none"
    ):
        split_by_time(ds, train=("2020-01-01", "2020-01-04"), test=("2021-01-01", "2021-01-02"))
    assert parse_period("2019-03-01..2019-03-20") == ("2019-03-01", "2019-03-20")
    with pytest.raises(ConfigError):
        parse_period("2019-03-01")
