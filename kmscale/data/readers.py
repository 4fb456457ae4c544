"""Open NetCDF, GRIB and zarr files into kmscale's one canonical xarray form
(:mod:`kmscale.data.canonical`), and check canonical datasets.

:func:`open_dataset` opens a file, a glob or a list (HRCLDAS directories through
:mod:`kmscale.data.hrcldas`); :func:`validate` then checks a canonical dataset against what
the pipeline needs (variables present, units, plausible ranges, NaNs only where a mask
allows them).
"""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from kmscale.data import hrcldas, ranges
from kmscale.data import variables as cat
from kmscale.data.canonical import SOURCE_ATTR, _check_axis, _check_time, canonicalize
from kmscale.data.formats import (  # noqa: F401 (re-exported)
    GRIB_SUFFIXES,
    PARSER_ERRORS,
    check_grib_messages,
    detect_engine,
    open_raw,
)
from kmscale.errors import (
    AlignmentError,
    CoordinateError,
    CorruptFileError,
    KmscaleError,
    MissingValueError,
    RangeError,
    SchemaError,
    UnitsError,
)


# ---- public opening -------------------------------------------------------------------
def expand_paths(path_or_paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Expand globs and lists into a sorted list of existing paths.

    Raises:
        FileNotFoundError: a pattern matches nothing.
    """
    items = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
    out: list[Path] = []
    for item in items:
        text = str(item)
        if any(ch in text for ch in "*?["):
            matches = sorted(glob.glob(text))
            if not matches:
                raise FileNotFoundError(f"expected files matching {text!r}, found none")
            out.extend(Path(m) for m in matches)
        else:
            if not Path(text).exists():
                raise FileNotFoundError(f"expected an input file at {text}, found nothing")
            out.append(Path(text))
    return out


def open_dataset(
    path_or_paths: str | Path | Sequence[str | Path],
    variables: Sequence[str] | None = None,
    engine: str | None = None,
    rename: Mapping[str, str] | None = None,
    *,
    units: Mapping[str, str] | None = None,
    chunks: Mapping | str | None = None,
    accumulation_period: str | None = None,
    check_range: bool = True,
) -> xr.Dataset:
    """Open NetCDF / GRIB / zarr file(s) lazily in the canonical form.

    Several files (a list or a glob) are concatenated along ``time`` (files holding
    different variables on the same times are merged). A directory or glob of HRCLDAS
    files (one per variable and hour) is read by :func:`kmscale.data.hrcldas.open_hrcldas`.

    Args:
        path_or_paths: a path, a glob pattern, or a list of them.
        variables: canonical names to keep; missing ones raise SchemaError.
        engine: xarray engine; detected from the content when None.
        rename: file variable name -> canonical name.
        units: canonical name -> units of the file values (overrides attributes).
        chunks: dask chunks (default ``{}``: the file's own chunks, lazily).
        accumulation_period: period of precipitation amounts (see :func:`canonicalize`).
        check_range: refuse physically impossible values (RangeError naming variable,
            range, value and location) as they are read.

    Returns:
        canonical dataset (see module docstring), lazy (dask-backed).

    Raises:
        CorruptFileError: unreadable/truncated file (named).
        SchemaError, UnitsError, CoordinateError: see :func:`canonicalize`.
        RangeError: a physically impossible value (here for the probed last time step;
            elsewhere when the values are computed).
    """
    if hrcldas.is_hrcldas(path_or_paths):  # one file per variable and hour
        return hrcldas.open_hrcldas(
            path_or_paths, variables, units=dict(units or {}), chunks=chunks
        )
    paths = expand_paths(path_or_paths)
    chunks = {} if chunks is None else chunks
    parts = []
    for path in paths:
        eng = engine or detect_engine(path)
        raw = open_raw(path, eng, chunks)
        raw.attrs[SOURCE_ATTR] = str(path)
        ds = canonicalize(
            raw,
            source=str(path),
            variables=variables,
            rename=rename,
            units=units,
            accumulation_period=accumulation_period,
            check_range=check_range,
        )
        _probe(ds, str(path))
        parts.append(ds)
    if len(parts) == 1:
        return parts[0]
    return _combine(parts, [str(p) for p in paths])


def _probe(ds: xr.Dataset, where: str) -> None:
    """Read the last time step of each variable: a truncated file fails here, not later.

    Raises:
        SchemaError: a variable has an empty dim (no time step, no grid point).
        CorruptFileError: the file cannot be read to its end.
    """
    for name, da in ds.data_vars.items():
        empty = [d for d in da.dims if da.sizes[d] == 0]
        if empty:
            raise SchemaError(
                f"{where}: variable {name!r}: expected at least one element along every dim, "
                f"found empty dims {empty} (sizes {dict(da.sizes)})"
            )
        sel = {d: -1 for d in da.dims if d in ("time", "member")}
        try:
            np.asarray(da.isel(sel).values)
        except PARSER_ERRORS as err:
            if isinstance(err, KmscaleError):
                raise
            raise CorruptFileError(
                f"{where}: variable {name!r}: expected readable data, found a truncated or corrupt "
                f"file ({err})"
            ) from err


def _combine(parts: list[xr.Dataset], names: list[str]) -> xr.Dataset:
    from kmscale.errors import GridError

    groups: dict[tuple, list[xr.Dataset]] = {}
    for ds in parts:
        groups.setdefault(tuple(sorted(ds.data_vars)), []).append(ds)
    merged = []
    for group in groups.values():
        if len(group) == 1 or "time" not in group[0].dims:
            merged.append(group[0])
            continue
        group = sorted(group, key=lambda d: d["time"].values[0])
        try:
            cat_ds = xr.concat(
                group,
                dim="time",
                join="exact",
                data_vars="minimal",
                coords="minimal",
                compat="override",
            )
        except ValueError as err:
            raise GridError(
                f"{', '.join(names)}: expected files on one grid, found different grids ({err})"
            ) from err
        try:
            _check_axis(cat_ds["time"].values, "time", ", ".join(names), allow_descending=False)
        except CoordinateError as err:
            raise AlignmentError(f"files overlap in time: {err}") from err
        merged.append(cat_ds)
    try:
        out = xr.merge(merged, join="exact", compat="override", combine_attrs="drop_conflicts")
    except ValueError as err:
        raise GridError(
            f"{', '.join(names)}: expected files on one grid and time axis, found ({err})"
        ) from err
    out.attrs[SOURCE_ATTR] = ", ".join(names)
    return out


# ---- schema check ---------------------------------------------------------------------
def schema_problems(
    ds: xr.Dataset,
    variables: Sequence[str] | None = None,
    *,
    allow_nan: bool = False,
    mask: xr.DataArray | np.ndarray | None = None,
    check_range: bool = True,
) -> list[KmscaleError]:
    """Every reason the pipeline cannot use ``ds`` (empty list when it can).

    Args:
        ds: canonical dataset.
        variables: canonical names required (all data variables when None).
        allow_nan: accept NaNs anywhere.
        mask: boolean (y, x)/(lat, lon) array, True where values must be finite; NaNs
            outside it are allowed (e.g. outside a radar composite). Defaults to the
            dataset's ``mask`` coordinate when it has one.
        check_range: check values against the catalogue's plausible ranges (reads data).
    """
    where = ds.attrs.get(SOURCE_ATTR, "<dataset>")
    problems: list[KmscaleError] = []
    names = list(variables) if variables is not None else list(ds.data_vars)
    missing = [v for v in names if v not in ds.data_vars]
    if missing:
        problems.append(
            SchemaError(
                f"{where}: expected variables {names}, missing {missing}; found "
                f"{sorted(ds.data_vars)}"
            )
        )
    spatial = ("lat", "lon") if "lat" in ds.dims else ("y", "x")
    problems += _coordinate_problems(ds, spatial, where)
    if mask is None and "mask" in ds.coords:
        mask = ds.coords["mask"]
    for name in names:
        if name not in ds.data_vars:
            continue
        problem = _variable_problem(
            ds[name], name, spatial, where, allow_nan=allow_nan, mask=mask, check_range=check_range
        )
        if problem is not None:
            problems.append(problem)
    return problems


def _coordinate_problems(
    ds: xr.Dataset, spatial: tuple[str, str], where: str
) -> list[CoordinateError]:
    """Spatial axes not ascending and regular; times not valid for a forecast's lead times."""
    problems = []
    for ax in (*spatial, "time"):
        if ax == "time" and "lead_time" in ds.coords:
            try:
                _check_time(ds, where)
            except CoordinateError as err:
                problems.append(err)
            continue
        if ax in ds.coords and ds[ax].ndim == 1:
            try:
                flip = _check_axis(ds[ax].values, ax, where, allow_descending=False)
                assert not flip
            except CoordinateError as err:
                problems.append(err)
    return problems


def _variable_problem(
    da: xr.DataArray,
    name: str,
    spatial: tuple[str, str],
    where: str,
    *,
    allow_nan: bool,
    mask: xr.DataArray | np.ndarray | None,
    check_range: bool,
) -> KmscaleError | None:
    """The first reason variable ``name`` is unusable (see :func:`schema_problems`), or None:
    unknown name, dims, units, implausible values, NaNs where none are allowed."""
    import dask

    try:
        var = cat.lookup(name)
    except SchemaError as err:
        return err
    extra = [d for d in da.dims if d not in ("time", "member", *spatial)]
    if extra or not set(spatial) <= set(da.dims):
        return SchemaError(
            f"{where}: variable {name!r}: expected dims (time, [member], "
            f"{', '.join(spatial)}), found {da.dims}"
        )
    found_units = da.attrs.get("units")
    if cat.normalize_units(found_units) != cat.normalize_units(var.units):
        return UnitsError(
            f"{where}: variable {name!r}: expected units {var.units}, found {found_units!r}"
        )
    if not check_range and allow_nan:
        return None
    isnan = da.isnull()
    if mask is not None:
        m = (
            mask
            if isinstance(mask, xr.DataArray)
            else xr.DataArray(np.asarray(mask, bool), dims=spatial)
        )
        bad_nan = (isnan & m.astype(bool)).sum()
    else:
        bad_nan = isnan.sum()
    try:  # (a numpy-backed ``da`` is range-checked by guard() itself, dask ones on compute)
        checked = ranges.guard(da, name, where=where) if check_range else da
        _, nbad = dask.compute(checked.min(), bad_nan)
    except RangeError as err:
        return err
    nbad = int(nbad)
    if nbad and not allow_nan:
        place = "inside the mask" if mask is not None else "and no mask allows them"
        return MissingValueError(
            f"{where}: variable {name!r}: expected finite values"
            f"{' inside the mask' if mask is not None else ''}, found {nbad} NaNs {place}"
        )
    return None


def validate(
    ds: xr.Dataset,
    variables: Sequence[str] | None = None,
    *,
    allow_nan: bool = False,
    mask: xr.DataArray | np.ndarray | None = None,
    check_range: bool = True,
) -> xr.Dataset:
    """Raise the first schema problem of ``ds`` (see :func:`schema_problems`); return ``ds``."""
    problems = schema_problems(
        ds, variables, allow_nan=allow_nan, mask=mask, check_range=check_range
    )
    if problems:
        raise problems[0]
    return ds
