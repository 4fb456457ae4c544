"""The ensemble store of ``kmscale sample``: layout, provenance, member writes, seam check.

Layout: one variable per target field, dims (time, member, lat, lon), zarr chunks of one
valid time x one member x spatial blocks of at most :data:`MAX_SPATIAL_CHUNK` pixels a
side. One (time, member) field is therefore a whole number of zarr chunks, so the
pipeline writes each member as soon as it is decoded (:func:`write_member`) and never
holds more than one member's physical fields, whatever the grid size or ensemble size.
The time chunk of :class:`~kmscale.data.store.StoreWriter` (``time_chunk`` valid times)
stays the unit of resume: a chunk counts as written only when all its members are in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import xarray as xr

from kmscale.diffusion.settings import SamplerSettings
from kmscale.evaluation.seams import SeamStats

SEED_RULE = "seed(t, m) = member_seeds[m] * 1000003 + hours_since_1970(t)"
SEAM_KEY = "kmscale_seam_ratio"  # per variable; null where no tile edges exist
MAX_SPATIAL_CHUNK = 2048  # pixels per zarr chunk side (4384 x 6880: 3 x 4 chunks)


def spatial_chunk(n: int, limit: int = MAX_SPATIAL_CHUNK) -> int:
    """Chunk length splitting ``n`` pixels into the fewest near-equal parts <= ``limit``."""
    parts = -(-int(n) // int(limit))
    return -(-int(n) // parts)


def template(
    variables: Sequence[str],
    time: np.ndarray,
    members: int,
    lat: np.ndarray,
    lon: np.ndarray,
    lead: np.ndarray | None,
) -> xr.Dataset:
    """Full-size lazy template of the ensemble store (dims time, member, lat, lon)."""
    import dask.array as da

    from kmscale.data.variables import lookup
    from kmscale.errors import SchemaError

    coords = {
        "time": ("time", time, {"standard_name": "time", "long_name": "valid time"}),
        "member": ("member", np.arange(members, dtype=np.int32), {"long_name": "ensemble member"}),
        "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
        "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"}),
    }
    if lead is not None:
        coords["lead_time"] = (
            "time",
            lead.astype(np.float32),
            {"units": "hours", "long_name": "forecast lead time"},
        )
    shape = (len(time), members, lat.size, lon.size)
    data_vars = {}
    for name in variables:
        try:
            attrs = lookup(name).cf_attrs()
        except SchemaError:
            attrs = {"long_name": name}
        chunks = chunk_shape(lat.size, lon.size)
        data_vars[name] = (
            ("time", "member", "lat", "lon"),
            da.zeros(shape, dtype=np.float32, chunks=chunks),
            attrs,
        )
    return xr.Dataset(data_vars, coords=coords)


def chunk_shape(ny: int, nx: int) -> tuple[int, int, int, int]:
    """Zarr chunks (time, member, lat, lon) of an ensemble variable (module docstring)."""
    return (1, 1, spatial_chunk(ny), spatial_chunk(nx))


def encoding(variables: Sequence[str], ny: int, nx: int) -> dict[str, dict]:
    """StoreWriter encoding giving every variable the chunks of :func:`chunk_shape`."""
    return {name: {"chunks": chunk_shape(ny, nx)} for name in variables}


def provenance(
    bundle,
    settings: SamplerSettings,
    member_seeds: list[int],
    resolved_config: Mapping | None,
) -> dict:
    """CF and provenance attributes of the store (bundle, sampler, seeds, command)."""
    return {
        "Conventions": "CF-1.10",
        "title": "kmscale downscaled ensemble",
        "kmscale_bundle_fingerprint": bundle.fingerprint(),
        "kmscale_bundle_data_fingerprint": bundle.data_fingerprint,
        "kmscale_autoencoder": type(bundle.autoencoder).registry_name,
        "kmscale_sampler": json.dumps(asdict(settings)),
        "kmscale_member_seeds": member_seeds,
        "kmscale_seed_rule": SEED_RULE,
        "kmscale_config": json.dumps(dict(resolved_config or {}), default=str),
    }


def fingerprint(bundle, settings: SamplerSettings, time: np.ndarray) -> str:
    """Identity of a sampling job (a partial store resumes only the same job)."""
    key = [bundle.fingerprint(), asdict(settings), str(time[0]), str(time[-1]), len(time)]
    return hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:16]


def write_member(
    partial: str | Path, variables: Sequence[str], t: int, m: int, fields: np.ndarray
) -> None:
    """Write member ``m`` at time index ``t``: ``fields`` (C, H, W) in variable order.

    The region covers whole zarr chunks (:func:`chunk_shape`), so members written by
    different processes never touch the same chunk.
    """
    ds = xr.Dataset(
        {
            name: (("time", "member", "lat", "lon"), fields[None, None, c])
            for c, name in enumerate(variables)
        }
    )
    region = {"time": slice(t, t + 1), "member": slice(m, m + 1)}
    ds.to_zarr(partial, region=region, mode="r+", zarr_format=3, consolidated=False)


def seam_diagnostic(
    partial: str | Path,
    variables: Sequence[str],
    edges: tuple[np.ndarray, np.ndarray],
) -> dict[str, float | None]:
    """Seam ratio per variable (:mod:`kmscale.evaluation.seams`) over every written field.

    Reads the store one (time, member) field at a time, so memory stays one field.
    Returns None per variable when there are no tile edges (whole-field sampling).
    """
    if not (len(edges[0]) or len(edges[1])):
        return dict.fromkeys(variables)
    ds = xr.open_zarr(partial, zarr_format=3, consolidated=False)
    out: dict[str, float | None] = {}
    for name in variables:
        stats = SeamStats(*edges)
        var = ds[name]
        for t in range(var.sizes["time"]):
            for m in range(var.sizes["member"]):
                stats.add(var.isel(time=t, member=m).values)
        out[name] = None if np.isnan(stats.ratio) else round(stats.ratio, 4)
    return out
