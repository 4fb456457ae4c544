"""``kmscale prepare`` / ``inspect``: stores, statistics, resume after interruption, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kmscale.cli import main
from kmscale.data.prepare import PrepareOptions, load_stats, prepare
from kmscale.data.stats import NormStats
from kmscale.data.store import StoreWriter, open_store, partial_path
from kmscale.errors import AlignmentError, StoreError
from kmscale_testdata import ERA5_UK_SPLITS


def _inputs(tmp_path, rng, nt=48):
    """Targets in two daily files (degC, descending lat), 6/12 h forecasts, finer orography."""
    lat = np.linspace(51.0, 50.0, 8)  # descending, as in ERA5 files
    lon = np.linspace(0.0, 1.75, 8)
    times = pd.date_range("2020-01-01", periods=nt, freq="h")
    t2 = 5 + rng.normal(size=(nt, 8, 8)).astype("float32")
    for day in range(nt // 24):
        sl = slice(24 * day, 24 * (day + 1))
        xr.Dataset(
            {"T2": (("time", "latitude", "longitude"), t2[sl], {"units": "degC"})},
            coords={"time": times[sl], "latitude": lat, "longitude": lon},
        ).to_netcdf(tmp_path / f"targets_{day}.nc")
    plat, plon = np.array([50.0, 51.0]), np.array([0.0, 1.0, 2.0])
    fc = []
    for lead in (6, 12):
        fc.append(
            xr.Dataset(
                {
                    "t2m": (
                        ("valid_time", "lat", "lon"),
                        278 + rng.normal(size=(nt, 2, 3)).astype("float32"),
                        {"units": "K"},
                    )
                },
                coords={
                    "valid_time": times,
                    "lat": plat,
                    "lon": plon,
                    "lead_time": ("valid_time", np.full(nt, float(lead))),
                },
            )
        )
    pred = xr.concat(fc, "valid_time")
    pred.to_netcdf(tmp_path / "forecasts.nc")
    slat, slon = np.linspace(49.9, 51.1, 49), np.linspace(-0.2, 2.0, 89)
    xr.Dataset(
        {"HSURF": (("lat", "lon"), (100 * rng.random((49, 89))).astype("float32"), {"units": "m"})},
        coords={"lat": slat, "lon": slon},
    ).to_netcdf(tmp_path / "oro.nc")
    return (
        str(tmp_path / "targets_*.nc"),
        str(tmp_path / "forecasts.nc"),
        str(tmp_path / "oro.nc"),
        t2,
    )


def _opts(**kw):
    base = dict(train_period=("2020-01-01", "2020-01-01"), chunk_time=6, lead_time=12.0)
    base.update(kw)
    return PrepareOptions(**base)


def test_prepare_writes_stores_and_stats(tmp_path, rng):
    targets, preds, static, t2 = _inputs(tmp_path, rng)
    out = tmp_path / "out"
    res = prepare(targets, out, predictors=preds, static=static, options=_opts(), progress=False)
    tgt = open_store(res.stores["targets"], kind="targets", fingerprint=res.fingerprint)
    assert tgt.t2m.dims == ("time", "lat", "lon") and tgt.sizes["time"] == 48
    assert tgt.t2m.attrs["units"] == "K" and tgt.t2m.attrs["standard_name"] == "air_temperature"
    np.testing.assert_allclose(tgt.t2m.values, t2[:, ::-1, :] + 273.15, rtol=1e-6)
    assert tgt.t2m.encoding["chunks"][0] == 6
    pred = open_store(res.stores["predictors"], kind="predictors")
    assert (pred.lead_time.values == 12).all() and pred.sizes["time"] == 48
    st = open_store(res.stores["static"], kind="static")
    assert st.orography.shape == (8, 8) and np.isfinite(st.orography.values).all()
    stats = NormStats.load(out / "stats.json")
    assert stats.train_period == ("2020-01-01", "2020-01-01")
    assert stats.variables["t2m"]["mean"] == pytest.approx(
        float((t2[:24].astype("float64") + 273.15).mean()), abs=1e-3
    )
    assert set(load_stats(out / "stats.json", "predictors").variables) == {"t2m"}
    assert "orography" in load_stats(out / "stats.json", "static").variables
    # a second run with the same inputs keeps the complete stores
    again = prepare(targets, out, predictors=preds, static=static, options=_opts(), progress=False)
    assert again.fingerprint == res.fingerprint
    # other options with existing stores: refused unless overwrite
    with pytest.raises(StoreError, match="another; pass --overwrite"):
        prepare(
            targets,
            out,
            predictors=preds,
            static=static,
            options=_opts(chunk_time=12),
            progress=False,
        )
    prepare(
        targets,
        out,
        predictors=preds,
        static=static,
        options=_opts(chunk_time=12, overwrite=True),
        progress=False,
    )
    assert open_store(out / "targets.zarr").t2m.encoding["chunks"][0] == 12


def test_interrupted_prepare_resumes(tmp_path, rng, monkeypatch):
    targets, preds, static, t2 = _inputs(tmp_path, rng)
    out = tmp_path / "out"
    real_write = StoreWriter.write
    calls = {"n": 0}

    def failing_write(self, index, ds):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated interruption")
        return real_write(self, index, ds)

    monkeypatch.setattr(StoreWriter, "write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        prepare(targets, out, predictors=preds, static=static, options=_opts(), progress=False)
    # nothing looks complete: no final store, no stats.json, a resumable .partial
    assert not (out / "targets.zarr").exists() and not (out / "stats.json").exists()
    assert partial_path(out / "targets.zarr").exists()
    with pytest.raises(StoreError, match="interrupted run"):
        open_store(out / "targets.zarr")
    monkeypatch.setattr(StoreWriter, "write", real_write)
    written = []

    def counting_write(self, index, ds):
        written.append((self.kind, index))
        return real_write(self, index, ds)

    monkeypatch.setattr(StoreWriter, "write", counting_write)
    res = prepare(targets, out, predictors=preds, static=static, options=_opts(), progress=False)
    assert [i for k, i in written if k == "targets"] == [3, 4, 5, 6, 7]  # chunks 0-2 were kept
    tgt = open_store(res.stores["targets"], kind="targets")
    np.testing.assert_allclose(tgt.t2m.values, t2[:, ::-1, :] + 273.15, rtol=1e-6)
    assert (out / "stats.json").exists()


def test_prepare_bad_inputs(tmp_path, rng):
    targets, preds, static, _ = _inputs(tmp_path, rng)
    with pytest.raises(AlignmentError, match="lead time 24"):
        prepare(
            targets,
            tmp_path / "o1",
            predictors=preds,
            options=_opts(lead_time=24.0),
            progress=False,
        )
    from kmscale.errors import ConfigError

    with pytest.raises(ConfigError, match="training period"):
        prepare(targets, tmp_path / "o2", options=PrepareOptions(), progress=False)
    with pytest.raises(FileNotFoundError, match="nothing_\\*"):
        prepare(str(tmp_path / "nothing_*.nc"), tmp_path / "o3", options=_opts(), progress=False)


def test_cli_prepare_and_inspect(tmp_path, rng, capsys, monkeypatch):
    import kmscale.cli

    # only this package's subcommands: the others import torch/diffusers (slow, not under test)
    monkeypatch.setattr(kmscale.cli, "COMMAND_MODULES", ("kmscale.data.cli",))
    targets, preds, static, _ = _inputs(tmp_path, rng)
    out = tmp_path / "cli_out"
    code = main(
        [
            "prepare",
            "--targets",
            targets,
            "--predictors",
            preds,
            "--static",
            static,
            "--train-period",
            "2020-01-01..2020-01-01",
            "--out",
            str(out),
            "--chunk-time",
            "12",
            "--lead-time",
            "6",
            "--static-method",
            "bilinear",
            "--no-progress",
        ]
    )
    assert code == 0
    data = json.loads((out / "stats.json").read_text())
    assert data["train_period"] == ["2020-01-01", "2020-01-01"] and "predictors" in data["groups"]
    assert main(["inspect", str(out / "targets.zarr")]) == 0
    assert "schema: ok" in capsys.readouterr().out
    bad = tmp_path / "bad.nc"
    xr.Dataset(
        {"t2m": (("time", "lat", "lon"), np.full((2, 2, 2), 5.0, "float32"), {"units": "K"})},
        coords={
            "time": pd.date_range("2020", periods=2, freq="h"),
            "lat": [0.0, 1.0],
            "lon": [0.0, 1.0],
        },
    ).to_netcdf(bad)
    assert main(["inspect", str(bad)]) == 1
    assert "RangeError" in capsys.readouterr().out
    code = main(
        [
            "prepare",
            "--targets",
            targets,
            "--variables",
            "u10",
            "--train-period",
            "2020-01-01..2020-01-01",
            "--out",
            str(tmp_path / "x"),
            "--no-progress",
        ]
    )
    assert code == 1
    assert "missing ['u10']" in capsys.readouterr().err


def test_prepare_real_era5_uk(real_data, tmp_path):
    src = real_data / "era5_uk_t2m_201903"
    res = prepare(
        str(src / "era5_uk_t2m_20190301-24.nc"),
        tmp_path / "uk",
        predictors=str(src / "era5_uk_t2m_20190301-24.grib"),
        static=str(real_data / "static" / "ukv_orography.nc"),
        options=PrepareOptions(train_period=ERA5_UK_SPLITS["train"], chunk_time=192),
        progress=False,
    )
    tgt = open_store(res.stores["targets"], kind="targets")
    assert tgt.t2m.shape == (576, 33, 49)
    assert res.stats["targets"].variables["t2m"]["count"] == 480 * 33 * 49
    st = open_store(res.stores["static"], kind="static")
    assert float(st.orography.max()) > 300


def test_prepare_nan_targets_need_mask(tmp_path, rng):
    times = pd.date_range("2020-01-01", periods=6, freq="h")
    tp = rng.gamma(0.5, 1.0, size=(6, 4, 5)).astype("float32")
    tp[:, 0, :2] = np.nan  # outside a radar footprint at every hour
    xr.Dataset(
        {"precipitation": (("time", "y", "x"), tp, {"units": "mm h-1"})},
        coords={
            "time": times,
            "y": np.arange(4) * 1000.0,
            "x": np.arange(5) * 1000.0,
            "lat": (("y", "x"), 50 + rng.random((4, 5)).cumsum(0)),
            "lon": (("y", "x"), 5 + rng.random((4, 5)).cumsum(1)),
        },
    ).to_netcdf(tmp_path / "radar.nc")
    from kmscale.errors import MissingValueError

    with pytest.raises(MissingValueError, match="radar.nc.*'tp'.*12 NaNs"):
        prepare(
            str(tmp_path / "radar.nc"),
            tmp_path / "o",
            options=_opts(lead_time=None, chunk_time=3),
            progress=False,
        )
    res = prepare(
        str(tmp_path / "radar.nc"),
        tmp_path / "o",
        options=_opts(lead_time=None, chunk_time=3, mask_nans=True),
        progress=False,
    )
    st = open_store(res.stores["targets"], kind="targets")
    assert st["mask"].dims == ("y", "x") and int((~st["mask"]).sum()) == 2
    np.testing.assert_array_equal(np.isnan(st.tp.values), np.isnan(tp))
    assert res.stats["targets"].variables["tp"]["transform"] == "log1p"
