"""Spectra: Parseval, a pure sine at its wavelength, masking, grids, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from kmscale.errors import SchemaError, UnitsError
from kmscale.evaluation.spectra import (
    EARTH_RADIUS_KM,
    radial_power_spectrum,
    radial_spectrum,
    wavelengths_km,
    zonal_power_spectrum,
    zonal_spectrum,
)


@pytest.mark.parametrize("n", [64, 65])
def test_zonal_parseval(n, rng):
    x = rng.standard_normal((7, n)) * 3 + 5
    s = zonal_power_spectrum(x, detrend=False, window=None)
    assert s.shape == (7, n // 2)
    np.testing.assert_allclose(s.sum(-1), x.var(-1), rtol=1e-12)


def test_zonal_sine_at_its_wavelength():
    n, dx = 128, 2.5
    lam = 40.0  # km -> k = n dx / lam = 8
    x = np.sin(2 * np.pi * np.arange(n) * dx / lam) * 2.0
    for detrend, window in [(False, None), (True, "hann")]:
        s = zonal_power_spectrum(x, detrend=detrend, window=window)
        k = int(np.argmax(s))
        assert wavelengths_km(n, dx)[k] == pytest.approx(lam)
    s = zonal_power_spectrum(x, detrend=False, window=None)
    assert s[7] == pytest.approx(2.0)  # amplitude A -> power A^2 / 2 = variance
    # Hann keeps the variance of a periodic signal (leaks it to k +- 1)
    s = zonal_power_spectrum(x, detrend=False, window="hann")
    assert s.sum() == pytest.approx(2.0, rel=1e-9)


def test_detrend_removes_a_ramp():
    x = np.linspace(0, 10, 64)
    assert zonal_power_spectrum(x, detrend=True, window=None).max() < 1e-20
    assert zonal_power_spectrum(x, detrend=False, window=None)[0] > 1.0


def test_zonal_nan_line_is_left_out(rng):
    x = rng.standard_normal((3, 4, 32))
    da = xr.DataArray(x, dims=("time", "y", "x"), coords={"x": np.arange(32) * 1000.0})
    da["x"].attrs["units"] = "m"
    ref = zonal_spectrum(da)
    da2 = da.copy()
    da2[0, 1, 5] = np.nan
    got = zonal_spectrum(da2)
    lines = zonal_power_spectrum(x).reshape(12, 16)
    np.testing.assert_allclose(got, np.delete(lines, 1, axis=0).mean(0))
    assert got.wavelength.values[0] == pytest.approx(32.0)  # 32 km line, k = 1
    assert not np.allclose(ref, got)


def test_zonal_wavelength_on_regional_latlon():
    lat = np.linspace(50, 58, 9)
    lon = np.linspace(-10, 2, 49)  # 0.25 deg
    da = xr.DataArray(
        np.random.default_rng(1).standard_normal((9, 49)),
        dims=("lat", "lon"),
        coords={"lat": lat, "lon": lon},
    )
    s = zonal_spectrum(da)
    dx = EARTH_RADIUS_KM * np.cos(np.deg2rad(54.0)) * np.deg2rad(0.25)
    assert s.wavelength.values[0] == pytest.approx(49 * dx)
    assert s.attrs["dx_km"] == pytest.approx(dx)


def test_zonal_keep_dims(rng):
    da = xr.DataArray(rng.standard_normal((2, 3, 4, 20)), dims=("time", "member", "y", "x"))
    s = zonal_spectrum(da, dx_km=1.0, keep_dims=("member",))
    assert s.dims == ("member", "wavenumber") and s.sizes["wavenumber"] == 10


def test_radial_parseval_and_sine(rng):
    x = rng.standard_normal((32, 48))
    s = radial_power_spectrum(x, detrend=False, window=None, include_corners=True)
    np.testing.assert_allclose(s.sum(), x.var(), rtol=1e-12)
    # a sine along x with 6 cycles over the 32-point (shorter) side's units
    n, dx = 64, 1.0
    yy, xx = np.mgrid[0:n, 0:n]
    f = np.sin(2 * np.pi * xx * 8 / n)
    da = xr.DataArray(f, dims=("y", "x"), coords={"x": ("x", np.arange(n) * 1.0, {"units": "km"})})
    s = radial_spectrum(da, detrend=True)
    assert float(s.wavelength[int(np.argmax(s.values))]) == pytest.approx(n * dx / 8)


def test_radial_masking_keeps_white_noise_level(rng):
    x = rng.standard_normal((64, 64))
    full = radial_power_spectrum(x)
    valid = np.ones_like(x, bool)
    valid[:, :20] = False  # 31 % masked, like the sea or outside a radar composite
    xm = x.copy()
    xm[~valid] = np.nan
    part = radial_power_spectrum(xm)
    assert np.isfinite(part).all()
    # total power is kept within sampling error
    assert part.sum() == pytest.approx(full.sum(), rel=0.15)
    # below the valid fraction threshold: documented NaN
    valid[:, :40] = False
    assert np.isnan(radial_power_spectrum(x, valid=valid)).all()


def test_radial_needs_km_grid(rng):
    da = xr.DataArray(rng.standard_normal((16, 16)), dims=("lat", "lon"))
    with pytest.raises(SchemaError):
        radial_spectrum(da)
    da = xr.DataArray(rng.standard_normal((16, 16)), dims=("y", "x"), coords={"x": np.arange(16.0)})
    with pytest.raises(UnitsError, match="units"):
        radial_spectrum(da)
    assert radial_spectrum(da, dx_km=2.0).sizes["wavenumber"] == 8


def test_float32_lines_match_float64(rng):
    x = rng.standard_normal((5, 96)) + np.linspace(270, 290, 96)
    s64 = zonal_power_spectrum(x)
    s32 = zonal_power_spectrum(x.astype(np.float32))
    assert s32.dtype == np.float32
    np.testing.assert_allclose(s32, s64, rtol=2e-3, atol=1e-6 * s64.max())
