"""dask.distributed for the per-time stages: a 2-worker cluster writes the single-process
store bit for bit, resumes an interrupted run, and reports a failed chunk."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_bundle import make_bundle  # noqa: E402

from kmscale.data.distributed import connect  # noqa: E402
from kmscale.data.store import open_store, partial_path  # noqa: E402
from kmscale.errors import ConfigError  # noqa: E402

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded workers in this process (fast to start on a CI runner)."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as c:
        yield c.scheduler_address


def test_sample_on_two_workers_is_bit_identical(cluster, tmp_path):
    from kmscale.diffusion.pipeline import DownscalingPipeline, SamplerSettings

    bundle, coarse = make_bundle()
    pipe, pred = DownscalingPipeline(bundle), coarse.isel(time=slice(0, 4))
    settings = SamplerSettings(members=2, steps=2, time_chunk=1)
    one = pipe.run(pred, tmp_path / "one.zarr", settings, progress=False)
    # an interrupted distributed run resumes (on the cluster) to the same store
    assert (
        pipe.run(
            pred, tmp_path / "two.zarr", settings, progress=False, max_chunks=1, scheduler=cluster
        )
        is None
    )
    assert partial_path(tmp_path / "two.zarr").exists()
    two = pipe.run(pred, tmp_path / "two.zarr", settings, progress=False, scheduler=cluster)
    a, b = open_store(one, kind="ensemble"), open_store(two, kind="ensemble")
    np.testing.assert_array_equal(a["t2m"].values, b["t2m"].values)
    assert a.attrs["kmscale_member_seeds"] == b.attrs["kmscale_member_seeds"]


def test_bad_scheduler_specs():
    for spec in ("local:0", "local:x"):
        with pytest.raises(ConfigError, match="local:N"), connect(spec):
            pass
    with connect(None) as client:
        assert client is None


def test_encode_and_decode_on_two_workers_are_bit_identical(cluster, tmp_path):
    from test_latent_store import targets, vae

    from kmscale.autoencoders.latent_store import decode_store, encode_to_store

    ds, model = targets(n_time=6, shape=(16, 16)), vae()
    stores = {}
    for name, scheduler in (("one", None), ("two", cluster)):
        lat = encode_to_store(
            model, ds, tmp_path / f"{name}.zarr", chunk=2, progress=False, scheduler=scheduler
        )
        dec = decode_store(
            lat, model, tmp_path / f"{name}_dec.zarr", progress=False, scheduler=scheduler
        )
        stores[name] = (open_store(lat, kind="latents"), open_store(dec, kind="targets"))
    for a, b in zip(stores["one"], stores["two"], strict=True):
        for v in a.data_vars:
            np.testing.assert_array_equal(a[v].values, b[v].values)


def test_a_failed_chunk_is_reported_and_the_rest_is_kept(cluster, tmp_path):
    import xarray as xr

    from kmscale.data.distributed import run_chunks
    from kmscale.data.store import StoreWriter

    full = xr.Dataset({"a": (("time",), np.arange(6.0))}, coords={"time": np.arange(6)})
    writer = StoreWriter(tmp_path / "s.zarr", full, kind="test", chunk=2)

    def compute(index, sl):
        if index == 1:
            raise ValueError("chunk 1 is broken")
        return full.isel(time=sl)

    with pytest.raises(ValueError, match="chunk 1 is broken"):
        run_chunks(writer, compute, scheduler=cluster)
    assert StoreWriter(tmp_path / "s.zarr", full, kind="test", chunk=2).pending() == [1]


def test_score_on_two_workers_is_bit_identical(cluster, tmp_path):
    from test_eval_scoring import datasets

    from kmscale.evaluation.scoring import ScoreOptions, score

    fc, truth = datasets(np.random.default_rng(3))
    opts = ScoreOptions(masks=["land_sea_mask"], time_chunk=2, map_time=3)
    one = score({"a": fc, "b": fc + 0.5}, truth, opts, progress=False)
    two = score({"a": fc, "b": fc + 0.5}, truth, opts, progress=False, scheduler=cluster)
    assert list(one.data_vars) == list(two.data_vars)
    for v in one.variables:
        np.testing.assert_array_equal(one[v].values, two[v].values, err_msg=v)
    assert one.attrs == two.attrs


@pytest.mark.slow
def test_a_killed_worker_is_recovered_by_rerunning(tmp_path):
    """A worker process killed (SIGKILL) while it computes a chunk fails the run with no
    complete-looking store; running again finishes the store, identical to an uninterrupted
    single-process one."""
    import os
    import signal

    import dask
    import xarray as xr

    from kmscale.data.distributed import run_chunks
    from kmscale.data.store import StoreError, StoreWriter

    rng = np.random.default_rng(0)
    full = xr.Dataset(
        {"a": (("time", "y", "x"), rng.standard_normal((8, 4, 5)).astype("float32"))},
        coords={"time": np.arange(8)},
    )

    def writer(name):
        return StoreWriter(tmp_path / name, full, kind="test", fingerprint="f", chunk=2)

    def killing(index, sl):  # the worker dies in chunk 2 (cloudpickled by value: a closure)
        if index == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return full.isel(time=sl)

    reference = writer("one.zarr")
    run_chunks(reference, lambda i, sl: full.isel(time=sl))
    reference.finalize()
    # dask reschedules a dead worker's task elsewhere up to allowed-failures times; 0 makes
    # the first death fail the run (the worst case: nothing recovered it within the run)
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as c,
    ):
        w = writer("two.zarr")
        with pytest.raises(distributed.KilledWorker):
            run_chunks(w, killing, scheduler=c.scheduler_address)
        with pytest.raises(StoreError, match="run again to resume"):
            open_store(tmp_path / "two.zarr")
        w = writer("two.zarr")
        # chunk 2 and whatever else the dead worker held are redone
        assert 2 in w.pending()
        run_chunks(w, lambda i, sl: full.isel(time=sl), scheduler=c.scheduler_address)
        w.finalize()
    a, b = open_store(tmp_path / "one.zarr"), open_store(tmp_path / "two.zarr")
    np.testing.assert_array_equal(a["a"].values, b["a"].values)
    assert a.attrs == b.attrs
