"""HEALPix layer: grid, faces and padding, hierarchy, regridding, regional, stores, spectra."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest
import torch
import xarray as xr

from kmscale.errors import GridError, SchemaError, StoreError
from kmscale.evaluation.sphere_spectra import angular_power_spectrum, power_ratio_high_l
from kmscale.sphere import (
    FaceConv2d,
    FaceUpsample,
    HealpixGrid,
    RegionalHealpix,
    coarsen,
    face_permutation,
    from_faces,
    healpix_to_latlon,
    latlon_to_healpix,
    open_healpix_store,
    pad_faces,
    padding_tables,
    refine,
    regrid_to_healpix,
    regrid_to_latlon,
    to_faces,
    upsample,
    write_healpix_store,
)

# image offset (dx, dy) of healpy's neighbour order SW, W, NW, N, NE, E, SE, S
DIRS = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]


def smooth(grid: HealpixGrid) -> np.ndarray:
    lat, lon = np.radians(grid.lat), np.radians(grid.lon)
    return (
        np.cos(lat) * np.cos(lon)
        + 0.5 * np.sin(lat) ** 2
        + 0.3 * np.cos(lat) ** 2 * np.sin(2 * lon)
    )


def test_grid_contract():
    g = HealpixGrid(8)
    assert (g.npix, g.level) == (768, 3)
    assert np.isclose(g.cell_area * g.npix, 4 * np.pi)
    lon, lat = hp.pix2ang(8, np.arange(768), nest=True, lonlat=True)
    np.testing.assert_array_equal(g.lat, lat)
    np.testing.assert_array_equal(g.lon, lon)
    for bad in (0, 3, 12, -4, 2.0):
        with pytest.raises(SchemaError, match="nside"):
            HealpixGrid(bad)


@pytest.mark.parametrize("nside", [1, 4, 16])
def test_faces_roundtrip_numpy_torch(nside, rng):
    x = rng.normal(size=(2, 3, 12 * nside**2))
    f = to_faces(x)
    assert f.shape == (2, 3, 12, nside, nside)
    np.testing.assert_array_equal(from_faces(f), x)
    t = torch.as_tensor(x)
    assert torch.equal(from_faces(to_faces(t)), t)
    with pytest.raises(SchemaError, match="12 \\* nside"):
        to_faces(x[..., :-1])


def test_face_pooling_is_coarsening(rng):
    x = rng.normal(size=(1, 2, 12 * 16**2))
    pooled = torch.nn.functional.avg_pool2d(torch.as_tensor(to_faces(x)).flatten(0, 2), 2)
    np.testing.assert_allclose(pooled.reshape(1, 2, 12, 8, 8).numpy(), to_faces(coarsen(x, 1)))


def test_padding_width1_matches_healpy_neighbours():
    n = 8
    ta, tb = padding_tables(n, 1)
    perm = face_permutation(n)
    missing = 0
    for f in range(12):
        for x in range(n):
            for y in range(n):
                nb = hp.get_all_neighbours(n, perm[f * n * n + x * n + y], nest=True)
                for d, (dx, dy) in enumerate(DIRS):
                    a, b = ta[f, x + 1 + dx, y + 1 + dy], tb[f, x + 1 + dx, y + 1 + dy]
                    if nb[d] < 0:  # a three-face vertex: the corner is a mean of two cells
                        missing += 1
                        assert a != b
                    else:
                        assert perm[a] == perm[b] == nb[d]
    assert missing == 24  # 8 vertices x 3 faces


@pytest.mark.parametrize("width", [1, 2, 3])
def test_padding_smooth_field_has_no_seams(width):
    g = HealpixGrid(16)
    x = torch.as_tensor(to_faces(smooth(g)))[None, None]
    padded = pad_faces(x, width)
    assert padded.shape == (1, 1, 12, 16 + 2 * width, 16 + 2 * width)
    np.testing.assert_array_equal(padded[..., width:-width, width:-width], x)
    # no seams: image neighbours in the padded image are sphere neighbours (centres at most
    # ~1.5 cell sizes apart), except the averaged corners at the three-face vertices
    ta, tb = padding_tables(16, width)
    perm = face_permutation(16)
    vec = np.stack(hp.pix2vec(16, perm[ta], nest=True), -1)
    same = ta == tb
    for axis in (1, 2):
        n = vec.shape[axis]
        cos = (np.take(vec, range(1, n), axis=axis) * np.take(vec, range(n - 1), axis=axis)).sum(-1)
        ok = np.take(same, range(1, n), axis=axis) & np.take(same, range(n - 1), axis=axis)
        assert np.arccos(np.clip(cos[ok], -1, 1)).max() < 1.5 * np.radians(g.resolution_deg)
    # a smooth field's steps across the padded ring are as small as inside the faces
    step = (padded[..., 1:, :] - padded[..., :-1, :]).abs().max()
    assert step < 1.5 * (x[..., 1:, :] - x[..., :-1, :]).abs().max()
    # the padded ring against the true values at the neighbour cells (exact at width 1)
    if width == 1:
        perm = face_permutation(16)
        ta, _ = padding_tables(16, 1)
        truth = smooth(g)[perm[ta]]
        edge = np.ones((18, 18), bool)
        edge[0, 0] = edge[0, -1] = edge[-1, 0] = edge[-1, -1] = False
        np.testing.assert_allclose(padded[0, 0][:, edge].numpy(), truth[:, edge])


def test_face_modules_shapes_and_gradients():
    x = torch.randn(2, 3, 12, 8, 8, requires_grad=True)
    y = FaceConv2d(3, 5, 3, stride=2)(x)
    assert y.shape == (2, 5, 12, 4, 4)
    z = FaceUpsample(5, 4)(y)
    assert z.shape == (2, 4, 12, 8, 8)
    z.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_coarsen_refine_upsample(rng):
    x = rng.normal(size=(3, 12 * 8**2))
    c = coarsen(x, 2)
    assert c.shape == (3, 48)
    np.testing.assert_allclose(c.mean(-1), x.mean(-1))
    np.testing.assert_allclose(coarsen(refine(c, 2), 2), c)
    assert torch.equal(refine(torch.ones(2, 12), 1), torch.ones(2, 48))
    g16 = HealpixGrid(16)
    up = upsample(smooth(HealpixGrid(8)), 1)
    assert np.sqrt(np.mean((up - smooth(g16)) ** 2)) < 0.5 * np.sqrt(
        np.mean((refine(smooth(HealpixGrid(8)), 1) - smooth(g16)) ** 2)
    )
    with pytest.raises(SchemaError):
        coarsen(np.zeros(12 * 4**2), 3)


def _latlon(nlat=91, nlon=180):
    lat = np.linspace(90, -90, nlat)
    lon = np.arange(nlon) * 360.0 / nlon
    la, lo = np.meshgrid(np.radians(lat), np.radians(lon), indexing="ij")
    field = np.cos(la) * np.cos(lo) + 0.5 * np.sin(la) ** 2
    return lat, lon, field


def test_bilinear_roundtrip_and_conservative_mean():
    lat, lon, field = _latlon()
    h = latlon_to_healpix(field, lat, lon, 32)
    g = HealpixGrid(32)
    la, lo = np.radians(g.lat), np.radians(g.lon)
    np.testing.assert_allclose(h, np.cos(la) * np.cos(lo) + 0.5 * np.sin(la) ** 2, atol=2e-3)
    back = healpix_to_latlon(h, 32, lat, lon)
    assert np.sqrt(np.mean((back - field) ** 2)) < 5e-3
    spectral = healpix_to_latlon(h, 32, lat, lon, method="spectral")
    assert np.sqrt(np.mean((spectral - field) ** 2)) < 2e-3
    cons = latlon_to_healpix(field + 2.0, lat, lon, 16, method="conservative")
    bounds = np.sin(np.radians(np.clip(np.r_[90, 0.5 * (lat[1:] + lat[:-1]), -90], -90, 90)))
    w = -np.diff(bounds)
    truth = ((field + 2.0) * w[:, None]).sum() / w.sum() / lon.size
    assert abs(cons.mean() - truth) / truth < 1e-6
    np.testing.assert_allclose(cons, latlon_to_healpix(field + 2, lat, lon, 16), atol=0.05)


def test_gaussian_grid_and_nan_and_errors():
    lat = np.linspace(-87.5, 87.5, 36)
    lon = np.arange(72) * 5.0
    field = np.ones((36, 72))
    np.testing.assert_allclose(latlon_to_healpix(field, lat, lon, 8), 1.0)
    field[3, 4] = np.nan
    cons = latlon_to_healpix(field, lat, lon, 4, method="conservative")
    assert np.all(np.isfinite(cons))
    with pytest.raises(GridError, match="360"):
        latlon_to_healpix(field[:, :36], lat, lon[:36], 8)
    with pytest.raises(GridError, match="poles"):
        latlon_to_healpix(field[:18], lat[:18], lon, 8)
    with pytest.raises(SchemaError, match="power of two"):
        latlon_to_healpix(field, lat, lon, 6)
    with pytest.raises(SchemaError, match="method"):
        latlon_to_healpix(field, lat, lon, 8, method="nearest")


def test_xarray_wrappers_and_store(tmp_path):
    lat, lon, field = _latlon(46, 90)
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), np.stack([field, field + 1]), {"units": "K"})},
        coords={"time": [0, 1], "lat": lat, "lon": lon},
    )
    hds = regrid_to_healpix(ds, 8)
    assert hds.t2m.dims == ("time", "cell") and hds.attrs["healpix_nside"] == 8
    assert hds.t2m.attrs["units"] == "K"
    back = regrid_to_latlon(hds, lat, lon)
    assert back.t2m.dims == ("time", "lat", "lon")
    path = write_healpix_store(hds, tmp_path / "h.zarr")
    got = open_healpix_store(path, nside=8)
    np.testing.assert_allclose(got.t2m.values, hds.t2m.values)
    with pytest.raises(SchemaError, match="nside 16"):
        open_healpix_store(path, nside=16)
    with pytest.raises(StoreError):
        write_healpix_store(hds, path)
    bad = hds.assign_attrs(healpix_order="ring")
    with pytest.raises(SchemaError, match="nested"):
        write_healpix_store(bad, tmp_path / "bad.zarr")
    assert not (tmp_path / "bad.zarr").exists()


def test_regional_healpix_projected_domain():
    y, x = np.meshgrid(np.linspace(0, 1, 40), np.linspace(0, 1, 60), indexing="ij")
    lat = 30 + 2.0 * y + 0.1 * x  # a skewed (projected-like) 2-D lat/lon
    lon = 100 + 3.0 * x - 0.2 * y
    field = np.sin(np.radians(lat) * 20) + np.cos(np.radians(lon) * 10)
    reg = RegionalHealpix(128, lat, lon)
    cells = reg.to_cells(field)
    assert cells.shape == (reg.ncell,) and np.all(np.isfinite(cells))
    assert np.all(np.diff(reg.cells) > 0)
    back = reg.to_grid(cells)
    assert back.shape == (40, 60)
    assert np.sqrt(np.mean((back - field) ** 2)) < 0.1 * field.std()  # cells ~ 9 grid steps
    full = reg.to_global(cells)
    assert np.isnan(full).sum() == full.size - reg.ncell
    with pytest.raises(SchemaError):
        reg.to_cells(field[:, :10])


def test_spectra_of_harmonic():
    nside = 16
    alm = np.zeros(hp.Alm.getsize(3 * nside - 1), complex)
    alm[hp.Alm.getidx(3 * nside - 1, 5, 0)] = 1.0
    ring = hp.alm2map(alm, nside)
    nested = hp.reorder(ring, r2n=True)
    cl = angular_power_spectrum(nested, nside)
    assert cl.shape == (48,) and np.argmax(cl) == 5
    assert np.isclose(power_ratio_high_l(2 * nested, nested), 4.0)
