"""File formats: detect NetCDF-3/NetCDF-4/GRIB/zarr from content, check GRIB integrity, open raw.

Used by :mod:`kmscale.data.readers` (which then canonicalises what is opened) and by
anything that must open kmscale's own outputs with the right xarray engine.
"""

from __future__ import annotations

import importlib.util
import struct
import warnings
from pathlib import Path

import xarray as xr

from kmscale.errors import CorruptFileError

GRIB_SUFFIXES = (".grib", ".grib1", ".grib2", ".grb", ".grb2")


def _netcdf4_engine() -> str:
    # h5netcdf needs h5py; fall back to the netCDF4 library when h5py is absent.
    return "h5netcdf" if importlib.util.find_spec("h5py") else "netcdf4"


def detect_engine(path: str | Path) -> str:
    """xarray engine for ``path`` from its content (magic bytes), not only its suffix.

    Raises:
        CorruptFileError: empty file or a format kmscale cannot read.
    """
    path = Path(path)
    if path.is_dir():
        return "zarr"
    if not path.exists():
        raise FileNotFoundError(f"expected an input file at {path}, found nothing")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:3] == b"CDF":
        return "scipy"
    if head[:4] == b"\x89HDF":
        return _netcdf4_engine()
    if head[:4] == b"GRIB" or path.suffix.lower() in GRIB_SUFFIXES:
        return "cfgrib"
    raise CorruptFileError(
        f"{path}: expected a NetCDF (CDF/HDF5), GRIB or zarr file, found "
        f"{'an empty file' if not head else f'leading bytes {head!r}'}"
    )


def check_grib_messages(path: Path) -> int:
    """Walk the GRIB messages of ``path`` by their length fields; return their count.

    cfgrib skips a truncated last message with a log line and returns the rest, which
    would silently lose time steps; this check turns that into a CorruptFileError.
    """
    size = path.stat().st_size
    count, offset = 0, 0
    with open(path, "rb") as f:
        while offset < size:
            f.seek(offset)
            head = f.read(16)
            if head[:4] != b"GRIB":
                # messages may be padded with zeros (GRIB1 often pads to 120 bytes)
                f.seek(offset)
                window = f.read(65536)
                nxt = window.find(b"GRIB")
                gap = window if nxt < 0 else window[:nxt]
                if gap.strip(b"\x00"):
                    raise CorruptFileError(
                        f"{path}: expected a GRIB message at byte {offset}, found {head[:8]!r} "
                        "(corrupt file)"
                    )
                if nxt < 0:
                    if offset + len(window) >= size:
                        break  # zero padding after the last message
                    offset += len(window)
                    continue
                offset += nxt
                f.seek(offset)
                head = f.read(16)
            edition = head[7]
            if edition == 1:
                length = int.from_bytes(head[4:7], "big")
                large = bool(length & 0x800000)  # GRIB1 large-message encoding: no cheap check
            elif edition == 2 and len(head) == 16:
                length, large = int.from_bytes(head[8:16], "big"), False
            else:
                raise CorruptFileError(
                    f"{path}: expected GRIB edition 1 or 2 at byte {offset}, found {edition}"
                )
            if offset + length > size:
                raise CorruptFileError(
                    f"{path}: GRIB message {count + 1} at byte {offset}: expected {length} bytes, "
                    f"found {size - offset} (truncated file)"
                )
            f.seek(offset + length - 4)
            if not large and f.read(4) != b"7777":
                raise CorruptFileError(
                    f"{path}: GRIB message {count + 1}: expected the end marker 7777, found none "
                    "(corrupt file)"
                )
            count += 1
            if large:
                break
            offset += length
    if count == 0:
        raise CorruptFileError(f"{path}: expected GRIB messages, found none")
    return count


# What the file parsers raise on corrupt or truncated bytes: besides OSError and
# ValueError, scipy's NetCDF-3 parser lets IndexError, TypeError, struct.error and even
# SyntaxError (from numpy parsing a garbled dtype string) escape.
PARSER_ERRORS = (
    OSError,
    ValueError,
    RuntimeError,
    KeyError,
    EOFError,
    IndexError,
    TypeError,
    SyntaxError,
    struct.error,
    OverflowError,
)


def open_raw(path: Path, engine: str, chunks) -> xr.Dataset:
    """``xr.open_dataset`` with the engine options kmscale needs; unreadable -> CorruptFileError."""
    kwargs: dict = {"engine": engine, "chunks": chunks}
    if engine == "cfgrib":
        check_grib_messages(path)
        kwargs["backend_kwargs"] = {"indexpath": ""}
        kwargs["decode_timedelta"] = True
    elif engine == "zarr":
        kwargs["consolidated"] = None
    try:
        with warnings.catch_warnings():
            # zarr without consolidated metadata (what StoreWriter writes) is fine
            warnings.filterwarnings(
                "ignore",
                message="Failed to open Zarr store with consolidated",
                category=RuntimeWarning,
            )
            return xr.open_dataset(path, **kwargs)
    except PARSER_ERRORS as err:
        raise CorruptFileError(
            f"{path}: expected a readable {engine} file, found an unreadable one ({err})"
        ) from err
