"""Readers, variable catalogue and schema checks: real files plus synthetic bad inputs."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kmscale.data import units
from kmscale.data import variables as cat
from kmscale.data.readers import check_grib_messages, open_dataset, schema_problems, validate
from kmscale.errors import (
    AlignmentError,
    CoordinateError,
    CorruptFileError,
    MissingValueError,
    SchemaError,
    UnitsError,
)

ERA5_NC = ("era5_uk_t2m_201903", "era5_uk_t2m_20190301-24.nc")
ERA5_GRIB = ("era5_uk_t2m_201903", "era5_uk_t2m_20190301-24.grib")
RADOLAN = ("radolan_rw_20221018", "radolan_RW_20221018_hourly_1km.nc")


def _write(tmp_path, name, data_vars, coords, attrs=None, engine="netcdf4"):
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs or {})
    path = tmp_path / name
    ds.to_netcdf(path, engine=engine)
    return path


def _field(rng, nt=4, ny=5, nx=6, base=280.0):
    return base + rng.normal(size=(nt, ny, nx)).astype("float32")


def _coords(nt=4, ny=5, nx=6, lat_desc=False):
    lat = np.linspace(50, 51, ny)
    return {
        "time": pd.date_range("2020-01-01", periods=nt, freq="h"),
        "latitude": lat[::-1] if lat_desc else lat,
        "longitude": np.linspace(0, 1.25, nx),
    }


# ---- real files ---------------------------------------------------------------------------
def test_era5_uk_grib_and_netcdf_identical(real_data):
    nc = open_dataset(real_data.joinpath(*ERA5_NC))
    gb = open_dataset(real_data.joinpath(*ERA5_GRIB))
    assert list(nc.data_vars) == list(gb.data_vars) == ["t2m"]
    assert nc.t2m.dims == gb.t2m.dims == ("time", "lat", "lon")
    assert nc.sizes == gb.sizes == {"time": 576, "lat": 33, "lon": 49}
    for c in ("time", "lat", "lon"):
        np.testing.assert_array_equal(nc[c].values, gb[c].values)
    assert np.all(np.diff(nc.lat.values) > 0) and np.all(np.diff(nc.lon.values) > 0)
    np.testing.assert_array_equal(nc.t2m.values, gb.t2m.values)
    assert nc.t2m.attrs["units"] == gb.t2m.attrs["units"] == "K"
    assert nc.t2m.attrs["standard_name"] == "air_temperature"
    validate(nc, ["t2m"])


def test_era5_uk_loader_shape_and_splits(real_data):
    from kmscale_testdata import ERA5_UK_SPLITS, era5_uk_predictors, era5_uk_t2m

    train = era5_uk_t2m("train")
    val = era5_uk_t2m("val")
    assert train.t2m.shape == (480, 32, 48) and val.t2m.shape == (96, 32, 48)
    assert train.time.values[-1] < val.time.values[0]
    assert set(ERA5_UK_SPLITS) == {"train", "val"}
    pred = era5_uk_predictors(val)
    assert pred.t2m.shape == (96, 8, 12)
    np.testing.assert_allclose(
        pred.t2m.values[0, 0, 0], val.t2m.values[0, :4, :4].mean(), rtol=1e-6
    )
    assert "lead_time" in pred.coords


def test_radolan_nan_mask_preserved(real_data):
    from kmscale_testdata import radolan_rw

    raw = xr.open_dataset(real_data.joinpath(*RADOLAN), engine="netcdf4")
    ds = radolan_rw()
    assert ds.tp.shape == (24, 900, 900) and ds.tp.attrs["units"] == "mm h-1"
    got = ds.tp.isel(time=[0, 11, 23]).values
    want = raw.precipitation.isel(time=[0, 11, 23]).values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[~np.isnan(got)], want[~np.isnan(want)])
    frac = float(ds["mask"].mean())
    assert 0.80 < frac < 0.88  # about 16 % of the square lies outside the composite
    sub = ds.isel(time=slice(0, 2))
    validate(sub, ["tp"])  # NaNs allowed outside the mask coordinate
    with pytest.raises(MissingValueError, match="tp.*NaN"):
        validate(sub.drop_vars("mask"), ["tp"])
    assert radolan_rw("train").sizes["time"] == 16 and radolan_rw("val").sizes["time"] == 8


def test_grib_ensemble_levels_split(real_data):
    ds = open_dataset(real_data / "era5_global" / "era5-levels-members.grib")
    assert {"t500", "t850", "z500", "z850"} == set(ds.data_vars)
    assert ds.t850.dims == ("time", "member", "lat", "lon") and ds.sizes["member"] == 10
    assert ds.z500.attrs["units"] == "m2 s-2"


def test_wrf_aliases_and_grib_rate_conversion(real_data):
    wrf = open_dataset(real_data / "fixtures" / "wrf_katrina_10km_mercator.nc")
    assert {"t2m", "u10", "v10", "sp", "orography"} <= set(wrf.data_vars)
    assert wrf.orography.dims == ("y", "x") and wrf.lat.dims == ("y", "x")
    assert wrf.t2m.attrs["source_name"] == "T2"
    ifs = open_dataset(real_data / "era5_global" / "ifs_tprate_20250912T12_0p25.grib2")
    assert ifs.tp.attrs["units"] == "mm h-1"  # kg m-2 s-1 * 3600
    assert 1.0 < float(ifs.tp.max()) < 500.0


def test_truncated_real_files(real_data, tmp_path):
    for parts, keep in ((ERA5_NC, 1_200_000), (ERA5_GRIB, 1_000_000)):
        src = real_data.joinpath(*parts)
        bad = tmp_path / src.name
        bad.write_bytes(src.read_bytes()[:keep])
        with pytest.raises(CorruptFileError, match=src.name):
            open_dataset(bad)
    assert check_grib_messages(real_data.joinpath(*ERA5_GRIB)) == 576


# ---- catalogue -------------------------------------------------------------------------------
def test_catalogue_aliases_and_units():
    for alias in ("T2", "2t", "t2m", "TMP_2maboveground", "tas"):
        assert cat.canonical_name(alias) == "t2m"
    assert cat.canonical_name("HSURF") == "orography"
    assert cat.canonical_name("whatever", {"standard_name": "surface_altitude"}) == "orography"
    assert cat.canonical_name("t850") == "t850" and cat.lookup("z500").units == "m2 s-2"
    assert cat.conversion("degC", cat.lookup("t2m")) == (1.0, 273.15)
    assert units.conversion("m", "tp", period="1h") == (1000.0, 0.0)
    assert cat.conversion("m s**-1", cat.lookup("u10")) == (1.0, 0.0)
    with pytest.raises(UnitsError, match="unknown units 'furlongs'"):
        cat.conversion("furlongs", cat.lookup("t2m"))
    with pytest.raises(UnitsError, match="expected units K.*'m s-1'"):
        cat.conversion("m s-1", cat.lookup("t2m"))
    with pytest.raises(SchemaError, match="canonical variable name"):
        cat.lookup("temperature")


# ---- synthetic inputs and bad inputs ------------------------------------------------------------
def test_celsius_declared_is_converted(tmp_path, rng):
    path = _write(
        tmp_path,
        "c.nc",
        {"T2": (("time", "latitude", "longitude"), _field(rng, base=5.0), {"units": "degC"})},
        _coords(lat_desc=True),
    )
    ds = open_dataset(path)
    assert ds.t2m.attrs["units"] == "K" and float(ds.t2m.min()) > 270
    assert np.all(np.diff(ds.lat.values) > 0)  # descending latitude flipped
    validate(ds, ["t2m"])


def test_celsius_labelled_kelvin_rejected(tmp_path, rng):
    path = _write(
        tmp_path,
        "bad_units.nc",
        {"t2m": (("time", "latitude", "longitude"), _field(rng, base=5.0), {"units": "K"})},
        _coords(),
    )
    with pytest.raises(
        UnitsError,
        match=r"bad_units.nc.*'t2m'.*expected values in 150..350 K, "
        r"found [-0-9.]+ at time=\d+ \(.*\), lat=\d+ \(.*\), lon=.*degC",
    ):
        open_dataset(path).t2m.load()
    ds = open_dataset(path, check_range=False)
    with pytest.raises(
        UnitsError, match=r"bad_units.nc.*'t2m'.*expected values in 150..350 K.*degC"
    ):
        validate(ds)
    validate(ds, check_range=False)


def test_unknown_and_wrong_units(tmp_path, rng):
    p1 = _write(
        tmp_path,
        "u1.nc",
        {"t2m": (("time", "latitude", "longitude"), _field(rng), {"units": "furlongs"})},
        _coords(),
    )
    with pytest.raises(UnitsError, match=r"u1.nc.*'t2m'.*unknown units 'furlongs'"):
        open_dataset(p1)
    p2 = _write(
        tmp_path,
        "u2.nc",
        {"u10": (("time", "latitude", "longitude"), _field(rng), {"units": "K"})},
        _coords(),
    )
    with pytest.raises(UnitsError, match=r"u2.nc.*'u10'.*expected units m s-1"):
        open_dataset(p2)
    p3 = _write(
        tmp_path, "u3.nc", {"t2m": (("time", "latitude", "longitude"), _field(rng))}, _coords()
    )
    with pytest.raises(UnitsError, match="found none"):
        open_dataset(p3)
    ds = open_dataset(p3, units={"t2m": "K"})  # the user can say what the file does not
    assert ds.t2m.attrs["units"] == "K"


def test_missing_variable(tmp_path, rng):
    path = _write(
        tmp_path,
        "mv.nc",
        {"t2m": (("time", "latitude", "longitude"), _field(rng), {"units": "K"})},
        _coords(),
    )
    with pytest.raises(SchemaError, match=r"mv.nc.*missing \['u10'\].*found \['t2m'\]"):
        open_dataset(path, variables=["t2m", "u10"])
    ds = open_dataset(path, rename={"t2m": "d2m"})
    assert list(ds.data_vars) == ["d2m"]


def test_non_monotonic_and_duplicated_coordinates(tmp_path, rng):
    c = _coords()
    c["latitude"] = np.array([50.0, 50.5, 50.25, 50.75, 51.0])
    p1 = _write(
        tmp_path,
        "nm.nc",
        {"t2m": (("time", "latitude", "longitude"), _field(rng), {"units": "K"})},
        c,
    )
    with pytest.raises(CoordinateError, match=r"nm.nc.*'lat'.*monotonic"):
        open_dataset(p1)
    c = _coords()
    c["time"] = pd.DatetimeIndex(
        ["2020-01-01T00", "2020-01-01T01", "2020-01-01T01", "2020-01-01T02"]
    )
    p2 = _write(
        tmp_path,
        "dup.nc",
        {"t2m": (("time", "latitude", "longitude"), _field(rng), {"units": "K"})},
        c,
    )
    with pytest.raises(CoordinateError, match=r"dup.nc.*'time'.*duplicates"):
        open_dataset(p2)


def test_nans_need_a_mask(tmp_path, rng):
    data = _field(rng)
    data[:, 0, 0] = np.nan
    path = _write(
        tmp_path,
        "nan.nc",
        {"t2m": (("time", "latitude", "longitude"), data, {"units": "K"})},
        _coords(),
    )
    ds = open_dataset(path)
    with pytest.raises(MissingValueError, match=r"nan.nc.*'t2m'.*4 NaNs"):
        validate(ds)
    mask = np.ones((5, 6), bool)
    mask[0, 0] = False
    validate(ds, mask=mask)
    mask[0, 0] = True
    with pytest.raises(MissingValueError, match="inside the mask"):
        validate(ds, mask=mask)
    validate(ds, allow_nan=True)


def test_corrupt_and_truncated_files(tmp_path, rng):
    good = _write(
        tmp_path,
        "good.nc",
        {
            "t2m": (
                ("time", "latitude", "longitude"),
                _field(rng, nt=50, ny=20, nx=20),
                {"units": "K"},
            )
        },
        _coords(50, 20, 20),
    )
    trunc = tmp_path / "trunc.nc"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match="trunc.nc"):
        open_dataset(trunc)
    classic = _write(
        tmp_path,
        "classic.nc",
        {
            "t2m": (
                ("time", "latitude", "longitude"),
                _field(rng, nt=50, ny=20, nx=20),
                {"units": "K"},
            )
        },
        _coords(50, 20, 20),
        engine="scipy",
    )
    ctrunc = tmp_path / "ctrunc.nc"
    ctrunc.write_bytes(classic.read_bytes()[: classic.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match="ctrunc.nc"):
        open_dataset(ctrunc)
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"this is not netcdf at all")
    with pytest.raises(CorruptFileError, match="junk.nc.*expected a NetCDF"):
        open_dataset(junk)
    empty = tmp_path / "empty.grib"
    empty.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty"):
        open_dataset(empty)


def test_multi_file_concat_zarr_and_levels(tmp_path, rng):
    c1, c2 = _coords(), _coords()
    c2["time"] = c1["time"] + pd.Timedelta(hours=4)
    a = _write(
        tmp_path,
        "a.nc",
        {"t2m": (("time", "latitude", "longitude"), _field(rng), {"units": "K"})},
        c1,
    )
    b = _write(
        tmp_path,
        "b.nc",
        {"t2m": (("time", "latitude", "longitude"), _field(rng), {"units": "K"})},
        c2,
    )
    ds = open_dataset(str(tmp_path / "*.nc"))
    assert ds.sizes["time"] == 8
    shutil.copy(a, tmp_path / "c.nc")  # same times again: overlap
    with pytest.raises(AlignmentError, match="overlap"):
        open_dataset([a, b, tmp_path / "c.nc"])
    z = tmp_path / "s.zarr"
    ds.to_zarr(z, zarr_format=3, consolidated=False)
    np.testing.assert_array_equal(open_dataset(z).t2m.values, ds.t2m.values)
    lev = xr.Dataset(
        {
            "t": (
                ("time", "plev", "lat", "lon"),
                250 + rng.random((2, 2, 3, 4)).astype("float32"),
                {"units": "K"},
            )
        },
        coords={
            "time": pd.date_range("2020", periods=2, freq="6h"),
            "plev": ("plev", [85000.0, 50000.0], {"units": "Pa"}),
            "lat": [1.0, 2.0, 3.0],
            "lon": [0.0, 1.0, 2.0, 3.0],
        },
    )
    lev.to_netcdf(tmp_path / "lev.nc")
    got = open_dataset(tmp_path / "lev.nc")
    assert set(got.data_vars) == {"t850", "t500"}


def test_schema_problems_lists_everything(tmp_path, rng):
    ds = xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), _field(rng, base=0.0), {"units": "K"}),
            "u10": (("time", "lat", "lon"), _field(rng, base=0.0), {"units": "knots"}),
        },
        coords={
            "time": pd.date_range("2020", periods=4, freq="h"),
            "lat": np.arange(5.0),
            "lon": np.arange(6.0),
        },
    )
    problems = schema_problems(ds, ["t2m", "u10", "v10"])
    kinds = sorted(type(p).__name__ for p in problems)
    assert kinds == ["RangeError", "SchemaError", "UnitsError"]  # RangeError: a UnitsError


def test_forecast_lead_times(tmp_path, rng):
    valid = pd.date_range("2020-01-01T06", periods=4, freq="6h")
    init = valid - pd.to_timedelta([6, 6, 12, 12], unit="h")
    base = {"t2m": (("time", "lat", "lon"), _field(rng, ny=2, nx=2), {"units": "K"})}
    coords = {
        "time": valid,
        "lat": [0.0, 1.0],
        "lon": [0.0, 1.0],
        "lead_time": ("time", np.array([6.0, 6.0, 12.0, 12.0])),
        "forecast_reference_time": ("time", init),
    }
    good = _write(tmp_path, "fc.nc", base, coords)
    ds = open_dataset(good)
    assert (
        ds.lead_time.values.tolist() == [6.0, 6.0, 12.0, 12.0]
        and ds.lead_time.attrs["units"] == "hours"
    )
    coords["forecast_reference_time"] = ("time", init + pd.Timedelta(hours=1))
    bad = _write(tmp_path, "fc_bad.nc", base, coords)
    with pytest.raises(
        AlignmentError,
        match=(
            r"fc_bad.nc: expected valid time = forecast_reference_time \+ lead_time, found 4 "
            r"misaligned"
        ),
    ):
        open_dataset(bad)
    # several leads valid at one time are fine; the same (valid time, lead) twice is not
    coords = {
        "time": valid[[0, 0, 1, 1]],
        "lat": [0.0, 1.0],
        "lon": [0.0, 1.0],
        "lead_time": ("time", np.array([12.0, 6.0, 6.0, 6.0])),
    }
    with pytest.raises(CoordinateError, match="unique \\(valid time, lead time\\) pairs"):
        open_dataset(_write(tmp_path, "fc_dup.nc", base, coords))
    coords["lead_time"] = ("time", np.array([12.0, 6.0, 6.0, 12.0]))
    ds = open_dataset(_write(tmp_path, "fc_multi.nc", base, coords))
    assert ds.lead_time.values.tolist() == [6.0, 12.0, 6.0, 12.0]  # sorted by (valid time, lead)


def test_grib_style_step_dims_become_valid_time():
    from kmscale.data.canonical import canonicalize

    init = pd.date_range("2020-01-01", periods=3, freq="12h")
    step = pd.to_timedelta([6, 12, 18, 24], unit="h")
    ds = xr.Dataset(
        {
            "t2m": (
                ("time", "step", "latitude", "longitude"),
                np.full((3, 4, 2, 3), 280.0, "float32"),
                {"units": "K"},
            )
        },
        coords={
            "time": init,
            "step": step,
            "valid_time": (("time", "step"), init.values[:, None] + step.values[None, :]),
            "latitude": [1.0, 0.0],
            "longitude": [0.0, 1.0, 2.0],
        },
    )
    many = canonicalize(ds)
    assert many.sizes["time"] == 12 and set(many.lead_time.values) == {6.0, 12.0, 18.0, 24.0}
    assert pd.DatetimeIndex(many.time.values).is_monotonic_increasing
    one = canonicalize(ds.isel(time=0))
    assert one.lead_time.values.tolist() == [6.0, 12.0, 18.0, 24.0]
    assert pd.Timestamp(one.time.values[0]) == pd.Timestamp("2020-01-01T06")


def test_model_calendar_rejected(tmp_path, rng):
    times = xr.date_range("2000-02-28", periods=4, freq="D", calendar="360_day", use_cftime=True)
    path = _write(
        tmp_path,
        "cal.nc",
        {"t2m": (("time", "latitude", "longitude"), _field(rng), {"units": "K"})},
        {**_coords(), "time": times},
    )
    with pytest.raises(CoordinateError, match="cal.nc.*standard.*calendar, found '360_day'"):
        open_dataset(path)
