"""Inputs of ``kmscale score``: opening stores, checking forecasts against the truth, regions.

``check_inputs`` refuses what cannot be scored (missing variables or units, other
units than the truth's, other times or grids) with errors naming what was expected and
what was found; ``region_masks`` turns mask variables into boolean fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from kmscale.errors import AlignmentError, SchemaError, UnitsError
from kmscale.evaluation.base import LATLON_DIMS, MEMBER_DIM, check_aligned
from kmscale.evaluation.spectra import EARTH_RADIUS_KM, grid_spacing_km


def open_input(path: str | Path, *, kind: str | None) -> xr.Dataset:
    """Open a kmscale store (checking its kind), a plain zarr/NetCDF file of a user, or a
    directory/glob of HRCLDAS files (one per variable and hour, :mod:`kmscale.data.hrcldas`)."""
    from kmscale.data import hrcldas
    from kmscale.data.store import KIND_KEY, open_store

    if hrcldas.is_hrcldas(path):
        return hrcldas.open_hrcldas(path)
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: expected a zarr store or NetCDF file, found nothing")
    if path.is_dir():
        try:
            ds = (
                xr.open_zarr(path, consolidated=False)
                if (path / "zarr.json").exists()
                else xr.open_zarr(path)
            )
        except (ValueError, KeyError, OSError, FileNotFoundError) as err:
            raise SchemaError(
                f"{path}: expected a zarr store, found an unreadable directory ({err})"
            ) from err
        if KIND_KEY in ds.attrs:  # kmscale.sphere stores (kind "healpix") hold any fields
            return open_store(path, kind=None if ds.attrs[KIND_KEY] == "healpix" else kind)
        return ds
    from kmscale.data.readers import detect_engine

    engine = detect_engine(path)
    try:
        return xr.open_dataset(path, engine=engine, chunks={})
    except (ValueError, OSError) as err:
        raise SchemaError(
            f"{path}: expected a NetCDF file, found an unreadable one ({err})"
        ) from err


def netcdf_engine() -> str:
    """Engine for writing NetCDF-4: h5netcdf needs h5py; else the netCDF4 library."""
    import importlib.util

    return "h5netcdf" if importlib.util.find_spec("h5py") else "netcdf4"


def units_match(a: str, b: str) -> bool:
    from kmscale.data.variables import normalize_units

    na, nb = normalize_units(a), normalize_units(b)
    return (na or a.strip()) == (nb or b.strip())


def shared_variables(forecasts: Mapping[str, xr.Dataset], truth: xr.Dataset) -> list[str]:
    """Time-dependent truth variables every forecast holds (what ``score`` scores by default)."""
    names = [
        v
        for v in truth.data_vars
        if "time" in truth[v].dims and all(v in f.data_vars for f in forecasts.values())
    ]
    if not names:
        raise SchemaError(
            "score: expected variables shared by forecast(s) and truth, found truth "
            f"{list(truth.data_vars)} "
            f"and forecasts {[list(f.data_vars) for f in forecasts.values()]}"
        )
    return names


def check_inputs(
    forecasts: Mapping[str, xr.Dataset], truth: xr.Dataset, variables: Sequence[str] | None
) -> tuple[list[str], xr.Dataset, dict[str, str]]:
    """Check inputs, pick variables, select truth times; return (variables, truth, units).

    ``variables`` None means every variable the forecasts and the truth share.
    """
    if not forecasts:
        raise SchemaError("score: expected at least one forecast, found none")
    names = variables if variables is not None else shared_variables(forecasts, truth)
    units = {}
    for v in names:
        if v not in truth.data_vars:
            raise SchemaError(f"truth: expected variable {v!r}, found {list(truth.data_vars)}")
        tu = truth[v].attrs.get("units")
        if not tu:
            raise UnitsError(f"truth variable {v!r}: expected a 'units' attribute, found none")
        for name, f in forecasts.items():
            if v not in f.data_vars:
                raise SchemaError(
                    f"forecast {name!r}: expected variable {v!r}, found {list(f.data_vars)}"
                )
            da = f[v]
            if MEMBER_DIM not in da.dims:
                raise SchemaError(
                    f"forecast {name!r} variable {v!r}: expected a {MEMBER_DIM!r} dim, "
                    f"found dims {da.dims}"
                )
            if "time" not in da.dims:
                raise SchemaError(
                    f"forecast {name!r} variable {v!r}: expected a 'time' dim, found dims {da.dims}"
                )
            fu = da.attrs.get("units")
            if not fu:
                raise UnitsError(
                    f"forecast {name!r} variable {v!r}: expected a 'units' attribute, found none"
                )
            if not units_match(fu, tu):
                raise UnitsError(
                    f"forecast {name!r} variable {v!r}: expected units {tu!r} (the truth's), "
                    f"found {fu!r}"
                )
        units[v] = str(tu)
    first = next(iter(forecasts.values()))
    times = first["time"].values
    for name, f in forecasts.items():
        if not np.array_equal(f["time"].values, times):
            raise AlignmentError(
                f"forecast {name!r}: expected the same times as the first forecast, found "
                f"{f.sizes['time']} other times"
            )
    missing = np.setdiff1d(times, truth["time"].values)
    if missing.size:
        raise AlignmentError(
            f"truth: expected every forecast time, found {missing.size} missing "
            f"(first {missing[0]})"
        )
    truth = truth.sel(time=times)
    lead = None
    for name, f in forecasts.items():
        if "lead_time" in f.coords and f["lead_time"].dims == ("time",):
            if lead is not None and not np.array_equal(f["lead_time"].values, lead):
                raise AlignmentError(
                    f"forecast {name!r}: expected the same lead_time at each time as the "
                    "other forecasts, found different ones"
                )
            lead = f["lead_time"].values
    if lead is None and "lead_time" in truth.coords and truth["lead_time"].dims == ("time",):
        lead = truth["lead_time"].values
    if lead is not None:
        truth = truth.assign_coords(lead_time=("time", lead))
    for name, f in forecasts.items():
        for v in names:
            check_aligned(f[v], truth[v], where=f"forecast {name!r} variable {v!r}")
    return list(names), truth, units


def region_masks(
    truth: xr.Dataset,
    forecasts: Mapping[str, xr.Dataset],
    names: Sequence[str],
    ydim: str,
    xdim: str,
) -> dict[str, np.ndarray]:
    """``{name: (ny, nx) bool}`` of each mask variable (value > 0.5 = inside; NaN = outside)."""
    out = {}
    for name in names:
        src = (
            truth
            if name in truth.variables
            else next((f for f in forecasts.values() if name in f.variables), None)
        )
        if src is None:
            raise SchemaError(
                f"mask {name!r}: expected a variable of the truth (or forecast) store, "
                f"found {list(truth.variables)}"
            )
        m = src[name]
        if set(m.dims) != {ydim, xdim}:
            raise SchemaError(f"mask {name!r}: expected dims ({ydim}, {xdim}), found {m.dims}")
        vals = np.asarray(m.transpose(ydim, xdim).values)
        out[name] = np.nan_to_num(vals.astype(float), nan=0.0) > 0.5
    return out


def line_spacing_km(truth: xr.Dataset, ydim: str, xdim: str) -> float:
    """Grid spacing along the spectra's lines, km (lat-lon: at the mean latitude)."""
    if (ydim, xdim) == LATLON_DIMS:
        lon = truth["lon"].values.astype(float)
        return float(
            EARTH_RADIUS_KM
            * np.cos(np.deg2rad(truth["lat"].values.astype(float).mean()))
            * np.deg2rad(abs(np.median(np.diff(lon))))
        )
    return grid_spacing_km(truth, xdim)
