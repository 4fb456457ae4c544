"""Grids, block-mean coarsening and regridding of canonical datasets.

Three grid kinds cover the data kmscale meets:

- :class:`RegularLatLonGrid`: 1-D ascending ``lat``/``lon`` (ERA5, FuXi, CORDEX EUR-44 here);
- :class:`RotatedPoleGrid`: 1-D rotated ``y``/``x`` in degrees plus the CF
  ``rotated_latitude_longitude`` pole (UKV, EURO-CORDEX EUR-11); transformed exactly;
- :class:`ProjectedGrid`: ``y``/``x`` in metres (or bare indices) with 2-D ``lat``/``lon``
  coordinates (RADOLAN, Met Office radar, WRF, Stage IV). Rather than depend on pyproj
  for every CF projection, geographic points are located in such a grid by piecewise-
  linear interpolation of the grid indices over a triangulation of its own lat/lon
  (in a gnomonic plane about the grid centre, so the dateline is no special case).

Regridding (:func:`regrid`) maps every target point to fractional source indices and
then uses ``scipy.ndimage.map_coordinates`` (order 0/1/3 for nearest/bilinear/bicubic);
``area`` builds a sparse weight matrix (exact overlaps in sin(lat) x lon between regular
grids, area-weighted averaging of source cells falling in each target cell otherwise).
A target not covered by the source is a :class:`~kmscale.errors.GridError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from kmscale.data import projections
from kmscale.errors import GridError

METHODS = ("nearest", "bilinear", "bicubic", "area")
_ORDER = {"nearest": 0, "bilinear": 1, "bicubic": 3}
Regridder = Callable[[np.ndarray], np.ndarray]
"""``(..., sy, sx)`` array on the source grid -> ``(..., ty, tx)`` float32 on the target."""


# ---- spherical helpers ------------------------------------------------------------------
def _unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def _latlon(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.degrees(np.arcsin(np.clip(v[..., 2], -1, 1))), np.degrees(
        np.arctan2(v[..., 1], v[..., 0])
    )


def _edges(c: np.ndarray) -> np.ndarray:
    """Cell edges of 1-D ascending centres (midpoints, outer edges mirrored)."""
    mid = 0.5 * (c[1:] + c[:-1])
    first = c[0] - (mid[0] - c[0]) if c.size > 1 else c[0] - 0.5
    last = c[-1] + (c[-1] - mid[-1]) if c.size > 1 else c[-1] + 0.5
    return np.concatenate([[first], mid, [last]])


def _wrap_about(lon: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Longitudes brought within 180 degrees of the centre of ``axis`` (0..360 vs -180..180)."""
    mid = 0.5 * (float(axis[0]) + float(axis[-1]))
    return (np.asarray(lon, "float64") - mid + 180.0) % 360.0 + mid - 180.0


def _frac_index(coord: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Fractional index of ``values`` on an ascending 1-D coordinate; NaN outside half a cell."""
    idx = np.arange(coord.size, dtype="float64")
    e = _edges(coord)
    out = np.interp(values, coord, idx)
    below, above = values < coord[0], values > coord[-1]
    if coord.size > 1:
        out = np.where(below, (values - coord[0]) / (coord[1] - coord[0]), out)
        out = np.where(above, coord.size - 1 + (values - coord[-1]) / (coord[-1] - coord[-2]), out)
    return np.where((values < e[0] - 1e-9) | (values > e[-1] + 1e-9), np.nan, out)


# ---- grids -------------------------------------------------------------------------------
class Grid:
    """Common interface. ``dims`` names the 2-D field dims; ``shape`` is (ny, nx)."""

    dims: tuple[str, str]

    @property
    def shape(self) -> tuple[int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def latlon(self) -> tuple[np.ndarray, np.ndarray]:
        """2-D (ny, nx) geographic latitude and longitude of the cell centres, degrees."""
        raise NotImplementedError

    def locate(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractional (iy, ix) indices of geographic points; NaN where outside the grid."""
        raise NotImplementedError

    def coords(self) -> dict:
        """Coordinates to build a canonical dataset on this grid."""
        raise NotImplementedError

    def cell_weights(self) -> np.ndarray:
        """Relative cell areas (ny, nx), for area-weighted averaging."""
        lat, _ = self.latlon()
        return np.cos(np.radians(lat))


@dataclass(frozen=True, eq=False)
class RegularLatLonGrid(Grid):
    """Rectilinear lat-lon grid; ``lat``, ``lon`` 1-D ascending, degrees."""

    lat: np.ndarray
    lon: np.ndarray
    dims: tuple[str, str] = ("lat", "lon")

    @classmethod
    def from_bounds(
        cls, lat0: float, lat1: float, lon0: float, lon1: float, step: float
    ) -> RegularLatLonGrid:
        """Grid with centres lat0..lat1, lon0..lon1 (inclusive) every ``step`` degrees."""
        ny = int(round((lat1 - lat0) / step)) + 1
        nx = int(round((lon1 - lon0) / step)) + 1
        return cls(lat0 + step * np.arange(ny), lon0 + step * np.arange(nx))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.lat.size, self.lon.size)

    def latlon(self):
        return np.meshgrid(self.lat, self.lon, indexing="ij")

    def _wrap(self, lon: np.ndarray) -> np.ndarray:
        return _wrap_about(lon, self.lon)

    def locate(self, lat, lon):
        lon = self._wrap(np.asarray(lon, dtype="float64"))
        return _frac_index(self.lat, np.asarray(lat, dtype="float64")), _frac_index(self.lon, lon)

    def coords(self):
        return {
            "lat": ("lat", self.lat, {"units": "degrees_north", "standard_name": "latitude"}),
            "lon": ("lon", self.lon, {"units": "degrees_east", "standard_name": "longitude"}),
        }

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, RegularLatLonGrid)
            and self.shape == other.shape
            and np.allclose(self.lat, other.lat)
            and np.allclose(self.lon, other.lon)
        )

    def __repr__(self) -> str:
        return (
            f"RegularLatLonGrid({self.shape[0]}x{self.shape[1]}, lat "
            f"{self.lat[0]:g}..{self.lat[-1]:g}, lon {self.lon[0]:g}..{self.lon[-1]:g})"
        )


@dataclass(frozen=True, eq=False)
class RotatedPoleGrid(Grid):
    """CF ``rotated_latitude_longitude`` grid: 1-D rotated ``rlat``/``rlon`` (degrees).

    ``pole_lat``/``pole_lon`` are ``grid_north_pole_latitude/longitude``; the rotated
    origin lies at (90 - pole_lat, pole_lon - 180).
    """

    rlat: np.ndarray
    rlon: np.ndarray
    pole_lat: float
    pole_lon: float
    north_pole_grid_longitude: float = 0.0
    dims: tuple[str, str] = ("y", "x")

    @property
    def shape(self):
        return (self.rlat.size, self.rlon.size)

    def _axes(self) -> np.ndarray:
        z = _unit(np.float64(self.pole_lat), np.float64(self.pole_lon))
        x = _unit(np.float64(90.0 - self.pole_lat), np.float64(self.pole_lon - 180.0))
        return np.stack([x, np.cross(z, x), z])  # rows: x', y', z'

    def to_rotated(self, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        """Geographic -> rotated (rlat, rlon) degrees, rlon in the grid's own range."""
        v = _unit(np.asarray(lat, "float64"), np.asarray(lon, "float64")) @ self._axes().T
        rlat, rlon = _latlon(v)
        rlon = rlon - self.north_pole_grid_longitude
        return rlat, _wrap_about(rlon, self.rlon)

    def latlon(self):
        rlat, rlon = np.meshgrid(
            self.rlat, self.rlon + self.north_pole_grid_longitude, indexing="ij"
        )
        return _latlon(_unit(rlat, rlon) @ self._axes())

    def locate(self, lat, lon):
        rlat, rlon = self.to_rotated(lat, lon)
        return _frac_index(self.rlat, rlat), _frac_index(self.rlon, rlon)

    def coords(self):
        lat, lon = self.latlon()
        crs = xr.Variable(
            (),
            np.int32(0),
            {
                "grid_mapping_name": "rotated_latitude_longitude",
                "grid_north_pole_latitude": float(self.pole_lat),
                "grid_north_pole_longitude": float(self.pole_lon),
                "north_pole_grid_longitude": float(self.north_pole_grid_longitude),
            },
        )
        return {
            "y": ("y", self.rlat, {"units": "degrees", "standard_name": "grid_latitude"}),
            "x": ("x", self.rlon, {"units": "degrees", "standard_name": "grid_longitude"}),
            "lat": (
                ("y", "x"),
                lat.astype("float32"),
                {"units": "degrees_north", "standard_name": "latitude"},
            ),
            "lon": (
                ("y", "x"),
                lon.astype("float32"),
                {"units": "degrees_east", "standard_name": "longitude"},
            ),
            "crs": crs,
        }

    def __repr__(self):
        return (
            f"RotatedPoleGrid({self.shape[0]}x{self.shape[1]}, pole {self.pole_lat:g}N "
            f"{self.pole_lon:g}E, rlat {self.rlat[0]:g}..{self.rlat[-1]:g}, rlon "
            f"{self.rlon[0]:g}..{self.rlon[-1]:g})"
        )


@dataclass(frozen=True, eq=False)
class ProjectedGrid(Grid):
    """Projected (or curvilinear) grid: ``y``/``x`` (metres, or indices) with 2-D lat/lon.

    ``mapping`` holds the CF grid-mapping attributes when the file has them (kept for
    provenance); geographic lookups use the 2-D ``lat2d``/``lon2d`` arrays.
    """

    y: np.ndarray
    x: np.ndarray
    lat2d: np.ndarray
    lon2d: np.ndarray
    mapping: dict = field(default_factory=dict)
    dims: tuple[str, str] = ("y", "x")

    @property
    def shape(self):
        return self.lat2d.shape

    def latlon(self):
        return self.lat2d, self.lon2d

    def cell_weights(self):
        return np.ones(self.shape)  # projected cells of one size (equal-area enough at km scale)

    def _plane(self, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        """Gnomonic coordinates about the grid centre (NaN on the far hemisphere)."""
        cy, cx = self.shape[0] // 2, self.shape[1] // 2
        c = _unit(np.float64(self.lat2d[cy, cx]), np.float64(self.lon2d[cy, cx]))
        east = np.cross([0.0, 0.0, 1.0], c)
        east = (
            east / np.linalg.norm(east) if np.linalg.norm(east) > 1e-12 else np.array([1.0, 0, 0])
        )
        north = np.cross(c, east)
        v = _unit(np.asarray(lat, "float64"), np.asarray(lon, "float64"))
        d = v @ c
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d > 0, (v @ east) / d, np.nan), np.where(d > 0, (v @ north) / d, np.nan)

    def locate(self, lat, lon):
        from scipy.interpolate import LinearNDInterpolator

        ny, nx = self.shape
        stride = max(1, int(np.ceil(max(ny, nx) / 200)))
        iy = np.unique(np.r_[np.arange(0, ny, stride), ny - 1])
        ix = np.unique(np.r_[np.arange(0, nx, stride), nx - 1])
        sub_lat = self.lat2d[np.ix_(iy, ix)]
        sub_lon = self.lon2d[np.ix_(iy, ix)]
        px, py = self._plane(sub_lat, sub_lon)
        gy, gx = np.meshgrid(iy.astype("float64"), ix.astype("float64"), indexing="ij")
        interp = LinearNDInterpolator(
            np.column_stack([px.ravel(), py.ravel()]), np.column_stack([gy.ravel(), gx.ravel()])
        )
        tx, ty = self._plane(lat, lon)
        out = interp(np.column_stack([np.ravel(tx), np.ravel(ty)]))
        shape = np.shape(lat)
        return out[:, 0].reshape(shape), out[:, 1].reshape(shape)

    def coords(self):
        out = {
            "y": ("y", self.y, {"units": "m", "standard_name": "projection_y_coordinate"}),
            "x": ("x", self.x, {"units": "m", "standard_name": "projection_x_coordinate"}),
            "lat": (
                ("y", "x"),
                self.lat2d,
                {"units": "degrees_north", "standard_name": "latitude"},
            ),
            "lon": (
                ("y", "x"),
                self.lon2d,
                {"units": "degrees_east", "standard_name": "longitude"},
            ),
        }
        if self.mapping:
            out["crs"] = xr.Variable((), np.int32(0), dict(self.mapping))
        return out

    def __repr__(self):
        kind = self.mapping.get("grid_mapping_name", "curvilinear")
        return f"ProjectedGrid({self.shape[0]}x{self.shape[1]}, {kind})"


def grid_of(ds: xr.Dataset | xr.DataArray) -> Grid:
    """The grid of a canonical dataset.

    Raises:
        GridError: no recognisable horizontal grid.
    """
    where = ds.attrs.get("kmscale_source", "<dataset>")
    if "lat" in ds.dims and "lon" in ds.dims:
        return RegularLatLonGrid(
            np.asarray(ds["lat"].values, "float64"), np.asarray(ds["lon"].values, "float64")
        )
    if "y" in ds.dims and "x" in ds.dims:
        mapping = dict(ds["crs"].attrs) if "crs" in ds.coords else {}
        if mapping.get("grid_mapping_name") == "rotated_latitude_longitude":
            return RotatedPoleGrid(
                np.asarray(ds["y"].values, "float64"),
                np.asarray(ds["x"].values, "float64"),
                float(mapping["grid_north_pole_latitude"]),
                float(mapping["grid_north_pole_longitude"]),
                float(mapping.get("north_pole_grid_longitude", 0.0)),
            )
        if "lat" in ds.coords and ds["lat"].ndim == 2:
            ny, nx = ds.sizes["y"], ds.sizes["x"]
            y = (
                np.asarray(ds["y"].values, "float64")
                if "y" in ds.coords
                else np.arange(ny, dtype="float64")
            )
            x = (
                np.asarray(ds["x"].values, "float64")
                if "x" in ds.coords
                else np.arange(nx, dtype="float64")
            )
            lat = np.asarray(ds["lat"].transpose("y", "x").values, "float64")
            lon = np.asarray(ds["lon"].transpose("y", "x").values, "float64")
            return ProjectedGrid(y, x, lat, lon, mapping)
        if (
            mapping.get("grid_mapping_name") in projections.SUPPORTED
            and "x" in ds.coords
            and "y" in ds.coords
        ):
            y = np.asarray(ds["y"].values, "float64")
            x = np.asarray(ds["x"].values, "float64")
            xx, yy = np.meshgrid(x, y)
            try:
                lat, lon = projections.inverse(xx, yy, mapping)
            except GridError as err:
                raise GridError(f"{where}: {err}") from err
            return ProjectedGrid(y, x, lat, lon, mapping)
        raise GridError(
            f"{where}: expected 2-D lat/lon coordinates, a rotated-pole grid mapping or one of the "
            f"projections {projections.SUPPORTED} on the (y, x) grid, found coordinates "
            f"{sorted(map(str, ds.coords))} and grid mapping {mapping.get('grid_mapping_name')!r}"
        )
    raise GridError(f"{where}: expected (lat, lon) or (y, x) dims, found {tuple(ds.dims)}")


# ---- coarsening --------------------------------------------------------------------------
def coarsen(
    ds: xr.Dataset, factor: int, *, nan_policy: str = "any", trim: bool = False
) -> xr.Dataset:
    """Block mean of ``factor`` x ``factor`` cells (coordinates become block centres).

    Args:
        ds: canonical dataset; its spatial shape must be divisible by ``factor``
            (crop first: e.g. ERA5 UK 33 x 49 -> 32 x 48).
        factor: integer block size.
        nan_policy: ``"any"`` makes a block NaN if any cell is NaN (keeps masks
            conservative); ``"all"`` averages the valid cells and is NaN only when all are.
        trim: drop the trailing rows/columns that do not fill a block (RADOLAN 900 ->
            896 -> 112 for ``factor=8``) instead of raising.

    Raises:
        GridError: shape not divisible by ``factor`` (and ``trim`` is False).
    """
    if nan_policy not in ("any", "all"):
        raise ValueError(f"nan_policy: expected 'any' or 'all', found {nan_policy!r}")
    dims = grid_of(ds).dims
    where = ds.attrs.get("kmscale_source", "<dataset>")
    if trim:
        ds = ds.isel({d: slice(0, ds.sizes[d] - ds.sizes[d] % factor) for d in dims})
    for d in dims:
        if ds.sizes[d] % factor:
            raise GridError(
                f"{where}: coarsening by {factor}: expected {d} size divisible by {factor}, "
                f"found {ds.sizes[d]} (crop the field first, or pass trim=True)"
            )
    reducer = np.nanmean if nan_policy == "all" else np.mean
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks are NaN by design
        out = ds.coarsen({d: factor for d in dims}, boundary="exact", coord_func="mean").reduce(
            reducer
        )
    for name, var in ds.variables.items():
        if name in out.variables:
            if var.dtype == bool:  # masks: a block is valid only if all its cells are
                out = out.assign_coords({name: out[name] > 1 - 1e-6}) if name in out.coords else out
            out[name].attrs = dict(var.attrs)
    out.attrs = dict(ds.attrs)
    return out


# ---- regridding --------------------------------------------------------------------------
def _coverage_error(source: Grid, target: Grid, bad: np.ndarray, where: str) -> GridError:
    lat, lon = target.latlon()
    return GridError(
        f"{where}: expected the source grid {source!r} to cover the target grid {target!r}, "
        f"found {int(bad.sum())} of {bad.size} target points outside it "
        f"(first at lat {float(lat[bad][0]):.3f}, lon {float(lon[bad][0]):.3f})"
    )


def _area_matrix(source: Grid, target: Grid, where: str):
    """Sparse (target cells x source cells) averaging weights, rows summing to 1."""
    from scipy import sparse

    ny, nx = target.shape
    if isinstance(source, RegularLatLonGrid) and isinstance(target, RegularLatLonGrid):
        # exact overlaps: latitude in sin(lat) (equal-area), longitude in degrees
        def overlap(src_c, tgt_c, fn):
            se, te = fn(_edges(src_c)), fn(_edges(tgt_c))
            lo = np.maximum(te[:-1, None], se[None, :-1])
            hi = np.minimum(te[1:, None], se[None, 1:])
            return np.clip(hi - lo, 0, None)

        sin = lambda d: np.sin(np.radians(np.clip(d, -90, 90)))  # noqa: E731
        wlat = overlap(source.lat, target.lat, sin)
        lon_t = source._wrap(target.lon)
        wlon = overlap(source.lon, lon_t, lambda d: d)
        full_lat = np.diff(sin(_edges(target.lat)))
        full_lon = np.diff(_edges(lon_t))
        cov = np.outer(wlat.sum(1) / full_lat, wlon.sum(1) / full_lon)
        if (cov < 1 - 1e-6).any():
            raise _coverage_error(source, target, cov < 1 - 1e-6, where)
        w = sparse.kron(sparse.csr_matrix(wlat), sparse.csr_matrix(wlon)).tocsr()
    else:
        slat, slon = source.latlon()
        ty, tx = target.locate(slat.ravel(), slon.ravel())
        ok = np.isfinite(ty) & np.isfinite(tx)
        iy = np.rint(ty[ok]).astype(int)
        ix = np.rint(tx[ok]).astype(int)
        inside = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
        rows = (iy * nx + ix)[inside]
        cols = np.flatnonzero(ok)[inside]
        vals = source.cell_weights().ravel()[cols]
        w = sparse.csr_matrix((vals, (rows, cols)), shape=(ny * nx, slat.size))
        counts = np.bincount(rows, minlength=ny * nx).reshape(ny, nx)
        if (counts == 0).any():
            # either outside the source, or the source is not finer than the target
            tlat, tlon = target.latlon()
            sy, sx = source.locate(tlat, tlon)
            outside = ~(np.isfinite(sy) & np.isfinite(sx))
            if outside.any():
                raise _coverage_error(source, target, outside, where)
            raise GridError(
                f"{where}: area regridding: expected a source finer than the target, found "
                f"{int((counts == 0).sum())} target cells holding no source cell (use bilinear)"
            )
    rowsum = np.asarray(w.sum(axis=1)).ravel()
    return sparse.diags(1.0 / rowsum) @ w


def regrid(
    ds: xr.Dataset, target: Grid, method: str = "bilinear", *, where: str | None = None
) -> xr.Dataset:
    """Interpolate every variable of ``ds`` onto ``target``.

    Args:
        ds: canonical dataset on any supported grid; leading dims (time, member) kept.
        target: the grid to produce.
        method: ``nearest``, ``bilinear``, ``bicubic`` or ``area`` (conservative mean,
            for a source finer than the target, or exact overlaps between lat-lon grids).
            NaNs stay NaN: an interpolated point touching a NaN is NaN; an area mean is
            NaN when less than half its weight is valid.

    Returns:
        dataset on ``target`` (float32), attributes kept.

    Raises:
        GridError: the source does not cover the target, or unknown method.
    """
    if method not in METHODS:
        raise GridError(f"regrid: expected method in {METHODS}, found {method!r}")
    where = where or ds.attrs.get("kmscale_source", "<dataset>")
    source = grid_of(ds)
    if method == "area":
        apply = _area_regridder(source, target, where)
    else:
        apply = _point_regridder(source, target, method, where)
    return _regrid_variables(ds, apply, source, target)


def _area_regridder(source: Grid, target: Grid, where: str) -> Regridder:
    """Conservative area means; NaN where less than half a target cell's weight is valid."""
    matrix = _area_matrix(source, target, where)
    ty, tx = target.shape

    def apply(a: np.ndarray) -> np.ndarray:
        flat = a.reshape(-1, a.shape[-2] * a.shape[-1]).astype("float64")
        valid = np.isfinite(flat)
        num = (matrix @ np.where(valid, flat, 0.0).T).T
        den = (matrix @ valid.T.astype("float64")).T
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(den >= 0.5, num / den, np.nan)
        return out.reshape(*a.shape[:-2], ty, tx).astype("float32")

    return apply


def _point_regridder(source: Grid, target: Grid, method: str, where: str) -> Regridder:
    """Spline interpolation of order ``_ORDER[method]`` at the target cell centres; a point
    whose stencil touches a NaN is NaN.

    Raises:
        GridError: a target point outside the source grid.
    """
    from scipy import ndimage

    tlat, tlon = target.latlon()
    iy, ix = source.locate(tlat, tlon)
    bad = ~(np.isfinite(iy) & np.isfinite(ix))
    if bad.any():
        raise _coverage_error(source, target, bad, where)
    sy, sx = source.shape
    ty, tx = target.shape
    coords = np.stack([np.clip(iy, 0, sy - 1), np.clip(ix, 0, sx - 1)])
    order = _ORDER[method]

    def apply(a: np.ndarray) -> np.ndarray:
        flat = a.reshape(-1, a.shape[-2], a.shape[-1])
        out = np.empty((flat.shape[0], ty, tx), dtype="float32")
        for k, field2d in enumerate(flat):
            nan = ~np.isfinite(field2d)
            filled = np.where(nan, 0.0, field2d).astype("float64")
            out[k] = ndimage.map_coordinates(filled, coords, order=order, mode="nearest")
            if nan.any():
                touched = ndimage.map_coordinates(
                    nan.astype("float64"), coords, order=min(order, 1), mode="nearest"
                )
                out[k][touched > 1e-6] = np.nan
        return out.reshape(*a.shape[:-2], ty, tx)

    return apply


def _regrid_variables(ds: xr.Dataset, apply: Regridder, source: Grid, target: Grid) -> xr.Dataset:
    """``apply`` to every variable of ``ds`` on the source grid (others kept as they are),
    lazily for dask-backed variables; the target's coordinates and grid mapping set."""
    sdims, tdims = source.dims, target.dims
    ty, tx = target.shape
    tmp = {d: f"_src_{d}" for d in sdims}
    out_vars = {}
    for name, da in ds.data_vars.items():
        if not set(sdims) <= set(da.dims):
            out_vars[name] = da
            continue
        lead = [d for d in da.dims if d not in sdims]
        da = da.transpose(*lead, *sdims).rename(tmp)
        if da.chunks is not None:
            da = da.chunk({tmp[d]: -1 for d in sdims})
        res = xr.apply_ufunc(
            apply,
            da,
            input_core_dims=[[tmp[d] for d in sdims]],
            output_core_dims=[list(tdims)],
            dask="parallelized",
            output_dtypes=[np.float32],
            dask_gufunc_kwargs={"output_sizes": dict(zip(tdims, (ty, tx), strict=True))},
            keep_attrs=True,
        )
        out_vars[name] = res
    drop = [c for c in ds.coords if set(ds[c].dims) & set(sdims) or c == "crs"]
    base = ds.drop_vars(drop)
    out = xr.Dataset(
        {
            k: v.drop_vars([c for c in v.coords if c in drop], errors="ignore")
            for k, v in out_vars.items()
        },
        coords={k: v for k, v in base.coords.items()},
        attrs=dict(ds.attrs),
    )
    out = out.assign_coords(target.coords())
    for name in out.data_vars:
        if "crs" in out.coords:
            out[name].attrs["grid_mapping"] = "crs"
        else:
            out[name].attrs.pop("grid_mapping", None)
    return out
