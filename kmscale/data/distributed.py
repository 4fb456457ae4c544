"""Per-time stages on many workers: dask.distributed runs the time chunks of one store.

A per-time stage (prepare, encode, decode, sample) writes a store chunk by chunk along
``time`` with :class:`kmscale.data.store.StoreWriter`.  With a scheduler, each pending
chunk becomes one dask.distributed task: a worker computes the chunk and writes its
region of the shared ``.partial`` store (``write_region``); this process records the chunk
as done when the task reports back, and finalizes the store once every chunk is in.  The
atomic/resumable rules are the single-process ones: a chunk counts only once recorded, a
killed worker's chunk is simply written again on the next run, and the store gets its
final name only when complete.  Each chunk is computed by the same code on the same
inputs (member seeds depend on the valid time, not on the worker), so the store is the
single-process one bit for bit.

A reducing stage (``kmscale score``) maps its time chunks with :func:`map_in_order` and
reduces the results in time order, as the single-process run does.

The ``--scheduler`` value:

- absent: everything in this process (the default);
- ``local`` or ``local:N``: a ``LocalCluster`` of N single-threaded worker processes
  (default: one per CPU core) on this machine;
- an address (``tcp://host:8786``) or a scheduler file (``scheduler.json``): an existing
  cluster, e.g. ``dask scheduler`` plus ``dask worker`` on several machines or
  dask-jobqueue on HPC; every worker must see the stores on a shared file system.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kmscale.errors import ConfigError

if TYPE_CHECKING:  # the CLI modules import this one: standard library only at top level
    import xarray as xr

SCHEDULER_HELP = (
    "run the time chunks on dask.distributed workers: 'local[:N]' starts N worker processes "
    "here; an address (tcp://host:8786) or scheduler file joins a running cluster (shared file "
    "system). Default: this process"
)

ChunkFn = Callable[[int, slice], "xr.Dataset"]
"""``compute(index, time_slice) -> dataset of that chunk`` (what the stage writes)."""


def add_scheduler_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--scheduler ADDRESS|local[:N]`` to a per-time stage's parser."""
    parser.add_argument(
        "--scheduler", default=None, metavar="ADDRESS|local[:N]", help=SCHEDULER_HELP
    )


@contextlib.contextmanager
def connect(scheduler: str | None) -> Iterator[object | None]:
    """A ``distributed.Client`` for ``scheduler`` (None: yields None, nothing started).

    The client is not made dask's default scheduler: this process's own dask work (lazy
    reads, checks) stays local; only the chunk tasks go to the workers.

    Raises:
        ConfigError: an unparsable ``local:N`` or an unreachable address.
    """
    if not scheduler:
        yield None
        return
    from distributed import Client, LocalCluster

    # the cluster's per-worker INFO lines would drown the stage's own output
    logging.getLogger("distributed").setLevel(max(logging.WARNING, logging.getLogger().level))
    if scheduler == "local" or scheduler.startswith("local:"):
        text = scheduler.partition(":")[2]
        try:
            n = int(text) if text else (os.cpu_count() or 1)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(
                f"--scheduler: expected local or local:N with N >= 1, found {scheduler!r}"
            )
        with (
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster, set_as_default=False) as client,
        ):
            yield client
        return
    kwargs = {"scheduler_file": scheduler} if Path(scheduler).is_file() else {"address": scheduler}
    try:
        client = Client(**kwargs, set_as_default=False, timeout="30s")
    except (OSError, TimeoutError) as err:
        raise ConfigError(
            f"--scheduler: expected a reachable dask scheduler at {scheduler!r}, found none ({err})"
        ) from err
    with client:
        yield client


def _synchronous(fn: Callable, shared: object, item: object) -> object:
    """Worker side: ``fn(shared, item)`` with its lazy reads in this task (no nested tasks)."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        return fn(shared, item)


def map_in_order(
    client, fn: Callable[[object, object], object], shared: object, items: Sequence, *, name: str
) -> Iterator:
    """``fn(shared, item)`` for every item, as tasks on ``client``'s workers.

    All tasks are submitted at once (they run concurrently); the results are yielded in the
    order of ``items``, so a caller reducing them in that order gets the single-process
    reduction bit for bit.  ``shared`` (models, lazy inputs) goes to every worker once.
    A failed task re-raises its error here.
    """
    run = uuid.uuid4().hex[:8]  # task keys unique per run on a long-lived cluster
    remote = client.scatter(shared, broadcast=True, hash=False)
    futures = [
        client.submit(_synchronous, fn, remote, item, key=f"kmscale-{name}-{run}-{i}")
        for i, item in enumerate(items)
    ]
    for future in futures:
        yield future.result()
        future.release()  # the worker drops the result once it is here


def _compute_and_write(compute: ChunkFn, partial: str, dim: str, index: int, sl: slice) -> int:
    """Worker side: compute chunk ``index`` and write its region; return its index."""
    import dask

    from kmscale.data.store import write_region

    # the chunk's own lazy reads run here, in this task, not as nested cluster tasks
    with dask.config.set(scheduler="synchronous"):
        write_region(partial, compute(index, sl), dim, sl, where=f"{partial}: chunk {index}")
    return index


def run_chunks(
    writer,
    compute: ChunkFn,
    *,
    scheduler: str | None = None,
    pending: Sequence[int] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> None:
    """Compute and write the pending chunks of ``writer``, here or on dask workers.

    Args:
        writer: an open :class:`kmscale.data.store.StoreWriter`.
        compute: ``compute(index, slice)`` -> the chunk's dataset; with a scheduler it is
            pickled (cloudpickle) to the workers together with what it closes over.
        scheduler: see the module docstring.
        pending: the chunks to do (default ``writer.pending()``).
        on_done: called with each chunk's index once it is recorded (progress bars).

    A failed chunk re-raises its error here after the chunks already written are
    recorded, so a rerun resumes after them.
    """
    pending = list(writer.pending() if pending is None else pending)
    with connect(scheduler) as client:
        if client is None:
            for index in pending:
                writer.write(index, compute(index, writer.chunk_slice(index)))
                if on_done is not None:
                    on_done(index)
            return
        from distributed import as_completed

        run = uuid.uuid4().hex[:8]  # task keys unique per run on a long-lived cluster
        # ship ``compute`` (models, lazy inputs) to every worker once, not once per task
        shared = client.scatter(compute, broadcast=True, hash=False)
        futures = [
            client.submit(
                _compute_and_write,
                shared,
                str(writer.partial),
                writer.dim,
                i,
                writer.chunk_slice(i),
                key=f"kmscale-{writer.partial.name}-{run}-{i}",
            )
            for i in pending
        ]
        index_of = {f.key: i for f, i in zip(futures, pending, strict=True)}
        error: BaseException | None = None
        cancelled: list[str] = []
        for future in as_completed(futures, loop=client.loop):  # (the client is not the default)
            if future.status == "error":
                error = error or future.exception()
                continue
            if future.status != "finished":
                # a worker that died held the scattered ``compute``: the scheduler cancels
                # the tasks that needed it; the task that killed it reports the cause
                cancelled.append(future.key)
                continue
            # a finished task has written its region; its result (the index) is not fetched:
            # the worker holding it may die before the gather (the result is then lost, the
            # write is not)
            index = index_of[future.key]
            writer.mark_done(index)
            if on_done is not None:
                on_done(index)
        if error is not None:
            raise error
        if cancelled:
            raise RuntimeError(
                f"{writer.partial}: {len(cancelled)} chunk task(s) were cancelled by the dask "
                "scheduler (a worker died or the cluster was shut down); the chunks already "
                "written are recorded: run again to resume"
            )
