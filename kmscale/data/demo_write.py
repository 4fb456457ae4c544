"""Write the demo dataset to disk: targets, predictors and static fields, CF-described.

Zarr output goes through :class:`~kmscale.data.store.StoreWriter` (atomic, resumable
write by write, refuses to resume another run's store); NetCDF output is written to a
temporary file and renamed. Both stream: one time step of a full-grid field is computed
chunk by chunk (dask) and written before the next one starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from kmscale import __version__
from kmscale.data.demo import (
    DEFAULT_CHUNK,
    DemoRegion,
    demo_predictors,
    demo_static,
    demo_targets,
)
from kmscale.data.store import StoreWriter, open_store
from kmscale.errors import ConfigError, StoreError

logger = logging.getLogger(__name__)

FORMATS = ("zarr", "netcdf")
# Values (about 64 MiB of float32) one write of a zarr store covers at most: a region whose
# time step is smaller writes several steps at once (each to_zarr call costs about 0.1 s
# of dask and zarr overhead, most of the writing time of a 64 x 64 region).
WRITE_VALUES = 2**24


def demo_fingerprint(
    kind: str, region: DemoRegion, times: Sequence, seed: int, lead_time_hours: int
) -> str:
    """Identity of one demo output (what a kept or resumed store must match).

    Static fields depend on the region only; targets also on times and seed; predictors
    also on the lead time.
    """
    spec: dict[str, object] = {
        "kind": kind,
        "region": [region.row0, region.col0, region.ny, region.nx],
        "generator": __version__,
    }
    if kind != "static":
        spec["times"] = [str(t) for t in np.asarray(times, dtype="datetime64[s]")]
        spec["seed"] = int(seed)
    if kind == "predictors":
        spec["lead_time_hours"] = int(lead_time_hours)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _encoding(ds: xr.Dataset, chunk: int) -> dict[str, dict]:
    """zarr chunks: one time step x chunk x chunk pixels (the whole axis when shorter)."""
    return {
        name: {"chunks": tuple(1 if d == "time" else min(chunk, n) for d, n in var.sizes.items())}
        for name, var in ds.data_vars.items()
    }


def write_zarr_store(
    ds: xr.Dataset, path: Path, kind: str, fingerprint: str, chunk: int, overwrite: bool
) -> Path:
    """Write ``ds`` to a resumable zarr store of ``kind``, chunked 1 x chunk x chunk.

    Time-dependent fields are written a few time steps at a time (as many as fit in
    :data:`WRITE_VALUES`; one on a full-size grid; each computed chunk by chunk with dask),
    static ones in bands of ``chunk`` rows; a tqdm bar shows progress.
    """
    if "time" in ds.dims:
        per_step = sum(v.size // v.sizes["time"] for v in ds.data_vars.values() if "time" in v.dims)
        dim, step = "time", max(1, WRITE_VALUES // max(per_step, 1))
    else:
        dim, step = "lat", chunk
    enc = _encoding(ds, chunk)
    # dask chunks must not straddle zarr chunks: give every variable the store's chunking
    ds = ds.chunk({d: (1 if d == "time" else min(chunk, n)) for d, n in ds.sizes.items()})
    writer = StoreWriter(
        path,
        ds,
        kind=kind,
        fingerprint=fingerprint,
        dim=dim,
        chunk=step,
        encoding=enc,
        overwrite=overwrite,
    )
    todo = writer.pending()
    if len(todo) < writer.n_chunks:
        logger.info(
            "%s: resuming, %d of %d chunks already written",
            path,
            writer.n_chunks - len(todo),
            writer.n_chunks,
        )
    unit = "time step" if dim == "time" else "row"
    written = ds.sizes[dim] - sum(_length(writer.chunk_slice(i)) for i in todo)
    with tqdm(total=ds.sizes[dim], initial=written, desc=f"demo {kind}", unit=unit) as bar:
        for i in todo:
            sl = writer.chunk_slice(i)
            writer.write(i, ds.isel({dim: sl}))
            bar.update(_length(sl))
    return writer.finalize()


def _length(sl: slice) -> int:
    return sl.stop - sl.start


def _write_netcdf(ds: xr.Dataset, path: Path, desc: str, overwrite: bool) -> Path:
    if path.exists() and not overwrite:
        raise StoreError(
            f"{path}: expected no file at the output path, found one (remove it first)"
        )
    tmp = path.with_name(path.name + ".partial")
    enc = {name: {"zlib": True, "complevel": 4} for name in ds.data_vars}
    delayed = ds.to_netcdf(tmp, engine="netcdf4", encoding=enc, compute=False)
    if delayed is not None:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc=desc, unit="task"):
            delayed.compute()
    os.replace(tmp, path)
    return path


def write_demo(
    out_dir: str | Path,
    region: DemoRegion,
    times: Sequence,
    *,
    seed: int = 0,
    lead_time_hours: int = 24,
    fmt: str = "zarr",
    chunk: int = DEFAULT_CHUNK,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write ``targets``, ``predictors`` and ``static`` of the demo dataset under ``out_dir``.

    Args:
        out_dir: output folder (created).
        region, times, seed: what to generate (see :mod:`kmscale.data.demo`).
        lead_time_hours: forecast lead of the predictors (hours).
        fmt: "zarr" (resumable stores) or "netcdf".
        chunk: spatial chunk (px) of computation and of the zarr stores.
        overwrite: replace existing outputs; otherwise complete zarr stores of the same
            dataset are kept, interrupted ones resumed, and anything else is an error.

    Returns:
        {"targets": path, "predictors": path, "static": path}.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {FORMATS}, found {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Generators, called only for outputs not already complete (small regions are
    # computed eagerly, which costs as much as writing them).
    parts = {
        "static": lambda: demo_static(region, chunk=chunk),
        "targets": lambda: demo_targets(region, times, seed, chunk=chunk),
        "predictors": lambda: demo_predictors(
            region, times, lead_time_hours, seed, chunk=max(500, (chunk // 25) * 25)
        ),
    }
    paths = {}
    for kind, make in parts.items():
        fp = demo_fingerprint(kind, region, times, seed, lead_time_hours)
        if fmt == "netcdf":
            ds = make()
            ds.attrs["kmscale_demo_fingerprint"] = fp
            paths[kind] = _write_netcdf(
                ds, out_dir / f"{kind}.nc", desc=f"demo {kind}", overwrite=overwrite
            )
            continue
        path = out_dir / f"{kind}.zarr"
        if path.exists() and not overwrite:
            # the same dataset already written (complete, same kind and fingerprint) or an error
            try:
                open_store(path, kind=kind, fingerprint=fp)
            except StoreError as err:
                raise StoreError(
                    f"{err} (another demo dataset is there: pass --overwrite to replace it)"
                ) from err
            logger.info("%s: already complete, kept", path)
            paths[kind] = path
            continue
        ds = make()
        ds.attrs["kmscale_demo_fingerprint"] = fp
        paths[kind] = write_zarr_store(ds, path, kind, fp, chunk, overwrite)
    return paths
