"""The built-in demo dataset: plausible km-scale weather over a real region, from a seed.

The demo world is a 4384 x 6880 grid of 0.01 deg cells (about 1 km) whose lower-left
corner is 15N 75E, rows going north and columns east (lat 15.005..58.835 N, lon
75.005..143.795 E): an HRCLDAS-like domain over China and its neighbours.
:class:`DemoRegion` is a window of it; fields use dims ``(time, lat, lon)`` with
ascending 1-D coordinates.

- static (:func:`demo_static`): the real land-sea mask and a synthetic orography
  (see ``demo_terrain``), the same for every seed;
- targets (:func:`demo_targets`): ``t2m`` (K) with climatology by latitude and season,
  lapse rate -6.5 K/km, a diurnal cycle (local solar time) much stronger over land and
  damped under cloud, k^-2.8 synoptic-to-km noise and rain cooling; ``u10``/``v10``
  (m s-1) from a zonal mean flow plus the gradient of a multi-scale streamfunction
  (velocity spectrum about k^-1.8), deflected along terrain contours where slopes are
  steep (blocking and channelling), slowed over land, faster over high ground; ``tp``
  (mm h-1) as a thresholded correlated field (fast small-scale cells plus a slow
  synoptic regime, a monsoon-like climatology, arid interior, afternoon convection over
  land and upslope orographic enhancement), exponential in the exceedance for a heavy
  tail, about 10-25 % wet (measured ~23 % in July, ~13 % in January over the whole
  domain). Everything is advected eastward and evolves smoothly hour to hour (see
  ``demo_noise``; the formulas are in ``demo_physics``);
- predictors (:func:`demo_predictors`): a coarse "forecast" on 0.25 deg cells (25 x 25
  pixel blocks aligned with the demo grid, plus two rings of cells around the region
  so that cell centres enclose it): block means of the truth plus smooth
  errors that grow with lead time, with ``msl`` from the geostrophic streamfunction
  and derived pressure-level fields ``t850``, ``u850``, ``v850``, ``z500``, ``q850``.

Determinism: every pixel is a pure function of (seed, global row, global column,
hour) computed with position-keyed hashes, fixed-order sums and exact integer box
sums, so the same window gives bit-identical values whatever the dask chunking, and a
sub-window of the full grid equals that window generated alone. Large regions are
lazy dask arrays computed chunk by chunk (writing the full grid with 2 dask threads
peaked at 0.8 GiB resident).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from kmscale import __version__
from kmscale.data.demo_noise import _key, fbm
from kmscale.data.demo_physics import (
    ADVECT,
    OCTAVES,
    S_ERROR,
    S_PSI,
    diurnal_amplitude,
    local_hour,
    season_phase,
    sigmoid,
    targets_block,
)
from kmscale.data.demo_terrain import (
    FULL_SHAPE,
    LAT0,
    LON0,
    M_PER_DEG,
    RES,
    static_fields,
)
from kmscale.data.variables import lookup
from kmscale.errors import ConfigError, GridError

BLOCK = 25  # predictor cell = 25 x 25 pixels = 0.25 deg
EPOCH = np.datetime64("2000-01-01T00:00:00", "ns")
TARGET_VARIABLES = ("t2m", "u10", "v10", "tp")
PREDICTOR_VARIABLES = ("t2m", "u10", "v10", "tp", "msl", "t850", "u850", "v850", "z500", "q850")
DEFAULT_CHUNK = 512  # px, spatial chunk of lazy fields

_G = 9.80665


@dataclass(frozen=True)
class DemoRegion:
    """A window of the demo grid: global pixel rows [row0, row0+ny), cols [col0, col0+nx)."""

    row0: int
    col0: int
    ny: int
    nx: int

    def __post_init__(self) -> None:
        H, W = FULL_SHAPE
        ok = 0 <= self.row0 and 0 <= self.col0 and self.ny >= 1 and self.nx >= 1
        if not ok or self.row0 + self.ny > H or self.col0 + self.nx > W:
            raise GridError(
                f"DemoRegion: expected a window inside the {H} x {W} demo grid, found rows "
                f"{self.row0}..{self.row0 + self.ny}, cols {self.col0}..{self.col0 + self.nx}"
            )

    @classmethod
    def full(cls) -> DemoRegion:
        """The whole 4384 x 6880 grid (15-58.84 N, 75-143.8 E)."""
        return cls(0, 0, *FULL_SHAPE)

    @classmethod
    def at(cls, lat0: float, lon0: float, ny: int, nx: int) -> DemoRegion:
        """The ny x nx window whose lower-left pixel contains (lat0 N, lon0 E)."""
        # the epsilon keeps 22.2 in row 720 despite (22.2 - 15) / 0.01 = 719.99999...
        row0 = int(np.floor((lat0 - LAT0) / RES + 1e-6))
        col0 = int(np.floor((lon0 - LON0) / RES + 1e-6))
        return cls(row0, col0, int(ny), int(nx))

    @classmethod
    def small(
        cls, ny: int = 256, nx: int = 256, lat0: float = 22.2, lon0: float = 119.7
    ) -> DemoRegion:
        """A window with its lower-left corner near (lat0, lon0); by default over Taiwan,
        its mountains and the strait. The corner moves south-west as needed for a large
        ``ny`` x ``nx`` to fit in the grid (GridError if it exceeds the full grid).
        """
        corner = cls.at(lat0, lon0, 1, 1)
        row0 = max(0, min(corner.row0, FULL_SHAPE[0] - int(ny)))
        col0 = max(0, min(corner.col0, FULL_SHAPE[1] - int(nx)))
        return cls(row0, col0, int(ny), int(nx))

    @classmethod
    def parse(cls, text: str) -> DemoRegion:
        """``small``, ``full`` or ``LAT0,LON0,NY,NX`` (lower-left corner in degrees, size in px)."""
        text = text.strip()
        if text == "small":
            return cls.small()
        if text == "full":
            return cls.full()
        parts = text.split(",")
        try:
            lat0, lon0, ny, nx = float(parts[0]), float(parts[1]), int(parts[2]), int(parts[3])
            if len(parts) != 4:
                raise ValueError
        except (ValueError, IndexError) as err:
            raise ConfigError(
                "--region: expected 'small', 'full' or LAT0,LON0,NY,NX (e.g. 30.5,100,512,512), "
                f"found {text!r}"
            ) from err
        return cls.at(lat0, lon0, ny, nx)

    @property
    def shape(self) -> tuple[int, int]:
        return self.ny, self.nx

    @property
    def lat(self) -> np.ndarray:
        """Pixel-centre latitudes, deg N, ascending (ny,)."""
        return LAT0 + RES * (np.arange(self.row0, self.row0 + self.ny) + 0.5)

    @property
    def lon(self) -> np.ndarray:
        """Pixel-centre longitudes, deg E, ascending (nx,)."""
        return LON0 + RES * (np.arange(self.col0, self.col0 + self.nx) + 0.5)

    def sub(self, rows: slice, cols: slice) -> DemoRegion:
        """The window ``[rows, cols]`` of this region (slices relative to it, step 1)."""
        r0, r1, _ = rows.indices(self.ny)
        c0, c1, _ = cols.indices(self.nx)
        return DemoRegion(self.row0 + r0, self.col0 + c0, r1 - r0, c1 - c0)


def demo_times(spec: str) -> pd.DatetimeIndex:
    """Hourly valid times from ``START/END`` (inclusive, e.g. ``2023-07-01T00/2023-07-02T23``)."""
    m = re.fullmatch(r"\s*([^/]+)/([^/]+)\s*", spec)
    try:
        if not m:
            raise ValueError
        times = pd.date_range(pd.Timestamp(m.group(1)), pd.Timestamp(m.group(2)), freq="h")
    except ValueError as err:
        raise ConfigError(
            f"--times: expected START/END like 2023-07-01T00/2023-07-02T23, found {spec!r}"
        ) from err
    if len(times) == 0:
        raise ConfigError(f"--times: expected END after START, found {spec!r}")
    return times


def _hours(times: Sequence) -> tuple[pd.DatetimeIndex, np.ndarray]:
    index = pd.DatetimeIndex(times)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    hours = (index.values.astype("datetime64[ns]") - EPOCH) / np.timedelta64(1, "h")
    return index, hours.astype(np.float64)


# ----------------------------------------------------------------------------- lazy assembly


def _chunk_edges(start: int, size: int, chunk: int) -> list[tuple[int, int]]:
    """Chunk bounds along one axis: ``chunk``-long pieces from ``start`` (the last shorter).

    Relative to the window, so dask chunks match a regularly chunked zarr store of it.
    """
    edges = list(range(start, start + size, chunk)) + [start + size]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _lazy_blocks(fn, r0: int, ny: int, c0: int, nx: int, chunk: int):
    """Dask array (..., ny, nx) assembled from ``fn(r0, r1, c0, c1)`` on aligned spatial chunks."""
    import dask
    import dask.array as da

    grid = [
        [
            da.from_delayed(
                dask.delayed(fn, pure=True)(ra, rb, ca, cb),
                shape=fn.shape(rb - ra, cb - ca),
                dtype=np.float32,
            )
            for ca, cb in _chunk_edges(c0, nx, chunk)
        ]
        for ra, rb in _chunk_edges(r0, ny, chunk)
    ]
    return da.block(grid)


class _TargetsFn:
    """Picklable callable computing the stacked targets of one spatial chunk."""

    def __init__(self, seed: int, hours: np.ndarray):
        self.seed, self.hours = int(seed), np.asarray(hours, dtype=np.float64)

    def shape(self, ny: int, nx: int) -> tuple[int, ...]:
        return (len(TARGET_VARIABLES), len(self.hours), ny, nx)

    def __call__(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return targets_block(self.seed, r0, r1, c0, c1, self.hours)


class _StaticFn:
    """Picklable callable computing (orography, land_sea_mask) of one spatial chunk."""

    def shape(self, ny: int, nx: int) -> tuple[int, ...]:
        return (2, ny, nx)

    def __call__(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        st = static_fields(r0, r1, c0, c1)
        return np.stack([st["orography"], st["land"].astype(np.float32)])


def _coords(region_lat: np.ndarray, region_lon: np.ndarray) -> dict[str, xr.DataArray]:
    return {
        "lat": xr.DataArray(
            region_lat,
            dims="lat",
            attrs={"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"},
        ),
        "lon": xr.DataArray(
            region_lon,
            dims="lon",
            attrs={"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"},
        ),
    }


def _global_attrs(region: DemoRegion, what: str, seed: int | None) -> dict[str, object]:
    attrs: dict[str, object] = {
        "Conventions": "CF-1.8",
        "title": f"kmscale synthetic demo {what}",
        "source": (
            f"kmscale {__version__} demo generator (kmscale.data.demo); synthetic, not observations"
        ),
        "demo_grid": (
            f"{FULL_SHAPE[0]} x {FULL_SHAPE[1]} cells of {RES} deg, lower-left corner {LAT0}N "
            f"{LON0}E"
        ),
        "demo_region": f"row0={region.row0} col0={region.col0} ny={region.ny} nx={region.nx}",
        "land_sea_mask_source": "global-land-mask package (GLOBE, 30 arc-seconds)",
    }
    if seed is not None:
        attrs["demo_seed"] = int(seed)
    return attrs


def _small(region: DemoRegion, chunk: int) -> bool:
    return region.ny <= chunk and region.nx <= chunk


def demo_static(region: DemoRegion, *, chunk: int = DEFAULT_CHUNK) -> xr.Dataset:
    """Static fields of ``region``: ``orography`` (m) and ``land_sea_mask`` (1 = land), (lat, lon).

    Lazy (dask, ``chunk`` x ``chunk``) when the region is larger than one chunk.
    """
    fn = _StaticFn()
    if _small(region, chunk):
        data = fn(region.row0, region.row0 + region.ny, region.col0, region.col0 + region.nx)
    else:
        data = _lazy_blocks(fn, region.row0, region.ny, region.col0, region.nx, chunk)
    out = xr.Dataset(
        coords=_coords(region.lat, region.lon), attrs=_global_attrs(region, "static fields", None)
    )
    for i, name in enumerate(("orography", "land_sea_mask")):
        out[name] = xr.DataArray(data[i], dims=("lat", "lon"), attrs=lookup(name).cf_attrs())
    return out


def demo_targets(
    region: DemoRegion, times: Sequence, seed: int = 0, *, chunk: int = DEFAULT_CHUNK
) -> xr.Dataset:
    """Km-scale truth on ``region`` at valid ``times``: t2m (K), u10, v10 (m s-1), tp (mm h-1).

    Args:
        region: the window of the demo grid.
        times: valid times (anything ``pd.DatetimeIndex`` accepts; UTC).
        seed: weather seed; the same seed, window and time give identical values.
        chunk: spatial chunk (px) of the lazy dask arrays for regions larger than it.

    Returns:
        Dataset of float32 (time, lat, lon) variables with CF attributes; numpy-backed
        for regions within one chunk, lazy dask (1 time x chunk x chunk) otherwise.
    """
    index, hours = _hours(times)
    if _small(region, chunk):
        data = _TargetsFn(seed, hours)(
            region.row0, region.row0 + region.ny, region.col0, region.col0 + region.nx
        )
    else:
        fns = [_TargetsFn(seed, hours[i : i + 1]) for i in range(len(hours))]
        import dask.array as da

        data = da.concatenate(
            [_lazy_blocks(f, region.row0, region.ny, region.col0, region.nx, chunk) for f in fns],
            axis=1,
        )
    out = xr.Dataset(
        coords={"time": index.rename("time"), **_coords(region.lat, region.lon)},
        attrs=_global_attrs(region, "km-scale targets", seed),
    )
    for i, name in enumerate(TARGET_VARIABLES):
        out[name] = xr.DataArray(
            data[i], dims=("time", "lat", "lon"), attrs=lookup(name).cf_attrs()
        )
    return out


# ----------------------------------------------------------------------------- predictors

# Forecast error scale of each base field once saturated (long lead), in its units;
# the error grows as 0.15 + 0.85 lead / (lead + 72 h): analysis error at lead 0, about
# half the saturated error after 3 days.
_ERROR_SCALE = {"t2m": 2.5, "u10": 3.0, "v10": 3.0, "msl": 500.0, "tp": 0.8}


def lead_error_factor(lead_hours: np.ndarray) -> np.ndarray:
    """Fraction of the saturated forecast error at a lead time (hours)."""
    lead = np.asarray(lead_hours, dtype=np.float64)
    return 0.15 + 0.85 * lead / (lead + 72.0)


def predictor_region(region: DemoRegion, halo_cells: int = 2) -> tuple[int, int, int, int]:
    """Block-aligned pixel window (row0, ny, col0, nx) of the 0.25 deg predictor cells.

    The cells overlapping ``region`` plus ``halo_cells`` rings around them, so that cell
    centres enclose the region (bicubic interpolation onto the target grid needs two).
    Cells may reach past the full grid; the generator is defined there too (the land
    mask has a 1 degree margin), so every cell is a block mean of 25 x 25 truth pixels.
    """
    b0r = region.row0 // BLOCK - halo_cells
    b0c = region.col0 // BLOCK - halo_cells
    b1r = (region.row0 + region.ny - 1) // BLOCK + 1 + halo_cells
    b1c = (region.col0 + region.nx - 1) // BLOCK + 1 + halo_cells
    return b0r * BLOCK, (b1r - b0r) * BLOCK, b0c * BLOCK, (b1c - b0c) * BLOCK


def _error_field(
    seed: int, name: str, init_hour: float, rows: np.ndarray, cols: np.ndarray, hour: float
) -> np.ndarray:
    """Smooth unit-variance error pattern (ny, nx) of one forecast (keyed by its init time)."""
    stream = S_ERROR + PREDICTOR_VARIABLES.index(name)
    forecast_seed = int(_key(seed, int(round(init_hour))))
    return fbm(
        forecast_seed,
        stream,
        rows,
        cols,
        np.array([hour]),
        scales=(50, 100, 200, 400, 800, 1600),
        hurst=0.7,
        tau=6.0,
        advect=ADVECT,
    )["value"][0]


def _saturation_q(t: xr.DataArray, rh: xr.DataArray, p: float) -> xr.DataArray:
    """Specific humidity (kg kg-1) at temperature t (K), relative humidity rh, pressure p (Pa)."""
    es = 611.2 * np.exp(17.67 * (t - 273.15) / (t - 29.65))  # Bolton (1980), Pa
    e = rh * es
    return 0.622 * e / (p - 0.378 * e)


def demo_predictors(
    region: DemoRegion,
    times: Sequence,
    lead_time_hours: int | Sequence[int],
    seed: int = 0,
    *,
    halo_cells: int = 2,
    chunk: int = 500,
) -> xr.Dataset:
    """Coarse "forecast" predictors at 0.25 deg over the cells covering ``region``.

    Block means (25 x 25 px) of the truth at the valid time, plus smooth errors keyed by
    the forecast's initial time that grow with lead time (:func:`lead_error_factor`);
    ``msl`` from the large-scale streamfunction (geostrophic, rho f psi); pressure-level
    fields derived from the erroneous surface forecast: ``t850`` (lapse rate back to
    850 hPa, damped diurnal cycle), ``u850``/``v850`` (surface wind without drag plus
    thermal-wind shear), ``z500`` (hypsometric thickness above the 1000 hPa height),
    ``q850`` (relative humidity from the rain rate times the saturation humidity).

    Args:
        region: target window; predictors cover every 0.25 deg cell that overlaps it,
            plus ``halo_cells`` rings of cells around them (see :func:`predictor_region`).
        times: valid times.
        lead_time_hours: one lead for all times or one per time (hours, >= 0).
        seed: weather seed (the truth's seed: predictors are forecasts of that truth).
        chunk: spatial chunk (px, a multiple of 25) of the underlying lazy truth.

    Returns:
        Dataset (time, lat, lon) float32 with coordinate ``lead_time`` (hours) along time.
    """
    index, hours = _hours(times)
    leads = _lead_hours(lead_time_hours, hours)
    if chunk % BLOCK:
        raise ConfigError(
            f"demo_predictors chunk: expected a multiple of {BLOCK} px, found {chunk}"
        )
    coarse, crow, ccol = _coarse_truth(region, seed, hours, halo_cells, chunk)
    lat, lon = coarse.lat.values, coarse.lon.values

    # smooth forecast errors on the coarse cells (cheap: computed eagerly)
    factor = lead_error_factor(leads)

    def error(name: str) -> xr.DataArray:
        fields = [
            factor[i]
            * _ERROR_SCALE[name]
            * _error_field(seed, name, hours[i] - leads[i], crow, ccol, hours[i])
            for i in range(len(hours))
        ]
        return xr.DataArray(np.stack(fields).astype(np.float32), dims=("time", "lat", "lon"))

    out = xr.Dataset(coords={"time": index.rename("time"), "lat": lat, "lon": lon})
    out["t2m"] = coarse.t2m + error("t2m")
    out["u10"] = coarse.u10 + error("u10")
    out["v10"] = coarse.v10 + error("v10")
    # rain: multiplicative (log-normal) error with mean 1, never negative
    ln_err = error("tp")
    sigma = xr.DataArray(factor * _ERROR_SCALE["tp"], dims="time")
    out["tp"] = coarse.tp * np.exp(ln_err - 0.5 * sigma**2)
    msl_true = _geostrophic_msl(seed, crow, ccol, hours, lat)
    out["msl"] = xr.DataArray(msl_true, dims=("time", "lat", "lon")) + error("msl")
    _add_pressure_levels(out, coarse, hours)
    for name in PREDICTOR_VARIABLES:
        out[name] = out[name].astype(np.float32).transpose("time", "lat", "lon")
        out[name].attrs = lookup(name).cf_attrs()
    out = out.assign_coords(
        lead_time=("time", leads, {"units": "hours", "long_name": "forecast lead time"})
    )
    out.lat.attrs = {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"}
    out.lon.attrs = {
        "units": "degrees_east",
        "standard_name": "longitude",
        "long_name": "longitude",
    }
    out.attrs = _global_attrs(region, "coarse forecast predictors (0.25 deg)", seed)
    out.attrs["predictor_grid"] = (
        f"0.25 deg cells = {BLOCK} x {BLOCK} px block means of the demo grid"
    )
    out.attrs["lead_time_error"] = "error = (0.15 + 0.85 L / (L + 72 h)) x saturated scale"
    return out


def _lead_hours(lead_time_hours: int | Sequence[int], hours: np.ndarray) -> np.ndarray:
    """One lead time (hours, int64) per valid time; a single value applies to all."""
    leads = np.asarray(lead_time_hours, dtype=np.int64)
    if leads.ndim == 0:
        leads = np.full(hours.shape, int(leads))
    if leads.shape != hours.shape or (leads < 0).any():
        raise ConfigError(
            f"lead_time_hours: expected one value >= 0 or one per time ({len(hours)}), found "
            f"{lead_time_hours!r}"
        )
    return leads


def _coarse_truth(
    region: DemoRegion, seed: int, hours: np.ndarray, halo_cells: int, chunk: int
) -> tuple[xr.Dataset, np.ndarray, np.ndarray]:
    """Block means (25 x 25 px) of the truth and static fields over the predictor cells.

    Returns the (time, lat, lon) dataset (targets, ``orography``, ``land`` fraction) and
    the fine-grid row and column of each cell's centre (px).
    """
    r0, ny, c0, nx = predictor_region(region, halo_cells)
    # the truth on the block-aligned window (may reach past the full grid: built directly)
    if ny <= chunk and nx <= chunk:
        data = _TargetsFn(seed, hours)(r0, r0 + ny, c0, c0 + nx)
        stat = _StaticFn()(r0, r0 + ny, c0, c0 + nx)
    else:
        import dask.array as da

        data = da.concatenate(
            [
                _lazy_blocks(_TargetsFn(seed, hours[i : i + 1]), r0, ny, c0, nx, chunk)
                for i in range(len(hours))
            ],
            axis=1,
        )
        stat = _lazy_blocks(_StaticFn(), r0, ny, c0, nx, chunk)
    nby, nbx = ny // BLOCK, nx // BLOCK
    lat = LAT0 + RES * BLOCK * (np.arange(r0 // BLOCK, r0 // BLOCK + nby) + 0.5)
    lon = LON0 + RES * BLOCK * (np.arange(c0 // BLOCK, c0 // BLOCK + nbx) + 0.5)
    fine = xr.Dataset(
        {name: (("time", "y", "x"), data[i]) for i, name in enumerate(TARGET_VARIABLES)}
        | {"orography": (("y", "x"), stat[0]), "land": (("y", "x"), stat[1])}
    )
    coarse = (
        fine.coarsen(y=BLOCK, x=BLOCK)
        .mean()
        .rename(y="lat", x="lon")
        .assign_coords(lat=lat, lon=lon)
    )
    crow = r0 + BLOCK * np.arange(nby) + (BLOCK - 1) / 2.0
    ccol = c0 + BLOCK * np.arange(nbx) + (BLOCK - 1) / 2.0
    return coarse, crow, ccol


def _geostrophic_msl(
    seed: int, crow: np.ndarray, ccol: np.ndarray, hours: np.ndarray, lat: np.ndarray
) -> np.ndarray:
    """True mean-sea-level pressure (time, lat, lon) float32 (Pa) on the coarse cells.

    Geostrophic pressure rho f psi of the large-scale streamfunction,
    psi [m2 s-1] = 3.5 m s-1 * dx * psi_px, plus a seasonal subtropical low.
    """
    psi = fbm(
        seed,
        S_PSI,
        crow,
        ccol,
        hours,
        scales=OCTAVES,
        hurst=0.4,
        tau=3.0,
        advect=ADVECT,
        outputs=("value",),
        streamfunction=True,
    )["value"]
    f_cor = 2 * 7.292e-5 * np.sin(np.deg2rad(lat))[None, :, None]
    msl = (
        101000.0
        - 600.0 * season_phase(hours)[:, None, None] * sigmoid((lat[None, :, None] - 35.0) / 5.0)
        + 1.2 * f_cor * 3.5 * RES * M_PER_DEG * psi
    )
    return msl.astype(np.float32)


def _add_pressure_levels(out: xr.Dataset, coarse: xr.Dataset, hours: np.ndarray) -> None:
    """Add t850, u850, v850, z500 and q850 derived from the surface forecast in ``out``."""
    lat2 = xr.DataArray(out.lat.values, dims="lat")
    lf, h = coarse.land, coarse.orography
    season = xr.DataArray(season_phase(hours), dims="time")
    lst = xr.DataArray(local_hour(hours, out.lon.values)[:, 0, :], dims=("time", "lon"))
    diurnal = 0.3 * diurnal_amplitude(lf, 0.5, h) * np.cos(2 * np.pi * (lst - 15.0) / 24.0)
    out["t850"] = out.t2m + 6.5e-3 * h - 9.75 - diurnal  # 850 hPa ~ 1500 m
    drag = 1.0 - 0.35 * lf
    # thermal-wind shear of the westerlies, stronger in winter
    shear = 4.0 * sigmoid((lat2 - 30.0) / 4.0) * (0.5 - 0.3 * season)
    out["u850"] = 1.4 * out.u10 / drag + shear
    out["v850"] = 1.4 * out.v10 / drag
    z1000 = (out.msl - 100000.0) / (1.2 * _G)  # m
    # hypsometric thickness 1000-500 hPa: R_d T ln2 / g = 20.3 m/K x T, layer mean T = t850 - 10 K
    out["z500"] = _G * (z1000 + 20.3 * (out.t850 - 10.0))
    rh = (0.45 + 0.5 * np.tanh(out.tp / 0.5)).clip(max=0.97)
    out["q850"] = _saturation_q(out.t850, rh, 85000.0)
