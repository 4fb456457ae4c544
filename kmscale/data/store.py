"""Atomic, resumable zarr v3 stores: the artifact every stage writes.

A store is written under ``<path>.partial`` and renamed to ``<path>`` only when every
chunk along the write dimension is in place, so a store at its final name is always
complete. An interrupted run leaves ``<path>.partial`` plus a progress file listing
the chunks written (``<path>.partial.progress.json``); running again with the same
``kind`` and ``fingerprint`` resumes from there, and anything else refuses to touch it.

Usage::

    writer = StoreWriter(path, template, kind="ensemble", fingerprint=fp,
                         dim="time", chunk=4, attrs={...})
    for i in tqdm(writer.pending()):
        writer.write(i, compute_chunk(writer.chunk_slice(i)))
    writer.finalize()
    ds = open_store(path, kind="ensemble")

``template`` is an ``xr.Dataset`` with the full shape, dims, coordinates, dtypes and
attributes (lazy dask arrays are fine: only metadata is written at start). Variables
without ``dim`` (static coordinates, masks) are written once, at creation.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from kmscale import __version__
from kmscale.errors import StoreError

STATUS_KEY = "kmscale_status"
KIND_KEY = "kmscale_kind"
FINGERPRINT_KEY = "kmscale_fingerprint"
VERSION_KEY = "kmscale_version"


def consolidate(path: str | Path) -> None:
    """Write the store's consolidated metadata: one read opens it, and xarray does not warn.

    Called on complete stores only (a store still being written would carry stale
    consolidated metadata).
    """
    with warnings.catch_warnings():
        # zarr 3 notes that consolidated metadata is not yet in the v3 specification;
        # xarray and zarr-python read it, and a reader without it falls back to the files
        warnings.filterwarnings(
            "ignore", message="Consolidated metadata is currently not part", category=UserWarning
        )
        zarr.consolidate_metadata(str(path))


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class StoreWriter:
    """Write a dataset chunk by chunk along ``dim``; resumable; atomic on finalize.

    Args:
        path: final store path (a directory, conventionally ending in ``.zarr``).
        template: full-size dataset (dims, coords, dtypes, attrs); data may be lazy.
        kind: what the store holds ("targets", "latents", "ensemble", ...), checked on open.
        fingerprint: identity of whatever produced the data (model hash, config hash);
            a partial store with another fingerprint is never resumed.
        dim: the dimension written chunk by chunk (usually "time").
        chunk: chunk length along ``dim``; other dims are chunked as in ``encoding``
            or whole.
        attrs: extra global attributes (provenance, CF conventions).
        encoding: per-variable zarr encoding (chunks, compressors, dtype).
        overwrite: replace an existing complete store at ``path``.
    """

    def __init__(
        self,
        path: str | Path,
        template: xr.Dataset,
        *,
        kind: str,
        fingerprint: str = "",
        dim: str = "time",
        chunk: int = 1,
        attrs: Mapping | None = None,
        encoding: Mapping | None = None,
        overwrite: bool = False,
    ):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.progress_file = self.partial.with_name(self.partial.name + ".progress.json")
        self.kind = kind
        self.fingerprint = fingerprint
        self.dim = dim
        self.chunk = int(chunk)
        if dim not in template.dims:
            raise StoreError(
                f"{self.path}: expected the write dimension {dim!r} in {dict(template.sizes)}"
            )
        self.length = template.sizes[dim]
        self.n_chunks = -(-self.length // self.chunk)
        if self.path.exists():
            if not overwrite:
                raise StoreError(
                    f"{self.path}: expected no store at the output path, found one "
                    f"(pass overwrite to replace it)"
                )
        if self.partial.exists() and self._resumable():
            self._done = set(self._read_progress())
            return
        if self.partial.exists():
            raise StoreError(
                f"{self.partial}: found an interrupted store written by another run "
                f"(kind/fingerprint differ from {kind!r}/{fingerprint!r}); remove it to start again"
            )
        self._create(template, attrs or {}, encoding or {})
        self._done = set()

    # ---- creation and resume ------------------------------------------------------
    def _create(self, template: xr.Dataset, attrs: Mapping, encoding: Mapping) -> None:
        ds = template.copy()
        ds.attrs.update(attrs)
        ds.attrs.update(
            {
                STATUS_KEY: "incomplete",
                KIND_KEY: self.kind,
                FINGERPRINT_KEY: self.fingerprint,
                VERSION_KEY: __version__,
            }
        )
        enc = {name: dict(encoding.get(name, {})) for name in ds.variables}
        for name, var in ds.data_vars.items():
            if self.dim in var.dims and "chunks" not in enc[name]:
                enc[name]["chunks"] = tuple(
                    self.chunk if d == self.dim else var.sizes[d] for d in var.dims
                )
        # Created under a third name and renamed: a run killed while creating leaves no
        # ``.partial`` without its kind and fingerprint (which no later run could resume).
        creating = self.partial.with_name(self.partial.name + ".creating")
        if creating.exists():
            shutil.rmtree(creating)
        # Metadata only (compute=False); static variables without ``dim`` are written now.
        ds.to_zarr(
            creating, mode="w", compute=False, zarr_format=3, encoding=enc, consolidated=False
        )
        # Everything without ``dim`` (static fields, 2-D lat/lon coordinates) is written now.
        static = ds.drop_dims(self.dim)
        if static.variables:
            static.to_zarr(creating, mode="r+", zarr_format=3, consolidated=False)
        _atomic_write_text(self.progress_file, json.dumps({"done": []}))
        os.replace(creating, self.partial)

    def _resumable(self) -> bool:
        try:
            attrs = zarr.open_group(str(self.partial), mode="r").attrs
        except (FileNotFoundError, ValueError, KeyError):
            return False
        return attrs.get(KIND_KEY) == self.kind and attrs.get(FINGERPRINT_KEY) == self.fingerprint

    def _read_progress(self) -> list[int]:
        file = self.progress_file
        if not file.exists():
            return []
        try:
            return list(json.loads(file.read_text())["done"])
        except (json.JSONDecodeError, KeyError) as err:
            raise StoreError(
                f"{file}: expected a progress record, found a corrupt file ({err})"
            ) from err

    # ---- writing ------------------------------------------------------------------
    def chunk_slice(self, index: int) -> slice:
        if not 0 <= index < self.n_chunks:
            raise IndexError(f"chunk {index} outside 0..{self.n_chunks - 1}")
        return slice(index * self.chunk, min((index + 1) * self.chunk, self.length))

    def pending(self) -> list[int]:
        """Chunk indices still to write (all of them on a fresh store)."""
        return [i for i in range(self.n_chunks) if i not in self._done]

    @property
    def done(self) -> set[int]:
        return set(self._done)

    def write(self, index: int, ds: xr.Dataset) -> None:
        """Write chunk ``index``: ``ds`` covers exactly ``chunk_slice(index)`` along ``dim``."""
        write_region(
            self.partial, ds, self.dim, self.chunk_slice(index), where=f"{self.path}: chunk {index}"
        )
        self.mark_done(index)

    def mark_done(self, index: int) -> None:
        """Record chunk ``index`` as written (after :func:`write_region` returned for it).

        Only the process that owns the writer records progress; workers of a distributed
        run write their regions and report back (``kmscale.data.distributed``).
        """
        self._done.add(index)
        _atomic_write_text(self.progress_file, json.dumps({"done": sorted(self._done)}))

    def update_attrs(self, attrs: Mapping) -> None:
        """Add global attributes (e.g. statistics known only at the end)."""
        group = zarr.open_group(str(self.partial), mode="r+")
        group.attrs.update(_jsonable(attrs))

    def finalize(self) -> Path:
        """Mark complete and move to the final name. Raises if chunks are missing."""
        missing = self.pending()
        if missing:
            raise StoreError(
                f"{self.partial}: expected all {self.n_chunks} chunks written before finalize, "
                f"missing {missing[:10]}{'...' if len(missing) > 10 else ''}"
            )
        self.update_attrs({STATUS_KEY: "complete"})
        consolidate(self.partial)
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.partial, self.path)
        self.progress_file.unlink(missing_ok=True)
        return self.path


def write_region(
    partial: str | Path, ds: xr.Dataset, dim: str, sl: slice, *, where: str = ""
) -> None:
    """Write ``ds`` (covering exactly ``sl`` along ``dim``) into the store at ``partial``.

    Regions of different chunks touch different zarr chunks, so writers in several
    processes (or machines sharing the file system) can fill one store together. A
    ``ds`` without variables along ``dim`` (a stage that wrote the chunk's data itself,
    piece by piece, e.g. ``kmscale sample`` member by member) writes nothing.
    """
    if ds.sizes.get(dim) != sl.stop - sl.start:
        raise StoreError(
            f"{where or partial}: expected {sl.stop - sl.start} steps along {dim!r}, "
            f"found {ds.sizes.get(dim)}"
        )
    keep = [n for n, v in ds.data_vars.items() if dim in v.dims]
    if not keep:
        return
    part = ds[keep]
    part = part.drop_vars([c for c in part.coords if dim not in part[c].dims])
    part.to_zarr(partial, region={dim: sl}, mode="r+", zarr_format=3, consolidated=False)


def _jsonable(attrs: Mapping) -> dict:
    def conv(v):
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return {str(k): conv(v) for k, v in attrs.items()}


def open_store(
    path: str | Path, *, kind: str | None = None, fingerprint: str | None = None, chunks="auto"
) -> xr.Dataset:
    """Open a complete kmscale store lazily, checking what wrote it.

    Raises:
        StoreError: no store, an interrupted (``.partial``/incomplete) store, or a store of
            another kind or fingerprint than expected.
    """
    path = Path(path)
    if not path.exists():
        hint = (
            " (an interrupted run left a .partial store: run again to resume)"
            if partial_path(path).exists()
            else ""
        )
        raise StoreError(f"{path}: expected a kmscale zarr store, found nothing{hint}")
    try:
        ds = xr.open_zarr(path, zarr_format=3, consolidated=None, chunks=chunks)
    except (FileNotFoundError, ValueError, KeyError, OSError) as err:
        raise StoreError(
            f"{path}: expected a zarr v3 store, found an unreadable one ({err})"
        ) from err
    status = ds.attrs.get(STATUS_KEY)
    if status != "complete":
        raise StoreError(f"{path}: expected a complete store, found status {status!r}")
    if kind is not None and ds.attrs.get(KIND_KEY) != kind:
        raise StoreError(f"{path}: expected a {kind!r} store, found {ds.attrs.get(KIND_KEY)!r}")
    if fingerprint is not None and ds.attrs.get(FINGERPRINT_KEY) != fingerprint:
        raise StoreError(
            f"{path}: expected a store written with fingerprint {fingerprint!r}, "
            f"found {ds.attrs.get(FINGERPRINT_KEY)!r}"
        )
    return ds


def store_nbytes(path: str | Path) -> int:
    """Bytes on disk of a store (all files below it): what compression ratios count."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
