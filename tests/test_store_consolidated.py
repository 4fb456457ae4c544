"""Stores written by kmscale carry consolidated metadata (xarray opens them without warning),
and a run killed while creating a store leaves nothing a later run cannot resume."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import xarray as xr

from kmscale.data.store import StoreWriter, open_store


def _dataset(n: int = 5) -> xr.Dataset:
    rng = np.random.default_rng(0)
    return xr.Dataset(
        {
            "t2m": (("time", "y", "x"), rng.random((n, 4, 3), dtype=np.float32), {"units": "K"}),
            "orography": (("y", "x"), rng.random((4, 3), dtype=np.float32)),
        },
        coords={
            "time": pd.date_range("2020", periods=n, freq="h"),
            "y": np.arange(4.0),
            "x": np.arange(3.0),
        },
    )


def test_finalized_store_is_consolidated_and_opens_without_warnings(tmp_path):
    full = _dataset()
    path = tmp_path / "s.zarr"
    writer = StoreWriter(path, full, kind="targets", fingerprint="a", chunk=2)
    for i in writer.pending():
        writer.write(i, full.isel(time=writer.chunk_slice(i)))
    writer.finalize()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = xr.open_zarr(path)  # what a user types
        strict = xr.open_zarr(path, consolidated=True)  # fails without consolidated metadata
        ours = open_store(path, kind="targets")
    for ds in (plain, strict, ours):
        xr.testing.assert_equal(ds.load().drop_attrs(), full.drop_attrs())
    assert strict.attrs["kmscale_status"] == "complete"


def test_a_store_killed_while_being_created_is_created_again(tmp_path):
    from kmscale.data.store import partial_path

    full = _dataset()
    path = tmp_path / "s.zarr"
    creating = partial_path(path).with_name(partial_path(path).name + ".creating")
    creating.mkdir()  # what a SIGKILL during creation leaves: no attributes, no progress
    (creating / "zarr.json").write_text("{")
    writer = StoreWriter(path, full, kind="targets", fingerprint="a", chunk=2)
    assert not creating.exists() and partial_path(path).exists() and writer.pending() == [0, 1, 2]
