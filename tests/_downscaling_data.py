"""Tiny synthetic downscaling data shared by the conditioning/bundle/recipe/pipeline tests.

A 16 x 24 target at 0.25 deg (t2m with a diurnal cycle, a lapse-rate imprint of a
Gaussian hill and small-scale noise), its 4 x 4 block means as the 1-deg predictor,
and static orography + land-sea mask on the target grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr


def synthetic(n: int = 48, H: int = 16, W: int = 24, seed: int = 0, lead: float | None = 0.0):
    rng = np.random.default_rng(seed)
    lat = 50 + 0.25 * np.arange(H)
    lon = -5 + 0.25 * np.arange(W)
    time = pd.date_range("2019-03-01", periods=n, freq="h").values
    oro = (500 * np.exp(-((lat[:, None] - 52) ** 2 + (lon[None, :] + 3) ** 2) / 2)).astype(
        np.float32
    )
    base = (
        280
        + 3 * np.sin(2 * np.pi * np.arange(n) / 24)[:, None, None]
        + 0.5 * rng.standard_normal((n, 1, 1))
    )
    t2m = (base - 0.0065 * oro[None] + 0.3 * rng.standard_normal((n, H, W))).astype(np.float32)
    attrs = {"units": "K", "standard_name": "air_temperature", "long_name": "2 m temperature"}
    targets = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t2m, attrs)}, coords={"time": time, "lat": lat, "lon": lon}
    )
    coarse = targets.coarsen(lat=4, lon=4).mean()
    coarse["t2m"].attrs = dict(attrs)
    if lead is not None:
        coarse = coarse.assign_coords(lead_time=("time", np.full(n, lead), {"units": "hours"}))
    static = xr.Dataset(
        {
            "orography": (("lat", "lon"), oro, {"units": "m", "standard_name": "surface_altitude"}),
            "land_sea_mask": (
                ("lat", "lon"),
                (oro > 50).astype(np.float32),
                {"units": "1", "standard_name": "land_binary_mask"},
            ),
        },
        coords={"lat": lat, "lon": lon},
    )
    return targets, coarse, static


def write_files(folder: Path, **kwargs) -> dict[str, Path]:
    """The synthetic data as NetCDF files (what recipes read from their config)."""
    targets, coarse, static = synthetic(**kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "targets": folder / "targets.nc",
        "predictors": folder / "predictors.nc",
        "static": folder / "static.nc",
    }
    targets.to_netcdf(paths["targets"], engine="netcdf4")
    coarse.to_netcdf(paths["predictors"], engine="netcdf4")
    static.to_netcdf(paths["static"], engine="netcdf4")
    return paths
