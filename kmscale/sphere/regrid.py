"""Lat-lon <-> HEALPix regridding: bilinear and area-conservative, numpy and xarray.

- ``latlon_to_healpix(..., method="bilinear")``: scipy's ``RegularGridInterpolator`` on the
  lat-lon grid at the HEALPix cell centres (healpy ``pix2ang``), longitude periodic, the
  poles closed by the zonal mean of the outermost latitude row (so Gaussian grids, whose
  rows stop short of the poles, are covered).
- ``method="conservative"``: every lat-lon cell is split into ``S x S`` equal-area sub-cells
  (equal steps in longitude and in sin(latitude)), each sub-cell is assigned to the HEALPix
  cell holding its centre (healpy ``ang2pix``), and each HEALPix cell takes the area-weighted
  mean of its sub-cells. That is the exact overlap remap up to the sub-cell resolution; a
  final global additive fixer (the difference of the two area means, typically ~1e-5 of
  the field's range) makes the HEALPix area mean equal the lat-lon area mean to rounding.
- ``healpix_to_latlon(..., method="bilinear")``: healpy's ``get_interp_weights`` at the
  target points. ``method="spectral"``: band-limited interpolation, the field's spherical
  harmonics up to ``lmax = 3 nside - 1`` (healpy ``map2alm``, 3 Jacobi iterations) synthesised
  on a grid 4x finer (``alm2map``) and read there bilinearly; far more accurate on smooth
  fields (healpy's 4-point weights dominate the round-trip error there), with Gibbs ringing
  near sharp gradients.

NaN: bilinear propagates NaN from any cell of the interpolation stencil; conservative
averages the valid sub-cells only (a HEALPix cell with none is NaN) and applies the fixer
only to fields without NaN.
"""

from __future__ import annotations

from functools import lru_cache

import healpy as hp
import numpy as np
import xarray as xr
from scipy import sparse
from scipy.interpolate import RegularGridInterpolator

from kmscale.errors import CoordinateError, GridError, SchemaError, describe
from kmscale.sphere.healpix import HealpixGrid, apply_weights, nside_from_npix

METHODS = ("bilinear", "conservative")
BACK_METHODS = ("bilinear", "spectral")
SPECTRAL_OVERSAMPLING = 4  # synthesis grid of the spectral method: nside x 4


def _check_global(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Validate a global regular-longitude grid; return lat ascending order, lon, lon step."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if lat.ndim != 1 or lon.ndim != 1 or lat.size < 2 or lon.size < 3:
        raise SchemaError(
            describe(
                "1-D lat and lon coordinates", f"{lat.shape}, {lon.shape}", where="lat-lon grid"
            )
        )
    dlat, dlon = np.diff(lat), np.diff(lon)
    if not (np.all(dlat > 0) or np.all(dlat < 0)) or not np.all(dlon > 0):
        raise CoordinateError(
            describe(
                "monotonic latitudes and increasing longitudes",
                "non-monotonic coordinates",
                where="lat-lon grid",
            )
        )
    step = float(np.median(dlon))
    if abs(lon.size * step - 360.0) > 0.5 * step or np.ptp(dlon) > 1e-3 * step:
        raise GridError(
            describe(
                "regular longitudes covering 360 deg (global grid)",
                f"{lon.size} x {step:.4g} deg",
                where="lat-lon grid",
            )
        )
    spacing = float(np.abs(dlat).max())
    if 90.0 - lat.max() > spacing or lat.min() + 90.0 > spacing:
        raise GridError(
            describe(
                "latitudes reaching within one grid step of both poles",
                f"{lat.min():.2f}..{lat.max():.2f} deg",
                where="lat-lon grid",
            )
        )
    return lat, lon, step


def _bilinear_to_healpix(values: np.ndarray, lat, lon, nside: int) -> np.ndarray:
    lat, lon, step = _check_global(lat, lon)
    v = np.asarray(values, float)
    if lat[0] > lat[-1]:
        lat, v = lat[::-1], v[..., ::-1, :]
    # periodic longitude: one wrapped column at each end
    lon_ext = np.concatenate([[lon[-1] - 360.0], lon, [lon[0] + 360.0]])
    v = np.concatenate([v[..., -1:], v, v[..., :1]], axis=-1)
    if lat[0] > -90.0:
        lat = np.concatenate([[-90.0], lat])
        v = np.concatenate([v[..., :1, :].mean(-1, keepdims=True).repeat(v.shape[-1], -1), v], -2)
    if lat[-1] < 90.0:
        lat = np.concatenate([lat, [90.0]])
        v = np.concatenate([v, v[..., -1:, :].mean(-1, keepdims=True).repeat(v.shape[-1], -1)], -2)
    grid = HealpixGrid(nside)
    plon = np.mod(grid.lon - lon_ext[1], 360.0) + lon_ext[1]
    interp = RegularGridInterpolator((lat, lon_ext), np.moveaxis(v, (-2, -1), (0, 1)))
    out = interp(np.stack([grid.lat, plon], -1))  # (npix, ...)
    return np.moveaxis(out, 0, -1)


def _cell_bounds(lat: np.ndarray) -> np.ndarray:
    """Latitude bounds of cells centred on ``lat`` (ascending), outermost bounds at the poles."""
    mid = 0.5 * (lat[1:] + lat[:-1])
    return np.concatenate([[-90.0], mid, [90.0]])


@lru_cache(maxsize=8)
def _conservative_matrix(lat_key: tuple, lon_key: tuple, nside: int, sub: int):
    """Sparse ``(npix, nlat * nlon)`` matrix of sub-cell areas (sr) and the lat-lon cell areas."""
    lat, lon = np.array(lat_key), np.array(lon_key)
    step = float(np.median(np.diff(lon)))
    bounds = np.sin(np.radians(_cell_bounds(lat)))  # (nlat + 1,) ascending
    k = (np.arange(sub) + 0.5) / sub
    s = bounds[:-1, None] + (bounds[1:] - bounds[:-1])[:, None] * k  # (nlat, sub) sin(lat)
    sublat = np.degrees(np.arcsin(s))
    sublon = lon[:, None] - 0.5 * step + step * k  # (nlon, sub)
    la = np.broadcast_to(sublat[:, None, :, None], (lat.size, lon.size, sub, sub))
    lo = np.broadcast_to(sublon[None, :, None, :], (lat.size, lon.size, sub, sub))
    pix = hp.ang2pix(nside, lo.ravel(), la.ravel(), nest=True, lonlat=True)
    cell_area = np.radians(step) * (bounds[1:] - bounds[:-1])  # (nlat,)
    area = np.broadcast_to((cell_area / sub**2)[:, None, None, None], la.shape).ravel()
    col = np.broadcast_to(
        np.arange(lat.size * lon.size).reshape(lat.size, lon.size, 1, 1), la.shape
    ).ravel()
    npix = 12 * nside**2
    m = sparse.csr_matrix((area, (pix, col)), shape=(npix, lat.size * lon.size))
    m.sum_duplicates()
    return m, np.repeat(cell_area, lon.size)


def _conservative_to_healpix(
    values: np.ndarray, lat, lon, nside: int, subsamples: int | None
) -> np.ndarray:
    lat, lon, step = _check_global(lat, lon)
    v = np.asarray(values, float)
    if lat[0] > lat[-1]:
        lat, v = lat[::-1], v[..., ::-1, :]
    res = HealpixGrid(nside).resolution_deg
    sub = subsamples or max(2, int(np.ceil(4 * max(step, np.abs(np.diff(lat)).max()) / res)))
    m, cell_area = _conservative_matrix(tuple(lat), tuple(lon), nside, sub)
    flat = v.reshape(-1, lat.size * lon.size).T  # (ncell, nfield)
    valid = np.isfinite(flat)
    num = m @ np.where(valid, flat, 0.0)
    den = m @ valid.astype(float)
    if np.any(m.sum(axis=1) == 0):
        raise GridError(
            describe(
                "every HEALPix cell overlapped by the lat-lon grid",
                f"empty cells at {sub}x{sub} sub-samples (raise subsamples)",
                where="conservative regrid",
            )
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den  # (npix, nfield)
    full = valid.all(0)
    if full.any():
        target = (cell_area @ np.where(valid, flat, 0.0)) / cell_area.sum()
        out[:, full] += (target - out.mean(0))[full]  # global additive fixer
    return out.T.reshape(*v.shape[:-2], -1)


def latlon_to_healpix(
    values: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    nside: int,
    method: str = "bilinear",
    subsamples: int | None = None,
) -> np.ndarray:
    """Global lat-lon fields ``(..., nlat, nlon)`` -> HEALPix nested ``(..., 12 * nside**2)``.

    Args:
        values: fields on the grid ``lat`` (deg, either order) x ``lon`` (deg, increasing,
            regular, covering 360 deg).
        nside: target resolution (power of two).
        method: "bilinear" or "conservative" (area-mean preserving; see module docstring).
        subsamples: conservative only: sub-cells per lat-lon cell side (default: enough for
            about 16 sub-cells per HEALPix cell).
    """
    HealpixGrid(nside)
    values = np.asarray(values)
    if values.ndim < 2 or values.shape[-2:] != (np.size(lat), np.size(lon)):
        raise SchemaError(
            describe(
                f"fields (..., {np.size(lat)}, {np.size(lon)})",
                values.shape,
                where="latlon_to_healpix",
            )
        )
    if method == "bilinear":
        return _bilinear_to_healpix(values, lat, lon, nside)
    if method == "conservative":
        return _conservative_to_healpix(values, lat, lon, nside, subsamples)
    raise SchemaError(describe(f"method in {METHODS}", repr(method), where="latlon_to_healpix"))


def healpix_to_latlon(
    values: np.ndarray,
    nside: int | None,
    lat: np.ndarray,
    lon: np.ndarray,
    method: str = "bilinear",
) -> np.ndarray:
    """HEALPix nested ``(..., npix)`` -> points: ``(..., nlat, nlon)`` for 1-D ``lat``/``lon``
    (a grid), or ``(..., *lat.shape)`` for 2-D lat/lon arrays of one shape (a projected grid).
    ``method``: "bilinear" or "spectral" (module docstring); NaN input: bilinear only.
    """
    values = np.asarray(values)
    found = nside_from_npix(values.shape[-1])
    if nside is not None and found != nside:
        raise SchemaError(describe(f"nside {nside}", f"nside {found}", where="healpix_to_latlon"))
    if method not in BACK_METHODS:
        raise SchemaError(
            describe(f"method in {BACK_METHODS}", repr(method), where="healpix_to_latlon")
        )
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if lat.ndim == 1 and lon.ndim == 1:
        lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    elif lat.shape == lon.shape:
        lat2, lon2 = lat, lon
    else:
        raise SchemaError(
            describe(
                "1-D lat and lon, or 2-D lat and lon of one shape",
                f"{lat.shape}, {lon.shape}",
                where="healpix_to_latlon",
            )
        )
    if method == "spectral":
        values, found = _spectral_refine(values, found), found * SPECTRAL_OVERSAMPLING
    idx, w = hp.get_interp_weights(found, lon2.ravel(), lat2.ravel(), nest=True, lonlat=True)
    return apply_weights(values, idx, w).reshape(*values.shape[:-1], *lat2.shape)


def _spectral_refine(values: np.ndarray, nside: int) -> np.ndarray:
    """Band-limited refinement of nested fields to ``nside * SPECTRAL_OVERSAMPLING``."""
    lmax, fine = 3 * nside - 1, nside * SPECTRAL_OVERSAMPLING
    flat = np.asarray(values, float).reshape(-1, values.shape[-1])
    out = np.empty((flat.shape[0], 12 * fine**2))
    for k, row in enumerate(flat):
        # map2alm's quadrature error scales with the field's magnitude: transform the
        # anomaly from the global mean (msl: 1e5 Pa mean, 1e3 Pa anomalies)
        mean = row.mean()
        alm = hp.map2alm(hp.reorder(row - mean, n2r=True), lmax=lmax, iter=3)
        out[k] = hp.reorder(hp.alm2map(alm, fine, lmax=lmax), r2n=True) + mean
    return out.reshape(*values.shape[:-1], -1)


# ---- xarray -------------------------------------------------------------------------
LAT_NAMES, LON_NAMES = ("lat", "latitude"), ("lon", "longitude")


def _dim(obj: xr.DataArray | xr.Dataset, names: tuple[str, ...]) -> str:
    for n in names:
        if n in obj.dims:
            return n
    raise SchemaError(describe(f"a dim named one of {names}", tuple(obj.dims), where="regrid"))


def healpix_coords(nside: int) -> dict:
    """``cell`` coordinates (index, centre lat/lon in degrees) for a nested grid."""
    g = HealpixGrid(nside)
    return {
        "cell": ("cell", np.arange(g.npix)),
        "lat": ("cell", g.lat, {"units": "degrees_north"}),
        "lon": ("cell", g.lon, {"units": "degrees_east"}),
    }


def regrid_to_healpix(
    obj: xr.DataArray | xr.Dataset,
    nside: int,
    method: str = "bilinear",
    subsamples: int | None = None,
) -> xr.DataArray | xr.Dataset:
    """xarray lat-lon (dims ``lat``/``latitude``, ``lon``/``longitude``) -> a ``cell`` dim.

    Variables without the lat/lon dims are carried unchanged; the grid attributes
    (``grid_mapping_name: healpix``, ``healpix_nside``, ``healpix_order: nested``) are set.
    """
    ydim, xdim = _dim(obj, LAT_NAMES), _dim(obj, LON_NAMES)
    lat, lon = obj[ydim].values, obj[xdim].values

    def one(da: xr.DataArray) -> xr.DataArray:
        if ydim not in da.dims:
            return da
        da = da.transpose(..., ydim, xdim)
        out = latlon_to_healpix(da.values, lat, lon, nside, method, subsamples)
        dims = (*da.dims[:-2], "cell")
        return xr.DataArray(
            out.astype(da.dtype if da.dtype.kind == "f" else float),
            dims=dims,
            coords={
                k: c for k, c in da.coords.items() if ydim not in c.dims and xdim not in c.dims
            },
            attrs=dict(da.attrs),
            name=da.name,
        )

    if isinstance(obj, xr.DataArray):
        res = one(obj)
    else:
        res = xr.Dataset({k: one(v) for k, v in obj.data_vars.items()}, attrs=dict(obj.attrs))
    res = res.assign_coords(healpix_coords(nside))
    res.attrs.update(HealpixGrid(nside).attrs())
    return res


def regrid_to_latlon(
    obj: xr.DataArray | xr.Dataset, lat: np.ndarray, lon: np.ndarray, method: str = "bilinear"
) -> xr.DataArray | xr.Dataset:
    """xarray with a nested ``cell`` dim -> 1-D ``lat`` x ``lon`` grid (``healpix_to_latlon``)."""
    if "cell" not in obj.dims:
        raise SchemaError(describe("a 'cell' dim", tuple(obj.dims), where="regrid_to_latlon"))
    nside = nside_from_npix(obj.sizes["cell"])

    def one(da: xr.DataArray) -> xr.DataArray:
        if "cell" not in da.dims:
            return da
        da = da.transpose(..., "cell")
        out = healpix_to_latlon(da.values, nside, lat, lon, method)
        return xr.DataArray(
            out,
            dims=(*da.dims[:-1], "lat", "lon"),
            coords={k: c for k, c in da.coords.items() if "cell" not in c.dims},
            attrs=dict(da.attrs),
            name=da.name,
        )

    coords = {
        "lat": ("lat", np.asarray(lat), {"units": "degrees_north"}),
        "lon": ("lon", np.asarray(lon), {"units": "degrees_east"}),
    }
    if isinstance(obj, xr.DataArray):
        res = one(obj)
    else:
        res = xr.Dataset({k: one(v) for k, v in obj.data_vars.items()}, attrs=dict(obj.attrs))
    res = res.assign_coords(coords)
    for key in ("grid_mapping_name", "healpix_nside", "healpix_order", "refinement_level"):
        res.attrs.pop(key, None)
    return res
