"""kmscale's one canonical xarray form, and :func:`canonicalize`, which puts a raw dataset in it.

Canonical form (see ``docs`` in ``/work/shared`` and the cross-team conventions):

- data variables carry canonical names and units from :mod:`kmscale.data.variables`
  with CF attributes (``units``, ``standard_name``, ``long_name``, plus ``source_name``,
  the name in the file); unknown variables are dropped;
- dims are ``(time, [member], lat, lon)`` on regular lat-lon grids (1-D ascending
  ``lat``/``lon``) or ``(time, [member], y, x)`` on rotated/projected grids (1-D
  ascending ``y``/``x`` in degrees for rotated poles, metres for projections, and 2-D
  ``lat``/``lon`` coordinates when the file has them);
- ``time`` is the valid time (strictly increasing, no duplicates); forecasts carry a
  ``lead_time`` coordinate (hours) along ``time``;
- pressure-level fields are split per level (``t`` on 850 hPa -> ``t850``);
- a CF grid mapping, when present, is kept as the scalar coordinate ``crs`` and every
  data variable's ``grid_mapping`` attribute points to it;
- static fields (orography, land-sea mask) have no ``time`` dim.

:mod:`kmscale.data.readers` opens files (and :mod:`kmscale.data.hrcldas` HRCLDAS
directories) through :func:`canonicalize`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from kmscale.data import ranges
from kmscale.data import units as unit_conv
from kmscale.data import variables as cat
from kmscale.errors import AlignmentError, CoordinateError, SchemaError

SOURCE_ATTR = "kmscale_source"
NETCDF_DEFAULT_FILL_THRESHOLD = 9.9e36  # netCDF default float fill is 9.969209968386869e36
# A precipitation amount (m, mm, kg m-2) whose file states no accumulation period is read
# as an hourly amount: ERA5 ``tp``, Stage IV 1 h and RADOLAN RW are; other periods come
# from the field's attributes or the ``accumulation_period`` argument (see units.py).
FILE_ACCUMULATION_PERIOD = "1h"

_TIME_NAMES = ("time", "valid_time", "Time", "t", "XTIME")
_LAT_NAMES = ("lat", "latitude", "nav_lat", "XLAT", "XLAT_M", "LAT")
_LON_NAMES = ("lon", "longitude", "nav_lon", "XLONG", "XLONG_M", "LON")
_ROTATED_Y = ("rlat", "grid_latitude")
_ROTATED_X = ("rlon", "grid_longitude")
_PROJ_Y = ("y", "projection_y_coordinate", "south_north", "yc")
_PROJ_X = ("x", "projection_x_coordinate", "west_east", "xc")
_LEVEL_DIMS = ("isobaricInhPa", "pressure_level", "level", "plev", "lev")
_MEMBER_DIMS = ("number", "member", "realization", "ensemble")


# ---- canonicalisation -----------------------------------------------------------------
def _first(names: Sequence[str], pool) -> str | None:
    return next((n for n in names if n in pool), None)


def _canonical_time(ds: xr.Dataset, where: str) -> xr.Dataset:
    """Make ``time`` the valid-time dim, adding ``lead_time`` (hours) for forecasts."""
    # cfgrib: time = reference time, step = lead, valid_time = time + step.
    if "step" in ds.dims and "time" in ds.dims:
        ds = ds.stack(_sample=("time", "step"))
        valid = ds["valid_time"].values
        lead = ds["step"].values
        ds = ds.drop_vars(["_sample", "time", "step", "valid_time"], errors="ignore")
        ds = ds.rename({"_sample": "time"}).assign_coords(time=valid, lead_time=("time", lead))
    elif "step" in ds.dims:
        # one forecast: scalar reference time, a step dim, valid_time along step
        ds = ds.drop_vars([n for n in ("time",) if n in ds.variables and ds[n].ndim == 0])
        ds = ds.swap_dims({"step": "valid_time"}).rename({"valid_time": "time"})
        ds = ds.assign_coords(lead_time=("time", ds["step"].values)).drop_vars(["step"])
    elif "valid_time" in ds.coords and "time" in ds.dims and ds["valid_time"].dims == ("time",):
        step = ds.coords.get("step")
        ds = ds.assign_coords(time=ds["valid_time"].values).drop_vars("valid_time")
        if (
            step is not None
            and step.ndim == 0
            and np.asarray(step.values).astype("timedelta64[ns]") != np.timedelta64(0, "ns")
        ):
            ds = ds.assign_coords(lead_time=("time", np.repeat(step.values, ds.sizes["time"])))
    elif "valid_time" in ds.coords and ds["valid_time"].ndim == 0 and "time" not in ds.dims:
        # one GRIB message: the valid time (not the reference time) is what pairs with targets
        step = ds.coords.get("step")
        ds = ds.drop_vars("time", errors="ignore").rename({"valid_time": "time"})
        if (
            step is not None
            and step.ndim == 0
            and np.asarray(step.values).astype("timedelta64[ns]") != np.timedelta64(0, "ns")
        ):
            ds = ds.expand_dims("time").assign_coords(lead_time=("time", [step.values]))
    # WRF: Time dim with a Times character variable.
    if "Time" in ds.dims and "Times" in ds.variables:
        stamps = [t.decode() if isinstance(t, bytes) else str(t) for t in ds["Times"].values]
        ds = ds.drop_vars("Times").rename({"Time": "time"})
        ds = ds.assign_coords(time=pd.to_datetime(stamps, format="%Y-%m-%d_%H:%M:%S").values)
    name = _first(_TIME_NAMES, ds.dims)
    if name and name != "time":
        if "time" in ds.variables:
            ds = ds.drop_vars("time")
        ds = ds.rename({name: "time"})
    for extra in ("step", "valid_time", "forecast_period", *_INIT_NAMES):
        if extra in ds.coords and "time" not in ds[extra].dims:
            ds = ds.drop_vars(extra)
    if "lead_time" in ds.coords and "time" in ds.dims:
        lead = ds["lead_time"].values
        if np.issubdtype(lead.dtype, np.timedelta64):
            lead = lead / np.timedelta64(1, "h")
        lead = np.broadcast_to(np.asarray(lead, dtype="float64"), (ds.sizes["time"],))
        ds = ds.drop_vars("lead_time").assign_coords(lead_time=("time", lead.copy()))
        ds["lead_time"].attrs = {"units": "hours", "long_name": "forecast lead time"}
    if "time" in ds.coords and ds["time"].dtype == object:
        # cftime values: a model calendar (360_day, noleap) that pandas/numpy cannot pair
        # with observations; converting it would invent or drop days, so the user decides
        cal = (
            getattr(ds["time"].values.ravel()[0], "calendar", "non-standard")
            if ds["time"].size
            else "?"
        )
        raise CoordinateError(
            f"{where}: coordinate 'time': expected a standard (proleptic Gregorian) calendar, "
            f"found {cal!r} (convert it first, e.g. ds.convert_calendar('standard', "
            "align_on='date'))"
        )
    _check_lead_consistency(ds, where)
    if "time" in ds.dims:
        ds = _check_time(ds, where)
    return ds


_INIT_NAMES = ("init_time", "forecast_reference_time", "reference_time", "analysis_time")


def _check_lead_consistency(ds: xr.Dataset, where: str) -> None:
    """Where a file gives initialisation, lead and valid times, valid = init + lead must hold."""
    if "lead_time" not in ds.coords or "time" not in ds.dims:
        return
    init = next((ds[n] for n in _INIT_NAMES if n in ds.coords and ds[n].dims == ("time",)), None)
    if init is None:
        return
    lead = pd.to_timedelta(np.asarray(ds["lead_time"].values, "float64"), unit="h")
    expected = pd.DatetimeIndex(init.values) + lead
    bad = np.flatnonzero(expected.values != ds["time"].values)
    if bad.size:
        i = int(bad[0])
        raise AlignmentError(
            f"{where}: expected valid time = {init.name} + lead_time, found {bad.size} misaligned "
            f"steps (first: {pd.Timestamp(init.values[i])} + {float(ds['lead_time'].values[i]):g} "
            f"h != {pd.Timestamp(ds['time'].values[i])})"
        )


def _check_time(ds: xr.Dataset, where: str) -> xr.Dataset:
    """Valid times strictly increasing; forecasts (``lead_time``) may repeat a valid time
    for different leads, so there the (time, lead_time) pairs must be unique and are sorted."""
    if "lead_time" not in ds.coords or ds["lead_time"].dims != ("time",):
        _check_axis(ds["time"].values, "time", where, allow_descending=False)
        return ds
    keys = pd.MultiIndex.from_arrays([ds["time"].values, ds["lead_time"].values])
    if keys.has_duplicates:
        dup = keys[keys.duplicated()][:3].tolist()
        raise CoordinateError(
            f"{where}: coordinate 'time': expected unique (valid time, lead time) pairs, found "
            f"duplicates {dup}"
        )
    if pd.isnull(ds["time"].values).any():
        raise CoordinateError(f"{where}: coordinate 'time': expected valid times, found NaT")
    order = np.lexsort((ds["lead_time"].values, ds["time"].values))
    return ds if (order == np.arange(order.size)).all() else ds.isel(time=order)


def _check_axis(values: np.ndarray, name: str, where: str, allow_descending: bool = True) -> bool:
    """Check a 1-D coordinate; return True when it must be flipped (strictly descending)."""
    if values.size < 2:
        return False
    if pd.isnull(values).any():
        raise CoordinateError(
            f"{where}: coordinate {name!r}: expected finite values, found NaN/NaT"
        )
    diffs = np.diff(values)
    zero = np.zeros((), dtype=diffs.dtype)
    if (diffs == zero).any():
        dup = values[1:][diffs == zero][:3]
        raise CoordinateError(
            f"{where}: coordinate {name!r}: expected unique values, found duplicates {list(dup)}"
        )
    if (diffs > zero).all():
        return False
    if allow_descending and (diffs < zero).all():
        return True
    order = "increasing" if not allow_descending else "monotonic (increasing or decreasing)"
    bad = int(np.argmax(diffs < zero) if (diffs > zero).any() else 0)
    raise CoordinateError(
        f"{where}: coordinate {name!r}: expected strictly {order} values, found a reversal at "
        f"index {bad + 1} ({values[bad]} then {values[bad + 1]})"
    )


def _canonical_space(ds: xr.Dataset, where: str) -> xr.Dataset:
    """Rename spatial dims to lat/lon or y/x, flip descending axes, attach 2-D lat/lon."""
    rename: dict[str, str] = {}
    lat1 = next(
        (n for n in _LAT_NAMES if n in ds.coords and ds[n].ndim == 1 and n in ds.dims), None
    )
    lon1 = next(
        (n for n in _LON_NAMES if n in ds.coords and ds[n].ndim == 1 and n in ds.dims), None
    )
    if lat1 and lon1:
        rename.update({lat1: "lat", lon1: "lon"})
        axes = ("lat", "lon")
    else:
        ydim = _first(_ROTATED_Y, ds.dims) or _first(_PROJ_Y, ds.dims)
        xdim = _first(_ROTATED_X, ds.dims) or _first(_PROJ_X, ds.dims)
        if ydim is None or xdim is None:
            return ds  # no spatial grid (e.g. a time series); validate() decides
        rename.update({ydim: "y", xdim: "x"})
        axes = ("y", "x")
        # 2-D geographic coordinates (WRF XLAT/XLONG, CORDEX lat/lon, RADOLAN lat/lon).
        for names, target in ((_LAT_NAMES, "lat"), (_LON_NAMES, "lon")):
            src = next((n for n in names if n in ds.variables and ds[n].ndim >= 2), None)
            if src is not None:
                arr = ds[src]
                if "Time" in arr.dims or "time" in arr.dims:
                    arr = arr.isel({d: 0 for d in arr.dims if d in ("Time", "time")}, drop=True)
                ds = ds.drop_vars(src)
                if src != target and target in ds.variables:
                    ds = ds.drop_vars(target)
                ds = ds.assign_coords({f"_{target}2d": arr.variable})
                rename[f"_{target}2d"] = target
    ds = ds.rename({k: v for k, v in rename.items() if k != v})
    for ax in axes:
        if ax not in ds.coords:
            continue
        if ds[ax].attrs.get("units") == "km":
            ds = ds.assign_coords({ax: ds[ax] * 1000.0})
            ds[ax].attrs["units"] = "m"
        if _check_axis(ds[ax].values, ax, where):
            ds = ds.isel({ax: slice(None, None, -1)})
    for ax in axes:
        if ax in ds.coords:
            ds[ax].attrs.pop("stored_direction", None)
            ds[ax].attrs.pop("bounds", None)
    return ds


def _canonical_grid_mapping(ds: xr.Dataset) -> xr.Dataset:
    mapping = None
    for var in ds.data_vars.values():
        gm = var.attrs.get("grid_mapping") or var.encoding.get("grid_mapping")
        if gm and gm in ds.variables:
            mapping = gm
            break
    if mapping is None:
        return ds
    attrs = dict(ds[mapping].attrs)
    ds = ds.drop_vars(mapping).assign_coords(crs=xr.Variable((), np.int32(0), attrs))
    for var in ds.data_vars.values():
        var.attrs["grid_mapping"] = "crs"
        var.encoding.pop("grid_mapping", None)
    return ds


def _split_levels(da: xr.DataArray, short: str, where: str) -> dict[str, xr.DataArray]:
    dim = _first(_LEVEL_DIMS, da.dims)
    levels = da[dim].values if dim in da.coords else np.arange(da.sizes[dim])
    unit = str(da[dim].attrs.get("units", "hPa")) if dim in da.coords else "hPa"
    scale = 0.01 if unit.lower() in ("pa", "pascal") else 1.0
    out = {}
    for i, level in enumerate(levels):
        hpa = int(round(float(level) * scale))
        out[f"{short}{hpa}"] = da.isel({dim: i}, drop=True)
    return out


def canonicalize(
    ds: xr.Dataset,
    *,
    source: str = "",
    variables: Sequence[str] | None = None,
    rename: Mapping[str, str] | None = None,
    units: Mapping[str, str] | None = None,
    accumulation_period: str | None = None,
    check_range: bool = True,
) -> xr.Dataset:
    """Turn a raw dataset into kmscale's canonical form (module docstring).

    Args:
        ds: dataset as opened by xarray.
        source: file name(s) used in error messages.
        variables: canonical names to keep (all known ones when None); a missing one is
            a SchemaError naming the variables found.
        rename: file name -> canonical name, overriding the alias catalogue.
        units: canonical name -> units of the file's values, overriding the file's
            ``units`` attributes (e.g. ``{"t2m": "degC"}``).
        accumulation_period: period of precipitation amounts (``"5min"``), overriding
            the file's attributes (default: theirs, else ``FILE_ACCUMULATION_PERIOD``).
        check_range: refuse values outside the catalogue's plausible ranges (checked
            lazily, as the values are read: :func:`kmscale.data.ranges.guard`).
    """
    where = source or ds.attrs.get(SOURCE_ATTR, "<dataset>")
    rename = dict(rename or {})
    units = dict(units or {})
    ds = _canonical_time(ds, where)
    ds = _canonical_space(ds, where)
    ds = _canonical_grid_mapping(ds)
    member = _first(_MEMBER_DIMS, ds.dims)
    if member and member != "member":
        ds = ds.rename({member: "member"})

    out = _canonical_variables(ds, where, rename, units, accumulation_period, check_range)
    if variables is not None:
        out = _select(out, variables, ds, where)
    result = xr.Dataset(
        out, attrs={k: v for k, v in ds.attrs.items() if not str(k).startswith("GRIB_")}
    )
    result.attrs[SOURCE_ATTR] = where
    keep = {"time", "lead_time", "member", "lat", "lon", "y", "x", "crs", "mask"}
    result = result.drop_vars([c for c in result.coords if c not in keep])
    spatial = ("lat", "lon") if "lat" in result.dims else ("y", "x")
    order = [d for d in ("time", "member", *spatial) if d in result.dims]
    return result.transpose(*order, ...)


def _canonical_variables(
    ds: xr.Dataset,
    where: str,
    rename: dict[str, str],
    units: dict[str, str],
    accumulation_period: str | None,
    check_range: bool,
) -> dict[str, xr.DataArray]:
    """Every variable of ``ds`` kmscale knows, by canonical name, in canonical units
    (pressure-level variables split per level); range-guarded with ``check_range``.

    Raises:
        SchemaError: two file variables map to one canonical name.
    """
    out: dict[str, xr.DataArray] = {}
    for name, da in ds.data_vars.items():
        if da.ndim == 0 or (set(da.dims) <= {"bnds", "nv", "time"}):
            continue
        if da.dtype.kind in "SUO":
            continue
        level_dim = _first(_LEVEL_DIMS, da.dims)
        if level_dim:
            short = cat.LEVEL_ALIASES.get(rename.get(name, name))
            if short is None:
                continue
            parts = _split_levels(da, short, where)
        else:
            canon = rename.get(name) or cat.canonical_name(name, da.attrs)
            if canon is None:
                continue
            parts = {canon: da}
        for canon, part in parts.items():
            if canon in out:
                raise SchemaError(
                    f"{where}: expected one source for variable {canon!r}, found two "
                    f"({out[canon].attrs.get('source_name')!r} and {name!r}); pass rename= to "
                    "choose"
                )
            out[canon] = _to_canonical_units(
                part, canon, name, units.get(canon), accumulation_period, where
            )
            if check_range:
                out[canon] = ranges.guard(
                    out[canon], canon, where=f"{where} (file variable {name!r})"
                )
    return out


def _select(
    out: dict[str, xr.DataArray], variables: Sequence[str], ds: xr.Dataset, where: str
) -> dict[str, xr.DataArray]:
    """``variables`` of ``out``, in that order.

    Raises:
        SchemaError: a requested variable is missing (naming the file's variables).
    """
    missing = [v for v in variables if v not in out]
    if missing:
        found = sorted(out) or "no known variables"
        raw = sorted(map(str, ds.data_vars))
        raise SchemaError(
            f"{where}: expected variables {list(variables)}, missing {missing}; found {found} "
            f"(file variables {raw}; pass rename={{'FILE_NAME': '{missing[0]}'}} if it is "
            "there under another name)"
        )
    return {v: out[v] for v in variables}


def _to_canonical_units(
    da: xr.DataArray,
    canon: str,
    source_name: str,
    override: str | None,
    period: str | None,
    where: str,
) -> xr.DataArray:
    var = cat.lookup(canon)
    declared = (
        override if override is not None else da.attrs.get("units", da.attrs.get("GRIB_units"))
    )
    where_var = f"{where} (file variable {source_name!r})"
    if period is None and canon == "tp":
        period = unit_conv.declared_period(da.attrs) or FILE_ACCUMULATION_PERIOD
    scale, offset = unit_conv.conversion(declared, canon, period=period, where=where_var)
    if var.static:
        # static fields repeated along time in model output (WRF HGT): keep the first
        for d in ("time", "Time"):
            if d in da.dims:
                da = da.isel({d: 0}, drop=True)
    elif "time" not in da.dims and "time" in da.coords and da["time"].ndim == 0:
        da = da.expand_dims("time")
    if "time" in da.coords and "time" not in da.dims:
        da = da.drop_vars("time")
    if da.dtype.kind == "f" and "_FillValue" not in da.encoding:
        # files that never declared a fill value still carry the NetCDF default
        # (9.969e36) where data are missing (e.g. Met Office radar composites)
        da = da.where(abs(da) < NETCDF_DEFAULT_FILL_THRESHOLD)
    if scale != 1.0 or offset != 0.0:
        da = da.astype("float32") * np.float32(scale) + np.float32(offset)
    elif da.dtype != np.float32 and da.dtype.kind in "fiu":
        da = da.astype("float32")
    attrs = var.cf_attrs()
    attrs["source_name"] = source_name
    if "grid_mapping" in da.attrs:
        attrs["grid_mapping"] = da.attrs["grid_mapping"]
    da.attrs = attrs
    da.encoding = {}
    return da.rename(canon)
