"""HRCLDAS files as users hold them: one GRIB2/NetCDF file per variable and hour."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kmscale.data.hrcldas import HrcldasFile, file_name, is_hrcldas, open_hrcldas, write_hrcldas
from kmscale.data.prepare import PrepareOptions, prepare
from kmscale.data.readers import open_dataset
from kmscale.data.store import open_store
from kmscale.errors import AlignmentError, CorruptFileError, SchemaError

NT, H, W = 4, 6, 8


@pytest.fixture
def canonical(rng) -> xr.Dataset:
    times = pd.date_range("2023-07-01", periods=NT, freq="h")
    lat, lon = 22.0 + 0.01 * np.arange(H), 120.0 + 0.01 * np.arange(W)
    shape = (NT, H, W)
    return xr.Dataset(
        {
            "t2m": (
                ("time", "lat", "lon"),
                (295 + rng.normal(size=shape)).astype("float32"),
                {"units": "K"},
            ),
            "u10": (
                ("time", "lat", "lon"),
                rng.normal(size=shape).astype("float32"),
                {"units": "m s-1"},
            ),
            "tp": (
                ("time", "lat", "lon"),
                rng.gamma(0.3, 2, shape).astype("float32"),
                {"units": "mm h-1"},
            ),
        },
        coords={"time": times, "lat": lat, "lon": lon},
    )


def _path(d, var, valid, prod=None, fmt="GRB2"):
    valid = pd.Timestamp(valid)
    return d / file_name(var, valid, prod or valid + pd.Timedelta(minutes=40), fmt=fmt)


@pytest.mark.parametrize("fmt", ["GRB2", "nc"])
def test_round_trip_through_the_reader_dispatch(tmp_path, canonical, fmt):
    write_hrcldas(canonical, tmp_path / "h", fmt=fmt)
    names = sorted(p.name for p in (tmp_path / "h").iterdir())
    assert len(names) == 3 * NT and all(HrcldasFile.parse(n) is not None for n in names)
    assert _path(tmp_path / "h", "TAIR", canonical.time.values[0], fmt=fmt).name in names
    assert is_hrcldas(tmp_path / "h") and is_hrcldas(str(tmp_path / "h" / "*TAIR*"))
    ds = open_dataset(tmp_path / "h")  # the generic reader dispatches here
    assert list(ds.data_vars) == ["t2m", "u10", "tp"]
    assert ds["t2m"].dims == ("time", "lat", "lon") and ds["t2m"].chunks is not None  # lazy
    assert ds["tp"].attrs["units"] == "mm h-1" and ds["t2m"].attrs["source_name"] == "TAIR"
    np.testing.assert_array_equal(ds["time"].values, canonical["time"].values)
    np.testing.assert_allclose(ds["lat"], canonical["lat"], atol=1e-6)
    for v in canonical.data_vars:
        np.testing.assert_allclose(ds[v].values, canonical[v].values, atol=1e-4)
    only = open_dataset(str(tmp_path / "h" / "*TAIR*"), variables=["t2m"])
    assert list(only.data_vars) == ["t2m"]
    with pytest.raises(SchemaError, match=r"\['v10'\]"):
        open_hrcldas(tmp_path / "h", variables=["v10"])


def test_latest_production_is_used_and_recorded(tmp_path, canonical, caplog):
    d = tmp_path / "h"
    write_hrcldas(canonical, d)
    t1 = canonical.time.values[1]
    rerun = canonical.copy(deep=True)
    rerun["t2m"][:] = 300.0
    write_hrcldas(rerun.isel(time=[1]), tmp_path / "rerun", production_delay_minutes=90)
    for p in (tmp_path / "rerun").glob("*TAIR*"):
        shutil.move(p, d / p.name)
    with caplog.at_level(logging.INFO, logger="kmscale.data.hrcldas"):
        ds = open_hrcldas(d)
    np.testing.assert_allclose(ds["t2m"].sel(time=t1), 300.0, atol=1e-4)
    np.testing.assert_allclose(ds["t2m"].isel(time=0), canonical["t2m"].isel(time=0), atol=1e-4)
    assert (
        "TAIR 2023070101: used 20230701023000, superseded 20230701014000"
        == ds.attrs["hrcldas_superseded"]
    )
    assert "latest used" in caplog.text


def test_missing_hours_and_variables_are_named(tmp_path, canonical):
    d = tmp_path / "h"
    write_hrcldas(canonical, d)
    t2 = canonical.time.values[2]
    _path(d, "UWIN", t2).unlink()
    with pytest.raises(
        AlignmentError, match=r"UWIN files for every valid hour.*1 missing \(2023070102\)"
    ):
        open_hrcldas(d)
    for var in ("TAIR", "PRE"):
        _path(d, var, t2).unlink()
    with pytest.raises(
        AlignmentError, match=r"every 60 minutes.*1 valid hour\(s\) missing.*2023070102"
    ):
        open_hrcldas(d)


def test_truncated_and_misnamed_files_are_named(tmp_path, canonical):
    d = tmp_path / "h"
    write_hrcldas(canonical, d)
    bad = _path(d, "PRE", canonical.time.values[3])
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(CorruptFileError, match=bad.name):
        open_hrcldas(d)
    bad.unlink()
    odd = d / "Z_NAFP_C_BABJ_2023_P_HRCLDAS_RT_CHN_0P01_HOR-TAIR-2023070103.GRB2"
    odd.write_bytes(b"")
    with pytest.raises(SchemaError, match="expected a name"):
        open_hrcldas(d)


def test_prepare_reads_an_hrcldas_directory(tmp_path, canonical):
    write_hrcldas(canonical, tmp_path / "h")
    opts = PrepareOptions(train_period=("2023-07-01T00", "2023-07-01T01"), chunk_time=2)
    res = prepare(str(tmp_path / "h"), tmp_path / "out", options=opts, progress=False)
    tgt = open_store(res.stores["targets"], kind="targets", fingerprint=res.fingerprint)
    assert set(tgt.data_vars) == {"t2m", "u10", "tp"} and tgt.sizes["time"] == NT
    np.testing.assert_allclose(tgt["t2m"].values, canonical["t2m"].values, atol=1e-4)


def test_demo_data_layout_hrcldas_and_score_truth(tmp_path, capsys):
    from kmscale.cli import main

    out = tmp_path / "demo"
    args = ["demo-data", "--out", str(out), "--region", "27,97,32,48", "--times",
            "2023-07-01T00/2023-07-01T02", "--layout", "hrcldas", "--chunk", "32"]  # fmt: skip
    assert main(args) == 0
    assert f"targets: {out / 'hrcldas'}" in capsys.readouterr().out
    assert len(list((out / "hrcldas").glob("*.GRB2"))) == 4 * 3
    assert main(args) == 0  # a rerun keeps the complete files
    store = open_store(out / "targets.zarr", kind="targets").load()
    ds = open_dataset(out / "hrcldas").load()
    for v in store.data_vars:
        np.testing.assert_allclose(ds[v].values, store[v].values, atol=1e-4)
    # the truth of `kmscale score` may be such a directory
    fc = store.expand_dims(member=2, axis=1) + xr.DataArray([-0.1, 0.1], dims="member")
    for v in fc.data_vars:
        fc[v].attrs = dict(store[v].attrs)
    fc.to_netcdf(tmp_path / "fc.nc")
    assert main(["score", "--forecast", f"m={tmp_path / 'fc.nc'}", "--truth", str(out / "hrcldas"),
                 "--out", str(tmp_path / "m.nc"), "--no-progress", "--no-ssim"]) == 0  # fmt: skip
