"""The shared real data of the tests and benchmarks (not part of the installed package).

Where the files are: the environment variable ``KMSCALE_DATA``, else the folder
``../shared/data`` beside this checkout (or beside the current directory). Tests reach it
through the ``real_data`` fixture (tests/conftest.py), which skips when it is absent;
benchmarks call :func:`data_dir` / :func:`data_file`, which raise.

Ready loaders give every test and benchmark the same canonical fields:

- :func:`era5_uk_t2m`: ERA5 2 m temperature over the UK, 0.25 deg, cropped to 32 x 48,
  hourly 2019-03-01..24, with the splits :data:`ERA5_UK_SPLITS`;
- :func:`era5_uk_predictors`: the same field block-averaged by 4 (1 deg, 8 x 12), the
  coarse predictor of the real downscaling benchmark;
- :func:`era5_uk_static`: UKV orography (rotated pole, ~1.5-4 km) averaged onto the
  target grid plus the land fraction from the 30" GLOBE mask;
- :func:`radolan_rw`: DWD RADOLAN RW hourly precipitation, 900 x 900 at 1 km, NaN
  outside the composite kept, with the composite footprint as the ``mask`` coordinate.

Everything is lazy (dask) until computed; the files are small enough to ``.load()``.
This module sits at the top of the repository, outside ``kmscale``: ``python -m pytest``
finds it through ``pythonpath`` in pyproject.toml, and benchmark scripts put the
repository root on ``sys.path``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from kmscale.data.grids import Grid, coarsen, grid_of, regrid
from kmscale.data.landmask import land_fraction
from kmscale.data.readers import open_dataset
from kmscale.errors import ConfigError

ENV_VAR = "KMSCALE_DATA"


def _candidates() -> list[Path]:
    env = os.environ.get(ENV_VAR)
    if env:
        return [Path(env)]
    project_root = Path(__file__).resolve().parent
    return [project_root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]


def data_dir(required: bool = True) -> Path | None:
    """Return the real-data folder, or None (``required=False``) when it is absent."""
    for path in _candidates():
        if path.is_dir():
            return path
    if required:
        tried = ", ".join(str(p) for p in _candidates())
        raise FileNotFoundError(
            f"kmscale real-data folder not found: expected a directory at {tried}; "
            f"set {ENV_VAR} to the folder holding era5_uk_t2m_201903/, static/, ..."
        )
    return None


def data_file(*parts: str) -> Path:
    """Path of one file inside the real-data folder; raises if the folder or file is absent."""
    root = data_dir(required=True)
    path = root.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"expected the real-data file {path}, found nothing there")
    return path


ERA5_UK_DIR = "era5_uk_t2m_201903"
ERA5_UK_NETCDF = "era5_uk_t2m_20190301-24.nc"
ERA5_UK_GRIB = "era5_uk_t2m_20190301-24.grib"
# Suggested split of the shared data README (inclusive day ranges). No test split: the
# 24 days are all used for training and model selection.
ERA5_UK_SPLITS: dict[str, tuple[str, str]] = {
    "train": ("2019-03-01", "2019-03-20"),
    "val": ("2019-03-21", "2019-03-24"),
}
ERA5_UK_SHAPE = (32, 48)  # lat x lon after cropping the 33 x 49 file
ERA5_UK_FACTOR = 4  # 0.25 deg -> 1 deg predictors

RADOLAN_FILE = ("radolan_rw_20221018", "radolan_RW_20221018_hourly_1km.nc")
# One day only, hours strongly correlated: a split in time (16 h / 8 h) is the honest one.
RADOLAN_SPLITS: dict[str, tuple[str, str]] = {
    "train": ("2022-10-18T00", "2022-10-18T15"),
    "val": ("2022-10-18T16", "2022-10-18T23"),
}
UKV_OROGRAPHY = ("static", "ukv_orography.nc")


def _select_split(
    ds: xr.Dataset, split: str | None, splits: dict[str, tuple[str, str]]
) -> xr.Dataset:
    if split is None:
        return ds
    if split not in splits:
        raise ConfigError(f"split: expected one of {sorted(splits)} or None, found {split!r}")
    start, end = splits[split]
    return ds.sel(time=slice(start, end))


def era5_uk_t2m(split: str | None = None, *, source: str = "netcdf") -> xr.Dataset:
    """ERA5 UK 2 m temperature target, 0.25 deg.

    Args:
        split: ``"train"`` (2019-03-01..20), ``"val"`` (21..24) or None (all 576 hours).
        source: ``"netcdf"`` or ``"grib"`` (identical fields; GRIB exercises cfgrib).

    Returns:
        Dataset with ``t2m`` (time, lat, lon) float32 in K, lat 50..57.75 N and lon
        -10..1.75 E ascending (32 x 48), lazy.
    """
    if source not in ("netcdf", "grib"):
        raise ConfigError(f"source: expected 'netcdf' or 'grib', found {source!r}")
    name = ERA5_UK_NETCDF if source == "netcdf" else ERA5_UK_GRIB
    ds = open_dataset(data_file(ERA5_UK_DIR, name), variables=["t2m"])
    ny, nx = ERA5_UK_SHAPE
    ds = ds.isel(lat=slice(0, ny), lon=slice(0, nx))  # drop 58N and 2E: 32 x 48 divides by 4 and 8
    return _select_split(ds, split, ERA5_UK_SPLITS)


def era5_uk_predictors(target: xr.Dataset, factor: int = ERA5_UK_FACTOR) -> xr.Dataset:
    """Coarse predictors: block means of the target (1 deg for ``factor=4``).

    Args:
        target: output of :func:`era5_uk_t2m` (any split).
        factor: block size.

    Returns:
        Dataset with the target's variables on the coarse grid (time, lat, lon), plus
        a ``lead_time`` coordinate (0 h: these are analyses, not forecasts).
    """
    pred = coarsen(target, factor)
    pred = pred.assign_coords(lead_time=("time", np.zeros(pred.sizes["time"])))
    pred["lead_time"].attrs = {"units": "hours", "long_name": "forecast lead time"}
    pred.attrs["kmscale_derived"] = f"{factor}x{factor} block mean of the target"
    return pred


def era5_uk_static(
    target_grid: Grid | xr.Dataset | None = None, *, method: str = "area"
) -> xr.Dataset:
    """Static fields on the target grid: UKV orography (m) and land fraction (1 = land).

    Args:
        target_grid: a Grid, or a dataset whose grid is used; the ERA5 UK 32 x 48 grid
            when None.
        method: ``"area"`` (mean of the ~1.5-4 km UKV cells in each target cell; the
            right choice for a 0.25 deg target) or ``"bilinear"``/``"bicubic"``/
            ``"nearest"`` (point values, for targets finer than UKV).

    Returns:
        Dataset with ``orography`` and ``land_sea_mask`` on the target dims.
    """
    if target_grid is None:
        target_grid = era5_uk_t2m().isel(time=0)
    grid = target_grid if isinstance(target_grid, Grid) else grid_of(target_grid)
    oro = open_dataset(data_file(*UKV_OROGRAPHY), variables=["orography"]).load()
    out = regrid(oro, grid, method)
    out["land_sea_mask"] = land_fraction(grid)
    out.attrs = {"kmscale_source": f"{data_file(*UKV_OROGRAPHY)} + global-land-mask 30 arcsec"}
    return out


def radolan_rw(split: str | None = None) -> xr.Dataset:
    """RADOLAN RW hourly precipitation, 2022-10-18, 900 x 900 at 1 km.

    Args:
        split: ``"train"`` (hours ending 00:50..15:50, 16 steps), ``"val"`` (16:50..23:50,
            8 steps) or None (all 24).

    Returns:
        Dataset with ``tp`` (time, y, x) in mm h-1 (NaN outside the composite), 2-D
        ``lat``/``lon`` coordinates, and ``mask`` (y, x) bool coordinate, True where the
        composite has data at every hour (about 84 % of the square).
    """
    ds = open_dataset(data_file(*RADOLAN_FILE), variables=["tp"])
    mask = ds["tp"].notnull().all("time").compute()
    mask.attrs = {"long_name": "inside the radar composite (values valid)", "flag_values": "0 1"}
    return _select_split(ds.assign_coords(mask=mask), split, RADOLAN_SPLITS)
