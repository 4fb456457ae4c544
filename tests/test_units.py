"""Unit conversion to kmscale's canonical units (kmscale.data.units)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kmscale.data import units
from kmscale.data.readers import open_dataset
from kmscale.errors import KmscaleError, SchemaError, UnitsError


def _da(values, **attrs) -> xr.DataArray:
    return xr.DataArray(np.asarray(values, dtype="float32"), dims=("x",), attrs=attrs)


@pytest.mark.parametrize(
    ("variable", "spelling", "value", "expected"),
    [
        ("t2m", "degC", 0.0, 273.15),
        ("t2m", "Celsius", -40.0, 233.15),
        ("t2m", "degrees_Celsius", 15.0, 288.15),
        ("d2m", "degF", 32.0, 273.15),
        ("t2m", "K", 280.0, 280.0),
        ("u10", "km/h", 36.0, 10.0),
        ("msl", "hPa", 1013.25, 101325.0),
        ("z500", "gpm", 5500.0, 5500.0 * 9.80665),
        ("q850", "g/kg", 8.0, 0.008),
        ("land_sea_mask", "%", 50.0, 0.5),
        ("tp", "mm h-1", 2.0, 2.0),
        ("tp", "mm/h", 2.0, 2.0),
        ("tp", "kg m-2 s-1", 1e-3, 3.6),
        ("tp", "kg m**-2 s**-1", 1e-3, 3.6),
        ("tp", "mm s-1", 1e-3, 3.6),
        ("tp", "m s-1", 1e-6, 3.6),
        ("tp", "mm day-1", 24.0, 1.0),
        ("tp", "mm/5min", 1.0, 12.0),
        ("tp", "mm (5 min)-1", 1.0, 12.0),
        ("tp", "mm 10min-1", 1.0, 6.0),
        ("tp", "kg m-2 per 3 h", 3.0, 1.0),
    ],
)
def test_conversions(variable, spelling, value, expected):
    out = units.to_canonical_units(_da([value], units=spelling), variable)
    assert out.attrs["units"] in ("K", "m s-1", "Pa", "m2 s-2", "kg kg-1", "1", "mm h-1")
    np.testing.assert_allclose(out.values, [expected], rtol=1e-6)
    assert out.dtype == np.float32


@pytest.mark.parametrize(
    ("spelling", "attrs", "period", "factor"),
    [
        ("m", {"accumulation_period": "1 hour"}, None, 1000.0),  # ERA5 tp
        ("mm", {"accumulation_period": "5min"}, None, 12.0),  # radar 5-minute sum
        ("mm", {"accumulation_period": "PT6H"}, None, 1.0 / 6.0),  # ISO 8601 duration
        ("kg m-2", {"cell_methods": "time: sum (interval: 30 minutes)"}, None, 2.0),
        ("mm", {}, "15min", 4.0),
        ("mm", {"accumulation_period": "1 day"}, "1h", 1.0),  # argument wins
        ("m", {}, pd.Timedelta(hours=3), 1000.0 / 3.0),
    ],
)
def test_accumulations_need_and_use_a_period(spelling, attrs, period, factor):
    out = units.to_canonical_units(
        _da([1.0, 0.0, np.nan], units=spelling, **attrs), "tp", period=period
    )
    np.testing.assert_allclose(out.values[:2], [factor, 0.0], rtol=1e-6)
    assert np.isnan(out.values[2])
    assert "accumulation_period" not in out.attrs and out.attrs["units"] == "mm h-1"


def test_accumulation_without_period_is_an_error():
    with pytest.raises(UnitsError, match=r"'tp'.*'mm'.*accumulated amount.*period.*found none"):
        units.to_canonical_units(_da([1.0], units="mm"), "tp")
    with pytest.raises(UnitsError, match="accumulation period.*'soon'"):
        units.to_canonical_units(_da([1.0], units="m", accumulation_period="soon"), "tp")
    with pytest.raises(UnitsError, match="positive accumulation period"):
        units.to_canonical_units(_da([1.0], units="m"), "tp", period="-1h")


def test_errors_name_variable_found_and_accepted():
    with pytest.raises(UnitsError, match=r"'t2m'.*expected units K.*unknown units 'furlongs'"):
        units.to_canonical_units(_da([1.0], units="furlongs"), "t2m")
    with pytest.raises(UnitsError, match=r"'t2m'.*expected units K.*found 'm s-1'"):
        units.to_canonical_units(_da([1.0], units="m s-1"), "t2m")
    with pytest.raises(UnitsError, match=r"'tp'.*expected units of a precipitation rate.*'K'"):
        units.to_canonical_units(_da([1.0], units="K"), "tp")
    with pytest.raises(UnitsError, match=r"'u10'.*found none"):
        units.to_canonical_units(_da([1.0]), "u10")
    with pytest.raises(SchemaError, match="canonical variable name"):
        units.to_canonical_units(_da([1.0], units="K"), "temperature")
    with pytest.raises(UnitsError, match="numeric values"):
        units.to_canonical_units(xr.DataArray(np.array(["a"]), attrs={"units": "K"}), "t2m")
    assert issubclass(UnitsError, KmscaleError)


def test_units_argument_overrides_attribute_and_float64_kept():
    da = xr.DataArray(np.array([10.0]), dims=("x",), attrs={"units": "K", "long_name": "T"})
    out = units.to_canonical_units(da, "t2m", units="degC")
    assert out.dtype == np.float64 and float(out[0]) == pytest.approx(283.15)
    assert out.attrs == {"units": "K", "long_name": "T"}
    ints = units.to_canonical_units(_da([1]).astype("int16").assign_attrs(units="mm/h"), "tp")
    assert ints.dtype == np.float32 and float(ints[0]) == 1.0


def test_reader_reads_amounts_with_their_period(tmp_path):
    coords = {
        "time": pd.date_range("2020-01-01", periods=2, freq="5min"),
        "lat": [50.0, 51.0],
        "lon": [0.0, 1.0],
    }
    for name, value, attrs, kwargs, expected in (
        ("five.nc", 1.0, {"units": "mm", "accumulation_period": "5 minutes"}, {}, 12.0),
        ("hourly.nc", 1e-3, {"units": "m"}, {}, 1.0),  # no period stated: the file default (1 h)
        ("arg.nc", 1.0, {"units": "mm"}, {"accumulation_period": "10min"}, 6.0),
    ):
        path = tmp_path / name
        tp = np.full((2, 2, 2), value, "float32")
        xr.Dataset({"tp": (("time", "lat", "lon"), tp, attrs)}, coords=coords).to_netcdf(path)
        ds = open_dataset(path, **kwargs)
        assert ds.tp.attrs["units"] == "mm h-1"
        np.testing.assert_allclose(ds.tp.values, expected)
