"""HRCLDAS analyses as users hold them: one GRIB2 (or NetCDF) file per variable and hour.

The CMA High-Resolution China Land Data Assimilation System (HRCLDAS, 0.01 deg) is
distributed as files named

    Z_NAFP_C_BABJ_<production time>_P_HRCLDAS_RT_<area>_0P01_HOR-<VAR>-<YYYYMMDDHH>.GRB2

(or ``.nc``), with <production time> YYYYMMDDHHMMSS, <area> such as CHN, and VAR
one of :data:`HRCLDAS_VARIABLES` (TAIR 2 m temperature, UWIN/VWIN 10 m wind, PRE
hourly precipitation, PRS surface pressure, QAIR 2 m specific humidity, ...).

:func:`open_hrcldas` reads a directory, a glob or a list of such files lazily (dask)
into kmscale's canonical form (:mod:`kmscale.data.canonical`): variables ``t2m``, ``u10``,
``v10``, ``tp``, ``sp`` with canonical units, dims (time, lat, lon), ``time`` the valid
hour of the file name. Rules:

- several production times for one variable and valid hour (a re-run of the analysis):
  the latest is used; the choice is logged and recorded in the attribute
  ``hrcldas_superseded``;
- every variable must cover the same valid hours, and the hours must follow one time
  step (the smallest found): a missing hour is an error naming the variable and hour;
- a file that is truncated or unreadable is an error naming the file;
- VARs without a canonical kmscale variable (QAIR, wind speed, radiation) are skipped.

``kmscale prepare`` (targets) and ``kmscale score --truth`` accept such a directory
or glob: :func:`kmscale.data.readers.open_dataset` dispatches here via :func:`is_hrcldas`.
:func:`write_hrcldas` writes a canonical dataset in this layout (GRIB2 through eccodes,
or NetCDF), e.g. the demo targets (``kmscale demo-data --layout hrcldas``).
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from kmscale.data.canonical import SOURCE_ATTR, canonicalize
from kmscale.errors import AlignmentError, GridError, SchemaError

log = logging.getLogger(__name__)

PREFIX = "Z_NAFP_C_BABJ_"
NAME_RE = re.compile(
    r"^Z_NAFP_C_BABJ_(?P<production>\d{14})_P_HRCLDAS_RT_(?P<area>[A-Za-z0-9]+)_0P01_HOR-"
    r"(?P<var>[A-Z0-9]+)-(?P<valid>\d{10})\.(?P<ext>GRB2|grb2|nc)$"
)


@dataclasses.dataclass(frozen=True)
class HrcldasVariable:
    """One HRCLDAS VAR: its canonical kmscale name, GRIB2 shortName and file units."""

    canonical: str
    grib_short_name: str
    units: str


# VAR -> canonical variable. Units are those of the product; a file's own units
# attribute (GRIB2 parameter units) takes precedence when present.
HRCLDAS_VARIABLES: dict[str, HrcldasVariable] = {
    "TAIR": HrcldasVariable("t2m", "2t", "K"),
    "UWIN": HrcldasVariable("u10", "10u", "m s-1"),
    "VWIN": HrcldasVariable("v10", "10v", "m s-1"),
    "PRE": HrcldasVariable("tp", "tp", "mm"),  # hourly amount: mm = mm h-1
    "PRS": HrcldasVariable("sp", "sp", "Pa"),
}
CANONICAL_TO_VAR = {v.canonical: k for k, v in HRCLDAS_VARIABLES.items()}
FORMATS = ("GRB2", "nc")


@dataclasses.dataclass(frozen=True)
class HrcldasFile:
    """What an HRCLDAS file name says."""

    path: Path
    production: np.datetime64
    area: str
    var: str
    valid: np.datetime64

    @classmethod
    def parse(cls, path: str | Path) -> HrcldasFile | None:
        """The parsed name, or None when ``path`` is not named as an HRCLDAS file."""
        path = Path(path)
        m = NAME_RE.match(path.name)
        if m is None:
            return None
        try:
            prod = pd.to_datetime(m["production"], format="%Y%m%d%H%M%S")
            valid = pd.to_datetime(m["valid"], format="%Y%m%d%H")
        except ValueError as err:
            raise SchemaError(
                f"{path}: expected dates YYYYMMDDHHMMSS and YYYYMMDDHH in the name, found ({err})"
            ) from err
        return cls(path, np.datetime64(prod, "s"), m["area"], m["var"], np.datetime64(valid, "ns"))


def _candidates(path_or_paths: str | Path | Sequence[str | Path]) -> list[Path]:
    items = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
    out: list[Path] = []
    for item in items:
        text = str(item)
        if any(ch in text for ch in "*?["):
            out.extend(Path(p) for p in sorted(glob.glob(text)))
        elif Path(text).is_dir():
            out.extend(sorted(p for p in Path(text).iterdir() if p.name.startswith(PREFIX)))
        else:
            out.append(Path(text))
    return out


def is_hrcldas(path_or_paths: str | Path | Sequence[str | Path]) -> bool:
    """True for a directory holding HRCLDAS-named files, or files/globs all so named."""
    try:
        paths = _candidates(path_or_paths)
    except OSError:
        return False
    return bool(paths) and all(p.name.startswith(PREFIX) and "_HRCLDAS_" in p.name for p in paths)


def find_files(path_or_paths: str | Path | Sequence[str | Path]) -> list[HrcldasFile]:
    """Parse the names of every HRCLDAS file in a directory, glob or list.

    Raises:
        FileNotFoundError: nothing found.
        SchemaError: a file named like HRCLDAS whose name does not parse, or several areas.
    """
    paths = _candidates(path_or_paths)
    if not paths:
        raise FileNotFoundError(
            f"expected HRCLDAS files ({PREFIX}...) at {path_or_paths}, found none"
        )
    files = []
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"expected an HRCLDAS file at {p}, found nothing")
        f = HrcldasFile.parse(p)
        if f is None:
            raise SchemaError(
                f"{p}: expected a name {PREFIX}<YYYYMMDDHHMMSS>_P_HRCLDAS_RT_<AREA>_0P01_HOR-<VAR>-"
                f"<YYYYMMDDHH>.GRB2 (or .nc), found {p.name!r}"
            )
        files.append(f)
    areas = sorted({f.area for f in files})
    if len(areas) > 1:
        raise SchemaError(
            f"{path_or_paths}: expected HRCLDAS files of one area, found areas {areas}"
        )
    return files


def latest_production(
    files: Sequence[HrcldasFile],
) -> tuple[dict[tuple[str, np.datetime64], HrcldasFile], list[str]]:
    """Keep the latest production of each (VAR, valid hour).

    Returns:
        ``{(var, valid): file}`` and one line per superseded choice
        ("TAIR 2023070100: used 20230701003512, superseded 20230701001500").
    """
    groups: dict[tuple[str, np.datetime64], list[HrcldasFile]] = {}
    for f in files:
        groups.setdefault((f.var, f.valid), []).append(f)
    chosen, notes = {}, []
    for key, group in sorted(groups.items()):
        group = sorted(group, key=lambda f: f.production)
        chosen[key] = group[-1]
        if len(group) > 1:
            stamp = lambda t: pd.Timestamp(t).strftime("%Y%m%d%H%M%S")  # noqa: E731
            notes.append(
                f"{key[0]} {pd.Timestamp(key[1]):%Y%m%d%H}: used {stamp(group[-1].production)}, "
                "superseded " + ", ".join(stamp(f.production) for f in group[:-1])
            )
    return chosen, notes


def check_hours(chosen: dict[tuple[str, np.datetime64], HrcldasFile], where: str) -> np.ndarray:
    """The valid hours shared by every variable, checked for gaps.

    Raises:
        AlignmentError: a variable lacks hours others have, or an hour is missing from
            the sequence (step = the smallest spacing found).
    """
    by_var: dict[str, set] = {}
    for var, valid in chosen:
        by_var.setdefault(var, set()).add(valid)
    hours = np.array(sorted(set().union(*by_var.values())), dtype="datetime64[ns]")
    for var, have in sorted(by_var.items()):
        lack = [h for h in hours if h not in have]
        if lack:
            shown = ", ".join(f"{pd.Timestamp(h):%Y%m%d%H}" for h in lack[:5])
            raise AlignmentError(
                f"{where}: expected {var} files for every valid hour the other variables have, "
                "found "
                f"{len(lack)} missing ({shown}{', ...' if len(lack) > 5 else ''})"
            )
    if hours.size > 1:
        step = np.diff(hours).min()
        full = np.arange(hours[0], hours[-1] + step, step)
        gap = np.setdiff1d(full, hours)
        if gap.size:
            shown = ", ".join(f"{pd.Timestamp(h):%Y%m%d%H}" for h in gap[:5])
            raise AlignmentError(
                f"{where}: expected files every {step.astype('timedelta64[m]')} from "
                f"{pd.Timestamp(hours[0]):%Y%m%d%H} to {pd.Timestamp(hours[-1]):%Y%m%d%H}, found "
                f"{gap.size} valid hour(s) missing for every "
                f"variable ({shown}{', ...' if gap.size > 5 else ''})"
            )
    return hours


def _open_one(f: HrcldasFile, chunks, units: str | None = None) -> xr.DataArray:
    """One file as a canonical (time=1, lat, lon) DataArray, time from the file name."""
    from kmscale.data.formats import detect_engine, open_raw

    spec = HRCLDAS_VARIABLES[f.var]
    raw = open_raw(f.path, detect_engine(f.path), chunks)
    names = [n for n, v in raw.data_vars.items() if v.ndim >= 2]
    if len(names) != 1:
        raise SchemaError(
            f"{f.path}: expected one 2-D field ({f.var}), found variables {list(raw.data_vars)}"
        )
    name = names[0]
    if "valid_time" in raw.coords and raw["valid_time"].size == 1:  # GRIB: check the name's hour
        inside = np.datetime64(np.asarray(raw["valid_time"].values).ravel()[0], "ns")
        if inside != f.valid:
            raise AlignmentError(
                f"{f.path}: expected valid time {f.valid} (the file name's), found {inside} inside"
            )
    raw = raw.drop_vars(
        [c for c in raw.coords if c in ("time", "step", "valid_time") or raw[c].ndim == 0]
    )
    if "time" in raw.dims:
        raw = raw.isel(time=0, drop=True)
    if units is None and not ("units" in raw[name].attrs or "GRIB_units" in raw[name].attrs):
        units = spec.units  # the product's units when the file does not say
    raw.attrs[SOURCE_ATTR] = str(f.path)
    ds = canonicalize(
        raw, source=str(f.path), variables=[spec.canonical], rename={name: spec.canonical},
        units=None if units is None else {spec.canonical: units},
    )  # fmt: skip
    da = ds[spec.canonical].expand_dims(time=[f.valid])
    da.attrs["source_name"] = f.var
    return da


def open_hrcldas(
    path_or_paths: str | Path | Sequence[str | Path],
    variables: Sequence[str] | None = None,
    *,
    units: dict[str, str] | None = None,
    chunks=None,
) -> xr.Dataset:
    """Open HRCLDAS files lazily into a canonical (time, lat, lon) dataset.

    Args:
        path_or_paths: a directory, glob or list of HRCLDAS files.
        variables: canonical names to keep (default: every known VAR found).
        units: canonical name -> units of the file values (overrides the files').
        chunks: dask chunks per file (default ``{}``: one chunk per file).

    Returns:
        dataset with ``time`` = valid hours, attributes ``hrcldas_area`` and
        ``hrcldas_superseded`` (the duplicate productions not used; empty if none).

    Raises:
        SchemaError: unparsable names, several areas, requested variables absent.
        AlignmentError: missing hours (see :func:`check_hours`).
        CorruptFileError: a truncated or unreadable file (named).
        GridError: files on different grids.
    """
    where = str(path_or_paths)
    files = _known_files(find_files(path_or_paths), variables, where)
    chosen, notes = latest_production(files)
    if notes:
        log.info("HRCLDAS: %d file(s) with several production times, the latest used: %s%s",
                 len(notes), "; ".join(notes[:3]), "; ..." if len(notes) > 3 else "")  # fmt: skip
    hours = check_hours(chosen, where)
    ds = _stack_hours(chosen, hours, {} if chunks is None else chunks, units or {}, where)
    ds.attrs = {
        SOURCE_ATTR: where,
        "source": "CMA HRCLDAS (files per variable and hour)",
        "hrcldas_area": files[0].area,
        "hrcldas_superseded": "; ".join(notes),
    }
    return ds


def _known_files(
    files: list[HrcldasFile], variables: Sequence[str] | None, where: str
) -> list[HrcldasFile]:
    """The files of known VARs (of ``variables`` when given); unknown VARs are logged.

    Raises:
        SchemaError: a requested variable without files, or no known files at all.
    """
    skipped = sorted({f.var for f in files if f.var not in HRCLDAS_VARIABLES})
    if skipped:
        log.info("HRCLDAS: skipping %s (no canonical kmscale variable)", ", ".join(skipped))
    files = [f for f in files if f.var in HRCLDAS_VARIABLES]
    if variables is not None:
        missing = [
            v
            for v in variables
            if v not in CANONICAL_TO_VAR or CANONICAL_TO_VAR[v] not in {f.var for f in files}
        ]
        if missing:
            raise SchemaError(
                f"{where}: expected HRCLDAS files for {missing} "
                f"(VARs {[CANONICAL_TO_VAR.get(v, '?') for v in missing]}), "
                f"found VARs {sorted({f.var for f in files})}"
            )
        files = [f for f in files if HRCLDAS_VARIABLES[f.var].canonical in variables]
    if not files:
        raise SchemaError(
            f"{where}: expected HRCLDAS files of {sorted(HRCLDAS_VARIABLES)}, found VARs {skipped}"
        )
    return files


def _stack_hours(
    chosen: dict[tuple[str, np.datetime64], HrcldasFile],
    hours: np.ndarray,
    chunks: dict,
    units: dict[str, str],
    where: str,
) -> xr.Dataset:
    """One lazy (time, lat, lon) variable per VAR of ``chosen`` ((var, hour) -> file).

    Raises:
        GridError: files of one variable, or variables, on different grids.
    """
    out = {}
    found = {v for v, _ in chosen}
    # catalogue order: t2m, u10, v10, tp, sp
    for var in [v for v in HRCLDAS_VARIABLES if v in found]:
        canon = HRCLDAS_VARIABLES[var].canonical
        fields = [_open_one(chosen[(var, h)], chunks, units.get(canon)) for h in hours]
        try:
            da = xr.concat(fields, dim="time", join="exact", coords="minimal", compat="override")
        except ValueError as err:
            raise GridError(
                f"{where}: expected every {var} file on one grid, found different grids ({err})"
            ) from err
        out[canon] = da
    try:
        return xr.Dataset(out)
    except ValueError as err:
        raise GridError(
            f"{where}: expected every variable on one grid, found different grids ({err})"
        ) from err


# ---- writing ---------------------------------------------------------------------------
def file_name(var: str, valid, production, area: str = "CHN", fmt: str = "GRB2") -> str:
    """The HRCLDAS name of one file (``production``, ``valid``: datetimes)."""
    if fmt not in FORMATS:
        raise SchemaError(f"HRCLDAS: expected a format in {FORMATS}, found {fmt!r}")
    return (f"{PREFIX}{pd.Timestamp(production):%Y%m%d%H%M%S}_P_HRCLDAS_RT_{area}_0P01_HOR-{var}-"
            f"{pd.Timestamp(valid):%Y%m%d%H}.{fmt}")  # fmt: skip


def write_hrcldas(
    ds: xr.Dataset,
    out_dir: str | Path,
    *,
    production_delay_minutes: int = 40,
    area: str = "CHN",
    fmt: str = "GRB2",
    if_exists: str = "error",
) -> Path:
    """Write the canonical (time, lat, lon) variables of ``ds`` one file per VAR and hour.

    Variables without an HRCLDAS VAR are left out. Each file is written under a
    temporary name and renamed (an interrupted run leaves no partial file under an
    HRCLDAS name). GRIB2 (eccodes, simple packing, 24 bits) or NetCDF.

    Args:
        production_delay_minutes: production time = valid time + this delay.
        if_exists: an existing file is an "error", or is kept ("keep": files appear only
            complete, so a rerun resumes) or "replace"d.

    Returns:
        ``out_dir``.
    """
    from kmscale.errors import StoreError

    if if_exists not in ("error", "keep", "replace"):
        raise SchemaError(
            f"HRCLDAS: expected if_exists 'error', 'keep' or 'replace', found {if_exists!r}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in ds.data_vars if n in CANONICAL_TO_VAR]
    if not names:
        raise SchemaError(
            f"HRCLDAS: expected variables among {sorted(CANONICAL_TO_VAR)}, "
            f"found {list(ds.data_vars)}"
        )
    for name in names:
        if ds[name].dims != ("time", "lat", "lon"):
            raise SchemaError(
                f"HRCLDAS: variable {name!r}: expected dims (time, lat, lon), found {ds[name].dims}"
            )
    lat, lon = np.asarray(ds["lat"].values, float), np.asarray(ds["lon"].values, float)
    delay = np.timedelta64(production_delay_minutes, "m")
    for t in ds["time"].values:
        for name in names:
            var = CANONICAL_TO_VAR[name]
            path = out / file_name(var, t, t + delay, area, fmt)
            if path.exists() and if_exists == "keep":
                continue
            if path.exists() and if_exists == "error":
                raise StoreError(
                    f"{path}: expected no file there, found one (pass if_exists='replace')"
                )
            values = np.asarray(ds[name].sel(time=t).values, dtype=np.float64)
            tmp = path.with_name(path.name + ".partial")
            if fmt == "GRB2":
                _write_grib2(tmp, HRCLDAS_VARIABLES[var], values, lat, lon, t)
            else:
                units = HRCLDAS_VARIABLES[var].units
                field = xr.DataArray(
                    values.astype(np.float32), dims=("lat", "lon"), coords={"lat": lat, "lon": lon},
                    attrs={"units": units}, name=var,
                )  # fmt: skip
                field.to_dataset().to_netcdf(tmp, engine="h5netcdf" if _has_h5py() else "netcdf4")
            os.replace(tmp, path)
    return out


def _has_h5py() -> bool:
    import importlib.util

    return importlib.util.find_spec("h5py") is not None


def _write_grib2(path: Path, spec: HrcldasVariable, values: np.ndarray, lat, lon, valid) -> None:
    """One GRIB2 message (regular lat-lon, south to north); precipitation as a 1 h sum."""
    import eccodes

    step_h = (
        1 if spec.grib_short_name == "tp" else 0
    )  # tp: accumulated over the hour ending at valid
    ref = pd.Timestamp(valid) - pd.Timedelta(hours=step_h)
    h = eccodes.codes_grib_new_from_samples("regular_ll_sfc_grib2")
    try:
        eccodes.codes_set(h, "centre", "babj")
        eccodes.codes_set(h, "dataDate", int(f"{ref:%Y%m%d}"))
        eccodes.codes_set(h, "dataTime", int(f"{ref:%H%M}"))
        if step_h:
            eccodes.codes_set(h, "productDefinitionTemplateNumber", 8)
        eccodes.codes_set(h, "shortName", spec.grib_short_name)
        if step_h:
            eccodes.codes_set(h, "lengthOfTimeRange", step_h)
        ny, nx = values.shape
        eccodes.codes_set_long(h, "Ni", nx)
        eccodes.codes_set_long(h, "Nj", ny)
        eccodes.codes_set(h, "latitudeOfFirstGridPointInDegrees", float(lat[0]))
        eccodes.codes_set(h, "latitudeOfLastGridPointInDegrees", float(lat[-1]))
        eccodes.codes_set(h, "longitudeOfFirstGridPointInDegrees", float(lon[0]))
        eccodes.codes_set(h, "longitudeOfLastGridPointInDegrees", float(lon[-1]))
        eccodes.codes_set(
            h, "iDirectionIncrementInDegrees", float(abs(lon[1] - lon[0])) if nx > 1 else 0.01
        )
        eccodes.codes_set(
            h, "jDirectionIncrementInDegrees", float(abs(lat[1] - lat[0])) if ny > 1 else 0.01
        )
        eccodes.codes_set(h, "jScansPositively", 1)
        eccodes.codes_set(h, "bitsPerValue", 24)
        if np.isnan(values).any():
            eccodes.codes_set(h, "bitmapPresent", 1)
            eccodes.codes_set(h, "missingValue", 9999.0)
            values = np.where(np.isnan(values), 9999.0, values)
        eccodes.codes_set_values(h, values.ravel())
        with open(path, "wb") as fh:
            eccodes.codes_write(h, fh)
    finally:
        eccodes.codes_release(h)
