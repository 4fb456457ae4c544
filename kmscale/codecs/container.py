"""The versioned, checksummed archive file of ``kmscale compress --codec``.

A file of our own design rather than a zarr store: an archive is written once and read
whole or by field, its chunks are opaque entropy-coded byte strings, and one file is
what users move around. Layout (little endian)::

    magic "KMSCARC\\0" (8) | format version u16 | reserved u16 | header length u32
    | header CRC-32 u32 | header (UTF-8 JSON) | chunk bytes ...

The header holds the codec name and model fingerprint, the variables with units, the
grid, the times, whatever the codec needs to decode (``header["codec_params"]``), and
for every chunk its name, offset (from the end of the header), length and CRC-32. The
header comes first, so a truncated file still lists its chunks: those cut off or
damaged are reported by name and the others decode.

Writing is atomic: chunks go to a temporary spool file, the header and chunks to a
temporary archive beside the target, which is renamed over it only when complete, so an
interrupted or failed compress leaves no complete-looking archive (the temporary names
start with "." and end in ".partial").
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kmscale.errors import CorruptFileError, StoreError

MAGIC = b"KMSCARC\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sHHII")


@dataclass(frozen=True)
class Chunk:
    """Where one named byte string lies in the archive."""

    name: str
    offset: int  # bytes after the end of the header
    length: int
    crc32: int


class ArchiveWriter:
    """Write an archive atomically::

    with ArchiveWriter(path, header) as w:
        w.add("t2m/2026-03-19T00", payload)
    # renamed to ``path`` here; on an exception nothing appears at ``path``
    """

    def __init__(self, path: str | Path, header: Mapping, *, overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise StoreError(f"{self.path}: expected no file there (pass overwrite), found one")
        self.header = dict(header)
        self.chunks: list[Chunk] = []
        self._names: set[str] = set()
        self._spool = tempfile.NamedTemporaryFile(
            prefix=f".{self.path.name}.",
            suffix=".chunks.partial",
            dir=self.path.parent or ".",
            delete=False,
        )
        self._size = 0

    def add(self, name: str, data: bytes) -> None:
        """Append the chunk ``name`` (unique within the archive)."""
        if name in self._names:
            raise StoreError(f"{self.path}: chunk {name!r} added twice")
        self._names.add(name)
        self._spool.write(data)
        self.chunks.append(Chunk(name, self._size, len(data), zlib.crc32(data)))
        self._size += len(data)

    def close(self) -> Path:
        """Write header + chunks under a temporary name, fsync, rename over ``path``."""
        self._spool.flush()
        header = dict(
            self.header,
            format_version=FORMAT_VERSION,
            chunks=[[c.name, c.offset, c.length, c.crc32] for c in self.chunks],
        )
        blob = json.dumps(header, sort_keys=True).encode()
        tmp = self.path.parent / f".{self.path.name}.partial"
        try:
            with open(tmp, "wb") as out, open(self._spool.name, "rb") as spool:
                out.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(blob), zlib.crc32(blob)))
                out.write(blob)
                shutil.copyfileobj(spool, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
            self._discard_spool()
        return self.path

    def abort(self) -> None:
        self._discard_spool()

    def _discard_spool(self) -> None:
        self._spool.close()
        Path(self._spool.name).unlink(missing_ok=True)

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Archive:
    """A read-only archive: ``header`` (dict), ``names`` and :meth:`read` by chunk name.

    Raises on open (CorruptFileError / StoreError) for a file that is not an archive, a
    damaged header, or a format version newer than :data:`FORMAT_VERSION`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"{self.path}: expected a kmscale archive file, found nothing")
        self.size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            prefix = f.read(_PREFIX.size)
            if len(prefix) < _PREFIX.size or not prefix.startswith(MAGIC):
                raise CorruptFileError(
                    f"{self.path}: expected a kmscale archive (magic {MAGIC!r}), "
                    f"found {prefix[:8]!r}"
                )
            _, version, _, n, crc = _PREFIX.unpack(prefix)
            if version > FORMAT_VERSION:
                raise StoreError(
                    f"{self.path}: archive format version {version} is newer than the "
                    f"versions this kmscale reads (<= {FORMAT_VERSION}); upgrade kmscale"
                )
            blob = f.read(n)
        if len(blob) != n or zlib.crc32(blob) != crc:
            raise CorruptFileError(
                f"{self.path}: the archive header is truncated or corrupt "
                f"(expected {n} bytes with CRC-32 {crc:#010x})"
            )
        self.header = json.loads(blob)
        self._data_start = _PREFIX.size + n
        self.chunks = {c[0]: Chunk(*c) for c in self.header.pop("chunks")}

    @property
    def names(self) -> list[str]:
        return list(self.chunks)

    def read(self, name: str) -> bytes:
        """The bytes of chunk ``name``; CorruptFileError naming it if cut off or damaged."""
        if name not in self.chunks:
            raise StoreError(f"{self.path}: expected a chunk named {name!r}, found none")
        c = self.chunks[name]
        with open(self.path, "rb") as f:
            f.seek(self._data_start + c.offset)
            data = f.read(c.length)
        if len(data) != c.length:
            raise CorruptFileError(
                f"{self.path}: chunk {name!r} is truncated "
                f"(expected {c.length} bytes, found {len(data)})"
            )
        if zlib.crc32(data) != c.crc32:
            raise CorruptFileError(f"{self.path}: chunk {name!r} is corrupt (CRC-32 mismatch)")
        return data
