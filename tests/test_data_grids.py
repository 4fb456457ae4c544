"""Grids, coarsening and regridding: exactness on synthetic fields, real static fields."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kmscale.data.grids import (
    ProjectedGrid,
    RegularLatLonGrid,
    RotatedPoleGrid,
    coarsen,
    grid_of,
    regrid,
)
from kmscale.data.readers import open_dataset
from kmscale.errors import GridError


def _latlon_ds(lat, lon, values, name="t2m", nt=None):
    dims = ("lat", "lon") if nt is None else ("time", "lat", "lon")
    coords = {"lat": lat, "lon": lon}
    if nt is not None:
        coords["time"] = pd.date_range("2020", periods=nt, freq="h")
    return xr.Dataset({name: (dims, values.astype("float32"), {"units": "K"})}, coords=coords)


def test_bilinear_exact_for_linear_fields_and_nearest_picks_values():
    src = RegularLatLonGrid.from_bounds(40, 50, -5, 5, 0.5)
    lat2, lon2 = src.latlon()
    field = 250 + 2.0 * lat2 - 0.5 * lon2
    ds = _latlon_ds(src.lat, src.lon, np.stack([field, field + 1]), nt=2)
    tgt = RegularLatLonGrid.from_bounds(41.1, 48.9, -3.3, 3.3, 0.3)
    out = regrid(ds, tgt, "bilinear")
    tl, tn = tgt.latlon()
    np.testing.assert_allclose(out.t2m.values[0], 250 + 2.0 * tl - 0.5 * tn, atol=1e-3)
    np.testing.assert_allclose(out.t2m.values[1] - out.t2m.values[0], 1.0, atol=1e-4)
    assert out.t2m.dims == ("time", "lat", "lon") and out.t2m.attrs["units"] == "K"
    cubic = regrid(ds, tgt, "bicubic")
    np.testing.assert_allclose(cubic.t2m.values[0], 250 + 2.0 * tl - 0.5 * tn, atol=1e-2)
    near = regrid(ds, tgt, "nearest")
    assert np.isin(near.t2m.values[0], field.astype("float32")).all()


def test_area_regrid_conserves_means_and_matches_brute_force(rng):
    src = RegularLatLonGrid.from_bounds(50.125, 57.875, -9.875, 1.875, 0.25)
    values = rng.normal(size=src.shape)
    ds = _latlon_ds(src.lat, src.lon, values)
    tgt = RegularLatLonGrid.from_bounds(50.5, 57.5, -9.5, 1.5, 1.0)
    out = regrid(ds, tgt, "area").t2m.values
    # brute force: cos(lat)-weighted means over the 4x4 blocks (cells nest exactly)
    w = np.cos(np.radians(src.latlon()[0]))
    blocks = (values * w).reshape(8, 4, 12, 4).sum((1, 3)) / w.reshape(8, 4, 12, 4).sum((1, 3))
    np.testing.assert_allclose(out, blocks, rtol=2e-4, atol=2e-4)
    # plain block mean via coarsen is nearly the same at these latitudes
    np.testing.assert_allclose(coarsen(ds, 4).t2m.values, out, atol=0.02)


def test_regrid_nan_and_coverage_errors():
    src = RegularLatLonGrid.from_bounds(0, 10, 0, 10, 1.0)
    values = np.ones(src.shape)
    values[5, 5] = np.nan
    ds = _latlon_ds(src.lat, src.lon, values)
    out = regrid(ds, RegularLatLonGrid.from_bounds(1, 9, 1, 9, 0.5), "bilinear").t2m.values
    assert np.isnan(out).sum() > 0 and np.nanmax(np.abs(out - 1)) < 1e-6
    with pytest.raises(
        GridError, match=r"expected the source grid .* to cover the target grid .* outside"
    ):
        regrid(ds, RegularLatLonGrid.from_bounds(5, 15, 0, 5, 1.0), "bilinear")
    with pytest.raises(GridError, match="method"):
        regrid(ds, src, "spline")


def test_coarsen_shape_and_nan_policy():
    src = RegularLatLonGrid.from_bounds(0, 7, 0, 7, 1.0)
    values = np.arange(64.0).reshape(8, 8)
    values[0, 0] = np.nan
    ds = _latlon_ds(src.lat, src.lon, values)
    any_ = coarsen(ds, 4).t2m.values
    all_ = coarsen(ds, 4, nan_policy="all").t2m.values
    assert np.isnan(any_[0, 0]) and np.isfinite(all_[0, 0])
    np.testing.assert_allclose(any_[1, 1], values[4:, 4:].mean())
    assert coarsen(ds, 4).lat.values.tolist() == [1.5, 5.5]
    with pytest.raises(GridError, match="divisible by 3, found 8"):
        coarsen(ds, 3)
    assert coarsen(ds, 3, trim=True).t2m.shape == (2, 2)


def test_radolan_coarsened_by_8_keeps_mask(real_data):
    from kmscale_testdata import radolan_rw

    ds = radolan_rw().isel(time=slice(0, 2))
    coarse = coarsen(ds, 8, trim=True)
    assert coarse.tp.shape == (2, 112, 112) and coarse.lat.shape == (112, 112)
    fine_nan = np.isnan(ds.tp.values[0, :896, :896]).reshape(112, 8, 112, 8).any((1, 3))
    np.testing.assert_array_equal(np.isnan(coarse.tp.values[0]), fine_nan)
    assert coarse["mask"].dtype == bool
    np.testing.assert_array_equal(
        coarse["mask"].values, ds["mask"].values[:896, :896].reshape(112, 8, 112, 8).all((1, 3))
    )


def test_longitude_conventions_interoperate():
    src = RegularLatLonGrid(np.arange(-10.0, 11.0), np.arange(0.0, 360.0, 1.0))
    lat2, lon2 = src.latlon()
    ds = _latlon_ds(src.lat, src.lon, np.sin(np.radians(lon2)) + 0 * lat2)
    tgt = RegularLatLonGrid(np.array([0.0, 1.0]), np.array([-30.0, -10.0, 10.0]))
    out = regrid(ds, tgt, "bilinear").t2m.values
    np.testing.assert_allclose(out[0], np.sin(np.radians([-30.0, -10.0, 10.0])), atol=1e-4)


def test_rotated_pole_matches_cordex_coordinates(real_data):
    ds = open_dataset(real_data / "static" / "HSURF_regional_model_0.11deg.nc")
    grid = grid_of(ds)
    assert isinstance(grid, RotatedPoleGrid)
    lat, lon = grid.latlon()
    np.testing.assert_allclose(lat, ds.lat.values, atol=1e-3)
    np.testing.assert_allclose(((lon - ds.lon.values + 180) % 360) - 180, 0, atol=1e-3)
    iy, ix = grid.locate(ds.lat.values[::50, ::50], ds.lon.values[::50, ::50])
    gy, gx = np.meshgrid(np.arange(0, 438, 50), np.arange(0, 450, 50), indexing="ij")
    np.testing.assert_allclose(iy, gy, atol=0.05)
    np.testing.assert_allclose(ix, gx, atol=0.05)


def test_ukv_orography_regridded_onto_era5_grid(real_data):
    from kmscale_testdata import era5_uk_static, era5_uk_t2m

    target = era5_uk_t2m().isel(time=0)
    static = era5_uk_static(target)
    oro, lsm = static.orography.values, static.land_sea_mask.values
    assert oro.shape == lsm.shape == (32, 48)
    assert static.orography.attrs["units"] == "m"
    assert np.isfinite(oro).all() and np.isfinite(lsm).all()
    assert 350 < oro.max() < 1300  # 0.25-deg means over the Highlands
    assert abs(oro[lsm < 0.05]).max() < 30  # open sea is flat
    assert oro[lsm > 0.95].mean() > 80
    # point (bilinear) values correlate with the area means
    bil = era5_uk_static(target, method="bilinear").orography.values
    assert np.corrcoef(bil.ravel(), oro.ravel())[0, 1] > 0.85
    assert 0.25 < lsm.mean() < 0.6  # the box is part land, part sea


def test_eur44_eur11_static_pair(real_data):
    fine = open_dataset(
        [
            real_data / "static" / "HSURF_regional_model_0.11deg.nc",
            real_data / "static" / "FR-LAND_regional_model_0.11deg.nc",
        ]
    )
    coarse = open_dataset(
        [
            real_data / "static" / "HSURF_regional_model_0.44deg.nc",
            real_data / "static" / "FR-LAND_regional_model_0.44deg.nc",
        ]
    )
    assert set(fine.data_vars) == set(coarse.data_vars) == {"orography", "land_sea_mask"}
    assert isinstance(grid_of(fine), RotatedPoleGrid)
    # the 0.44 file's pole is (90N, 180E): effectively a regular lat-lon grid reaching 46.6N only,
    # so the whole of it is not covered by EUR-11 ...
    cgrid = grid_of(coarse)
    with pytest.raises(GridError, match="cover"):
        regrid(fine, cgrid, "area")
    # ... but where they overlap the fine fields averaged onto the coarse cells match
    sub = coarse.sel(y=slice(36.0, 46.0), x=slice(-5.0, 25.0)).load()
    sub_grid = grid_of(sub)
    on_coarse = regrid(fine.load(), sub_grid, "area")
    a, b = on_coarse.orography.values.ravel(), sub.orography.values.ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.9
    assert abs(a.mean() - b.mean()) < 60
    c, d = on_coarse.land_sea_mask.values.ravel(), sub.land_sea_mask.values.ravel()
    assert np.corrcoef(c, d)[0, 1] > 0.9


def test_projected_radolan_grid_locates_its_own_points(real_data):
    ds = open_dataset(real_data / "radolan_rw_20221018" / "radolan_RW_20221018_hourly_1km.nc")
    grid = grid_of(ds)
    assert isinstance(grid, ProjectedGrid) and grid.shape == (900, 900)
    lat, lon = grid.latlon()
    pts = (slice(10, 890, 97), slice(5, 895, 89))
    iy, ix = grid.locate(lat[pts], lon[pts])
    gy, gx = np.meshgrid(np.arange(900)[pts[0]], np.arange(900)[pts[1]], indexing="ij")
    np.testing.assert_allclose(iy, gy, atol=0.05)
    np.testing.assert_allclose(ix, gx, atol=0.05)
    # a 0.1-deg lat-lon window over Germany, nearest and area
    tgt = RegularLatLonGrid.from_bounds(50.0, 52.0, 8.0, 11.0, 0.1)
    one = ds.isel(time=slice(0, 1)).load()
    near = regrid(one, tgt, "nearest").tp
    area = regrid(one, tgt, "area").tp
    assert near.shape == area.shape == (1, 21, 31)
    assert float(area.mean()) == pytest.approx(float(near.mean()), rel=0.3, abs=0.02)
    with pytest.raises(GridError, match="cover"):
        regrid(one, RegularLatLonGrid.from_bounds(40.0, 42.0, 8.0, 11.0, 0.5), "bilinear")


# ---- CF projections without 2-D lat/lon ----------------------------------------------------
CLARKE1866 = {"semi_major_axis": 6378206.4, "semi_minor_axis": 6378206.4 * np.sqrt(1 - 0.00676866)}


def test_projection_inverses_match_snyder_examples():
    from kmscale.data.projections import _m, _q, inverse

    # Snyder (1987) p. 316: polar stereographic, south, International ellipsoid
    intl = {"semi_major_axis": 6378388.0, "semi_minor_axis": 6378388.0 * np.sqrt(1 - 0.00672267)}
    lat, lon = inverse(
        -1540033.6,
        -560526.4,
        {
            "grid_mapping_name": "polar_stereographic",
            "latitude_of_projection_origin": -90.0,
            "standard_parallel": -71.0,
            "straight_vertical_longitude_from_pole": -100.0,
            **intl,
        },
    )
    assert (lat, lon) == (pytest.approx(-75.0, abs=1e-5), pytest.approx(150.0, abs=1e-5))
    # p. 297: Lambert conformal conic, two parallels, Clarke 1866
    lat, lon = inverse(
        1894410.9,
        1564649.5,
        {
            "grid_mapping_name": "lambert_conformal_conic",
            "standard_parallel": [33.0, 45.0],
            "latitude_of_projection_origin": 23.0,
            "longitude_of_central_meridian": -96.0,
            **CLARKE1866,
        },
    )
    assert (lat, lon) == (pytest.approx(35.0, abs=1e-5), pytest.approx(-75.0, abs=1e-5))
    # p. 334: LAEA on the ellipsoid; forward (24-...) written out here,
    # x matches Snyder's -965932.1 m
    a, e = CLARKE1866["semi_major_axis"], np.sqrt(0.00676866)
    phi1, lam0, phi, lam = np.radians([40.0, -100.0, 30.0, -110.0])
    qp = _q(np.pi / 2, e)
    rq, b1, b = a * np.sqrt(qp / 2), np.arcsin(_q(phi1, e) / qp), np.arcsin(_q(phi, e) / qp)
    d = a * _m(phi1, e) / (rq * np.cos(b1))
    big_b = rq * np.sqrt(
        2 / (1 + np.sin(b1) * np.sin(b) + np.cos(b1) * np.cos(b) * np.cos(lam - lam0))
    )
    x = big_b * d * np.cos(b) * np.sin(lam - lam0)
    y = big_b / d * (np.cos(b1) * np.sin(b) - np.sin(b1) * np.cos(b) * np.cos(lam - lam0))
    assert x == pytest.approx(-965932.1, abs=0.1)
    lat, lon = inverse(
        x,
        y,
        {
            "grid_mapping_name": "lambert_azimuthal_equal_area",
            "latitude_of_projection_origin": 40.0,
            "longitude_of_projection_origin": -100.0,
            **CLARKE1866,
        },
    )
    assert (lat, lon) == (pytest.approx(30.0, abs=1e-7), pytest.approx(-110.0, abs=1e-7))
    # Mercator on a sphere: y = R ln tan(pi/4 + phi/2)
    r = 6371000.0
    lat, lon = inverse(
        r * np.radians(20.0),
        r * np.log(np.tan(np.pi / 4 + np.radians(35.0) / 2)),
        {
            "grid_mapping_name": "mercator",
            "earth_radius": r,
            "longitude_of_projection_origin": 170.0,
        },
    )
    assert (lat, lon) == (pytest.approx(35.0, abs=1e-9), pytest.approx(-170.0, abs=1e-9))
    with pytest.raises(GridError, match="transverse_mercator"):
        inverse(0.0, 0.0, {"grid_mapping_name": "transverse_mercator"})


def test_radolan_polar_stereographic_and_uk_radar_laea(real_data):
    import glob

    from kmscale.data.projections import inverse

    raw = xr.open_dataset(
        real_data / "radolan_rw_20221018" / "radolan_RW_20221018_hourly_1km.nc", engine="netcdf4"
    )
    xx, yy = np.meshgrid(raw.x.values[::30], raw.y.values[::30])
    lat, lon = inverse(
        xx,
        yy,
        {
            "grid_mapping_name": "polar_stereographic",
            "latitude_of_projection_origin": 90.0,
            "standard_parallel": 60.0,
            "straight_vertical_longitude_from_pole": 10.0,
            "earth_radius": 6370040.0,
        },
    )
    np.testing.assert_allclose(lat, raw.lat.values[::30, ::30], atol=1e-4)
    np.testing.assert_allclose(lon, raw.lon.values[::30, ::30], atol=1e-4)
    # the Met Office radar fixture has x/y and a LAEA grid mapping but no lat/lon
    ds = open_dataset(sorted(glob.glob(str(real_data / "fixtures" / "2018110315*_radar_*.nc"))))
    grid = grid_of(ds)
    assert (
        isinstance(grid, ProjectedGrid)
        and grid.mapping["grid_mapping_name"] == "lambert_azimuthal_equal_area"
    )
    glat, glon = grid.latlon()
    assert 51.0 < glat.min() < 51.3 and 54.8 < glat.max() < 55.0 and -9.7 < glon.min() < -9.5
    assert float(ds.tp.max()) < 100  # the undeclared 9.97e36 fill became NaN, m s-1 became mm h-1
    out = regrid(ds.load(), RegularLatLonGrid.from_bounds(52.0, 54.0, -8.0, -4.0, 0.1), "area")
    assert out.tp.shape == (2, 21, 41)  # the 16:00 frame is not in the 2018110315* glob
