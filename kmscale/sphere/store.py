"""CF-style HEALPix stores: an ``xr.Dataset`` with a ``cell`` dim and the grid's attributes.

Attributes (after the CF HEALPix grid-mapping proposal): ``grid_mapping_name: healpix``,
``healpix_nside``, ``healpix_order: nested``, ``refinement_level``. Written atomically with
the project's ``StoreWriter`` (temporary name, rename on completion).
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from kmscale.data.store import StoreWriter, open_store
from kmscale.errors import SchemaError, describe
from kmscale.sphere.healpix import HealpixGrid, nside_from_npix

KIND = "healpix"


def check_healpix_dataset(ds: xr.Dataset | xr.DataArray, nside: int | None = None) -> HealpixGrid:
    """The dataset's HEALPix grid; SchemaError for a missing ``cell`` dim, another ordering,
    attributes that disagree with the cell count, or another nside than ``nside``."""
    if "cell" not in ds.dims:
        raise SchemaError(describe("a 'cell' dim", tuple(ds.dims), where="HEALPix dataset"))
    order = ds.attrs.get("healpix_order")
    if order != "nested":
        raise SchemaError(describe("healpix_order 'nested'", repr(order), where="HEALPix dataset"))
    found = nside_from_npix(ds.sizes["cell"])
    attr = ds.attrs.get("healpix_nside")
    if attr != found:
        raise SchemaError(
            describe(
                f"healpix_nside {found} (from {ds.sizes['cell']} cells)",
                repr(attr),
                where="HEALPix dataset",
            )
        )
    if nside is not None and found != nside:
        raise SchemaError(describe(f"nside {nside}", f"nside {found}", where="HEALPix dataset"))
    return HealpixGrid(found)


def write_healpix_store(
    ds: xr.Dataset, path: str | Path, *, overwrite: bool = False, fingerprint: str = ""
) -> Path:
    """Write a HEALPix dataset to a zarr v3 store atomically (one chunk along its first
    non-cell dim, or along ``cell`` for a single field)."""
    grid = check_healpix_dataset(ds)
    ds = ds.assign_attrs(grid.attrs())
    dim = next((d for d in ds.dims if d != "cell"), "cell")
    writer = StoreWriter(
        path,
        ds,
        kind=KIND,
        fingerprint=fingerprint,
        dim=dim,
        chunk=ds.sizes[dim],
        overwrite=overwrite,
    )
    for i in writer.pending():
        writer.write(i, ds.isel({dim: writer.chunk_slice(i)}))
    return writer.finalize()


def open_healpix_store(path: str | Path, *, nside: int | None = None) -> xr.Dataset:
    """Open a complete HEALPix store, checking its grid (and ``nside`` when given)."""
    ds = open_store(path, kind=KIND)
    check_healpix_dataset(ds, nside)
    return ds
