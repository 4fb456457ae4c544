"""Physically impossible values refused: each variable's plausible range, checked on read.

The variable catalogue gives every canonical variable a plausible range in its canonical
units (``t2m`` 150..350 K, winds within +-150 m s-1, ``tp`` 0..500 mm h-1, ...).  A value
outside it is a unit mix-up (degrees Celsius labelled K) or corrupt data, never weather,
so it is a :class:`~kmscale.errors.RangeError` naming the variable, the range, the
offending value and where it is (index along each dim, with the coordinate value).

:func:`guard` attaches the check to a lazy (dask) array chunk by chunk: the values are
checked as they are read, by whatever computation reads them, at no extra pass over the
data (an 8 TB archive is never read twice to be checked).  NaNs are not range errors
(missing values have their own policy in :func:`kmscale.data.readers.validate`); +-inf
are.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import xarray as xr

from kmscale.data.variables import lookup
from kmscale.errors import RangeError


def _label(dim: str, index: int, coord: np.ndarray | None) -> str:
    if coord is None or index >= coord.size:
        return f"{dim}={index}"
    value = coord[index]
    if np.issubdtype(coord.dtype, np.datetime64):
        return f"{dim}={index} ({np.datetime_as_string(value, unit='m')})"
    if np.issubdtype(coord.dtype, np.number):
        return f"{dim}={index} ({float(value):g})"
    return f"{dim}={index} ({value})"


def check_array(
    values: np.ndarray,
    name: str,
    *,
    dims: Sequence[str],
    offset: Sequence[int] | None = None,
    coords: dict[str, np.ndarray | None] | None = None,
    where: str = "",
) -> np.ndarray:
    """Return ``values`` unchanged, or raise RangeError at the first implausible one.

    Args:
        values: array of ``name`` in canonical units, shape matching ``dims``.
        name: canonical variable name (its catalogue entry gives the range).
        dims: dim names of ``values`` (for the location in the message).
        offset: index of ``values[0, ..., 0]`` in the whole array (a chunk's origin).
        coords: 1-D coordinate values per dim of the whole array (None where absent).
        where: file or dataset named in the message.

    Raises:
        RangeError: naming variable, range, value and location.
    """
    var = lookup(name)
    low, high = var.valid_range
    if values.size == 0 or values.dtype.kind not in "fiu":
        return values
    with np.errstate(invalid="ignore"):
        bad = (values < low) | (values > high)
    if not bad.any():
        return values
    local = np.unravel_index(int(np.argmax(bad)), values.shape)
    origin = tuple(offset) if offset is not None else (0,) * values.ndim
    index = [int(i) + int(o) for i, o in zip(local, origin, strict=True)]
    coords = coords or {}
    place = ", ".join(_label(d, i, coords.get(d)) for d, i in zip(dims, index, strict=True))
    value = float(values[local])
    hint = ""
    if var.units == "K" and -100.0 < value < 60.0:
        hint = " (this looks like degC: declare units='degC' so it is converted)"
    prefix = f"{where}: " if where else ""
    raise RangeError(
        f"{prefix}variable {name!r}: expected values in {low:g}..{high:g} {var.units}, "
        f"found {value:g} at {place or 'the scalar'}{hint}; pass --no-range-check "
        f"(check_range=False) only for data that are truly outside it"
    )


def _check_block(block: np.ndarray, block_info=None, **kwargs) -> np.ndarray:
    if block_info is None:  # dask probing the function with a meta array
        return block
    offset = [start for start, _ in block_info[0]["array-location"]]
    return check_array(block, offset=offset, **kwargs)


def guard(da: xr.DataArray, name: str, *, where: str = "") -> xr.DataArray:
    """``da`` with its values checked against ``name``'s plausible range.

    A dask-backed array is checked lazily, each chunk when it is computed; a numpy-backed
    one now.

    Raises:
        RangeError: (numpy-backed ``da`` here; dask-backed when computed).
    """
    coords = {
        d: (np.asarray(da[d].values) if d in da.coords and da[d].ndim == 1 else None)
        for d in da.dims
    }
    check = partial(
        _check_block, name=name, dims=tuple(map(str, da.dims)), coords=coords, where=where
    )
    if da.chunks is None:
        check_array(
            np.asarray(da.values), name, dims=tuple(map(str, da.dims)), coords=coords, where=where
        )
        return da
    return da.copy(data=da.data.map_blocks(check, dtype=da.dtype, meta=da.data._meta))


def check(da: xr.DataArray, name: str, *, where: str = "") -> None:
    """Read ``da`` once (chunk by chunk: bounded memory) and raise at an implausible value."""
    guard(da, name, where=where).min().compute()  # reduces every checked chunk, one at a time
