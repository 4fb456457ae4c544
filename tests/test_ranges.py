"""Physically impossible values refused (kmscale.data.ranges), by readers and `kmscale sample`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kmscale.data import ranges
from kmscale.data.readers import open_dataset, schema_problems
from kmscale.errors import RangeError, UnitsError

sys.path.insert(0, str(Path(__file__).parent))


def _field(values, name="t2m", units="K") -> xr.DataArray:
    values = np.asarray(values, dtype="float32")
    t, y, x = values.shape
    return xr.DataArray(
        values,
        dims=("time", "lat", "lon"),
        name=name,
        attrs={"units": units},
        coords={
            "time": pd.date_range("2020-01-01", periods=t, freq="h"),
            "lat": np.linspace(50.0, 51.0, y),
            "lon": np.linspace(0.0, 2.0, x),
        },
    )


@pytest.mark.parametrize(
    ("name", "ok", "bad"),
    [
        ("t2m", (150.0, 350.0), (149.9, 350.5)),
        ("u10", (-150.0, 150.0), (-151.0, 150.5)),
        ("tp", (0.0, 500.0), (-0.01, 500.5)),
        ("msl", (85000.0, 110000.0), (84000.0, 2e5)),
    ],
)
def test_catalogue_limits(name, ok, bad):
    for value in ok:
        ranges.check(_field(np.full((1, 2, 2), value), name), name)
    for value in bad:
        with pytest.raises(RangeError, match=rf"'{name}': expected values in .* found {value:g}"):
            ranges.check(_field(np.full((1, 2, 2), value), name), name)


def test_error_names_value_and_location_in_a_chunked_array():
    values = np.full((6, 4, 5), 280.0, "float32")
    values[4, 2, 3] = 9.5  # degC in a K field, in the third time chunk
    da = _field(values).chunk({"time": 2, "lat": 2, "lon": 2})
    guarded = ranges.guard(da, "t2m", where="f.nc")  # lazy: nothing read yet
    guarded.isel(time=slice(0, 4)).load()  # the clean chunks pass
    with pytest.raises(
        RangeError,
        match=r"f.nc: variable 't2m': expected values in 150..350 K, "
        r"found 9.5 at time=4 \(2020-01-01T04:00\), lat=2 \(50.6+7\), lon=3 \(1.5\)"
        r" \(this looks like degC",
    ):
        guarded.load()
    assert issubclass(RangeError, UnitsError)


def test_nan_passes_inf_does_not():
    values = np.full((2, 2, 2), 280.0, "float32")
    values[0, 0, 0] = np.nan
    ranges.check(_field(values), "t2m")
    values[1, 1, 1] = np.inf
    with pytest.raises(RangeError, match="found inf at time=1"):
        ranges.check(_field(values), "t2m")


def test_readers_check_lazily_and_can_be_told_not_to(tmp_path):
    values = np.full((3, 2, 2), 280.0, "float32")
    values[0, 1, 0] = 5.0
    path = tmp_path / "celsius_as_k.nc"
    _field(values).to_dataset().to_netcdf(path)
    with pytest.raises(RangeError, match=r"celsius_as_k.nc.*'t2m'.*found 5 at time=0 .*lat=1"):
        open_dataset(path).t2m.load()  # (one chunk: already the opening probe reads it)
    raw = open_dataset(path, check_range=False)
    assert float(raw.t2m.min()) == 5.0 and schema_problems(raw, check_range=False) == []
    problems = schema_problems(raw)
    assert len(problems) == 1 and isinstance(problems[0], RangeError)
    converted = open_dataset(path, units={"t2m": "degC"}, check_range=False)
    assert float(converted.t2m.min()) == pytest.approx(278.15)


def test_kmscale_sample_refuses_impossible_predictors(tmp_path, capsys):
    from test_bundle import make_bundle

    from kmscale.cli import main

    bundle, coarse = make_bundle()
    bundle.save(tmp_path / "bundle")
    bad = coarse.isel(time=slice(0, 1)).copy(deep=True)
    bad["t2m"] = bad["t2m"] - 273.15  # degrees Celsius, still labelled K
    bad.to_netcdf(tmp_path / "pred.nc", engine="netcdf4")
    args = [
        "sample",
        "--bundle",
        str(tmp_path / "bundle"),
        "--predictors",
        str(tmp_path / "pred.nc"),
        "--members",
        "2",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "ens.zarr"),
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "'t2m': expected values in 150..350 K" in err and "at time=0" in err
    assert not (tmp_path / "ens.zarr").exists()
