"""Fuzzed reader inputs (hypothesis): random dims, attributes, dtypes, NaNs, truncations.

A case is one data variable written to NetCDF-4, NetCDF-3 or zarr.  Opening it with
:func:`kmscale.data.readers.open_dataset` and loading it must either raise one of
kmscale's typed errors (:class:`kmscale.errors.KmscaleError`) or return the right numbers:
the values plain xarray decodes from the untruncated file, converted with the units'
known scale and offset, on the canonical dims, with every finite value in the variable's
plausible range.  Anything else (another exception, a different number, an implausible
value let through) is a failure.  Used by ``tests/test_fuzz_readers.py`` (a few dozen
examples) and ``benchmarks/scale.py`` (more).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from hypothesis import strategies as st

from kmscale.data.readers import open_dataset
from kmscale.data.variables import lookup
from kmscale.errors import KmscaleError

# (file name, canonical name, units spelling, scale, offset, typical value in file units)
VARIANTS = (
    ("T2", "t2m", "K", 1.0, 0.0, 280.0),
    ("t2m", "t2m", "degC", 1.0, 273.15, 10.0),
    ("2t", "t2m", "K", 1.0, 0.0, 10.0),  # degC labelled K: must be refused
    ("u10", "u10", "m/s", 1.0, 0.0, 5.0),
    ("U10", "u10", "km/h", 1 / 3.6, 0.0, 20.0),
    ("precipitation", "tp", "mm/h", 1.0, 0.0, 1.0),
    ("tp", "tp", "kg m-2 s-1", 3600.0, 0.0, 3e-4),
    ("tp", "tp", "m", 1000.0, 0.0, 1e-3),  # an amount read as hourly (reader default)
    ("pr", "tp", "mm/5min", 12.0, 0.0, 0.1),
    ("msl", "msl", "hPa", 100.0, 0.0, 1000.0),
)
TIME_NAMES = ("time", "valid_time", "t", "Time")
# (y dim, x dim, canonical y, canonical x): the spatial dim pairs files use
SPACE_NAMES = (
    ("lat", "lon", "lat", "lon"),
    ("latitude", "longitude", "lat", "lon"),
    ("LAT", "LON", "lat", "lon"),
    ("y", "x", "y", "x"),
    ("rlat", "rlon", "y", "x"),
)
UNIT_MUTATIONS = ("keep", "missing", "garbage", "other_quantity")


@dataclass
class Case:
    """One fuzzed file (see module docstring)."""

    variant: tuple
    dims: tuple[str, ...]
    coords: dict[str, np.ndarray]
    values: np.ndarray
    attrs: dict
    dtype: str
    fmt: str
    truncate: float | None

    @property
    def name(self) -> str:
        return self.variant[0]


@st.composite
def cases(draw) -> Case:
    """Hypothesis strategy of fuzzed reader inputs."""
    variant = draw(st.sampled_from(VARIANTS))
    name, canon, units, scale, offset, typical = variant
    dims: list[str] = []
    coords: dict[str, np.ndarray] = {}
    if draw(st.integers(0, 3)) > 0:  # mostly a time dim; sometimes a single field
        tname = draw(st.sampled_from(TIME_NAMES))
        nt = draw(st.sampled_from([0, 1, 2, 3, 4, 4]))
        start = pd.Timestamp("2020-01-01")
        times = start + pd.to_timedelta(np.arange(nt) * draw(st.sampled_from([1, 3])), unit="h")
        order = draw(st.sampled_from(["asc", "asc", "asc", "desc", "dup"]))
        times = times.values
        if order == "desc":
            times = times[::-1]
        elif order == "dup" and nt > 1:
            times = np.concatenate([times[:1], times[:-1]])
        dims.append(tname)
        coords[tname] = times
    if draw(st.booleans()):
        dims.append("height")
        coords["height"] = np.arange(draw(st.integers(1, 2)), dtype="float64")
    space = draw(st.sampled_from(SPACE_NAMES))
    for dname, lo in ((space[0], 40.0), (space[1], -5.0)):
        n = draw(st.sampled_from([0, 1, 2, 3, 4, 4]))
        axis = lo + np.arange(n, dtype="float64") * draw(st.sampled_from([0.25, 1.0]))
        if draw(st.booleans()):
            axis = axis[::-1]
        dims.append(dname)
        coords[dname] = axis
    perm = draw(st.permutations(dims))
    shape = tuple(coords[d].size for d in perm)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    values = typical * (1.0 + 0.2 * rng.standard_normal(shape))
    if canon == "tp":
        values = np.abs(values)
    nan = draw(st.sampled_from(["none", "some", "all"]))
    if nan == "some" and values.size:
        values[rng.random(shape) < 0.3] = np.nan
    elif nan == "all":
        values[...] = np.nan
    if draw(st.integers(0, 9)) == 0 and values.size:  # an impossible value somewhere
        values.flat[rng.integers(values.size)] = draw(st.sampled_from([1e9, -1e9, np.inf]))
    attrs: dict = {"units": units}
    mutation = draw(st.sampled_from(UNIT_MUTATIONS + ("keep",) * 6))
    if mutation == "missing":
        attrs.pop("units")
    elif mutation == "garbage":
        attrs["units"] = draw(st.sampled_from(["furlongs", "", "??", "K K", "mm/-5min"]))
    elif mutation == "other_quantity":
        attrs["units"] = "Pa" if canon != "msl" else "K"
    if draw(st.booleans()):
        attrs[
            draw(st.sampled_from(["long_name", "comment", "standard_name", "accumulation_period"]))
        ] = draw(st.sampled_from(["x", "1 hour", "air_temperature", "unknown", "0"]))
    dtype = draw(st.sampled_from(["float32", "float64", "int16", "int32"]))
    fmt = draw(st.sampled_from(["h5netcdf", "scipy", "zarr"]))
    truncated = fmt != "zarr" and draw(st.integers(0, 3)) == 0
    truncate = draw(st.floats(0.0, 0.99)) if truncated else None
    return Case(variant, tuple(perm), coords, values, attrs, dtype, fmt, truncate)


def write(case: Case, path: Path) -> Path:
    """Write ``case`` to ``path`` (zarr: a directory) in its format and dtype."""
    da = xr.DataArray(
        case.values,
        dims=case.dims,
        coords={d: case.coords[d] for d in case.dims},
        attrs=case.attrs,
        name=case.name,
    )
    encoding: dict = {}
    if case.dtype.startswith("int"):
        finite = case.values[np.isfinite(case.values)]
        span = float(np.ptp(finite)) if finite.size else 1.0
        base = float(finite.min()) if finite.size else 0.0
        info = np.iinfo(case.dtype)
        scale = (
            max(span, 1e-12) / (info.max - info.min - 2)
            if np.isfinite(span) and span < 1e30
            else 1.0
        )
        encoding = {
            "dtype": case.dtype,
            "scale_factor": scale,
            "add_offset": base - scale * (info.min + 1),
            "_FillValue": info.min,
        }
        if not np.isfinite(span) or span > 1e30 or not np.isfinite(base):
            encoding = {"dtype": case.dtype, "_FillValue": info.min}
    else:
        encoding = {"dtype": case.dtype}
    ds = da.to_dataset()
    if case.fmt == "zarr":
        ds.to_zarr(path, encoding={case.name: encoding}, zarr_format=3, consolidated=False)
        return path
    ds.to_netcdf(path, engine=case.fmt, encoding={case.name: encoding})
    if case.truncate is not None:
        raw = path.read_bytes()
        path.write_bytes(raw[: int(len(raw) * case.truncate)])
    return path


def _reference(path: Path, case: Case) -> xr.DataArray:
    """What plain xarray decodes from the intact file, converted to canonical units."""
    engine = case.fmt
    with xr.open_dataset(path, engine=engine) as raw:
        da = raw[case.name].load()
    _, _, _, scale, offset, _ = case.variant
    return da.astype("float64") * scale + offset


def run(case: Case, workdir: Path) -> str:
    """Open ``case`` as kmscale does; return 'error:<class>' (a typed error), 'ok' (checked),
    'dropped' (not recognised as the variable) or 'unwritable' (xarray cannot write it).

    Raises:
        AssertionError: a wrong number or an implausible value let through.
        Exception: whatever the reader raised that is not a KmscaleError (a failure).
    """
    suffix = ".zarr" if case.fmt == "zarr" else ".nc"
    try:
        intact = write(Case(**{**case.__dict__, "truncate": None}), workdir / f"intact{suffix}")
        path = write(case, workdir / f"case{suffix}") if case.truncate is not None else intact
    except Exception:  # noqa: BLE001 (xarray cannot write this case: not the reader's concern)
        return "unwritable"
    try:
        ds = open_dataset(path)
        canon = case.variant[1]
        if canon not in ds.data_vars:
            return "dropped"  # not recognised as the variable: nothing was read
        got = ds[canon].load()
    except KmscaleError as err:
        return f"error:{type(err).__name__}"
    expected = _reference(intact, case)
    _check_result(got, expected, case)
    return "ok"


def _check_result(got: xr.DataArray, expected: xr.DataArray, case: Case) -> None:
    canon = case.variant[1]
    units = case.attrs.get("units")
    assert units is not None, f"{case}: no units, yet read"
    low, high = lookup(canon).valid_range
    finite = got.values[np.isfinite(got.values)]
    assert ((finite >= low) & (finite <= high)).all(), f"{case}: implausible value let through"
    assert not np.isinf(got.values).any(), f"{case}: inf let through"
    # the reader renames dims, flips descending axes and transposes: compare by coordinates
    exp = expected.rename(
        {a: b for a, b in zip(case.dims, _canonical_dims(case, got), strict=True) if a != b}
    )
    assert set(exp.dims) == set(got.dims), f"{case}: dims {got.dims} vs {exp.dims}"
    exp = exp.transpose(*got.dims).sel({d: got[d].values for d in got.dims if d in got.coords})
    np.testing.assert_allclose(
        got.values.astype("float64"),
        exp.values,
        rtol=2e-6,
        atol=1e-6 * max(1.0, float(np.nanmax(np.abs(exp.values), initial=0.0))),
        err_msg=f"{case}",
    )


def _canonical_dims(case: Case, got: xr.DataArray) -> list[str]:
    rename = {n: "time" for n in TIME_NAMES}
    rename.update({y: cy for y, _, cy, _ in SPACE_NAMES})
    rename.update({x: cx for _, x, _, cx in SPACE_NAMES})
    return [rename.get(d, d) for d in case.dims]


def run_in_tempdir(case: Case) -> str:
    """:func:`run` in a fresh temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        return run(case, Path(tmp))
