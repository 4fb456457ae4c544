"""Scale benchmark (issue 19): distributed sampling, fault injection, fuzzed reader inputs.

Writes ``benchmarks/results/scale.json`` with

- ``distributed``: ``kmscale sample``'s pipeline on the tiny synthetic bundle of the tests
  (16 x 24 grid, ``--times`` valid times, ``--members`` members, ``--steps`` EDM steps,
  one time step per chunk) run in one process, on a 1-worker and on a 2-worker
  ``LocalCluster`` (worker processes, one thread each), side by side in one run:
  ``identical`` (the 2-worker store equals the single-process one bit for bit) and
  ``speedup_2_workers`` (1-worker wall time / 2-worker wall time; clusters started before
  the clock);
- ``fault_injection``: ``benchmarks/fault_injection.py`` with ``--fault-trials`` trials per
  stage;
- ``fuzz``: ``--fuzz-examples`` hypothesis examples of ``tests/_fuzz_readers.py``:
  inputs tried, outcomes, unhandled exceptions (anything that is neither a kmscale typed
  error nor the right numbers).

Every input is synthetic and no setting is chosen from results (there is no
validation/test split to speak of).  Full-grid sampling and streaming training are not
measured here.  Settings are the argparse defaults below; run with ``nice`` on a shared
machine: ``nice python benchmarks/scale.py``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MEASURED_KEYS = ("full_grid_sampling", "distributed", "fault_injection", "fuzz", "streaming")
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def distributed_sampling(times: int, members: int, steps: int, work: Path) -> dict:
    """Single process vs 1 and 2 dask workers on the same sampling job."""
    from _downscaling_data import synthetic
    from distributed import Client, LocalCluster
    from test_bundle import make_bundle

    from kmscale.data.store import open_store
    from kmscale.diffusion.pipeline import DownscalingPipeline, SamplerSettings

    bundle, _ = make_bundle()
    _, coarse, _ = synthetic(n=times)
    pipe = DownscalingPipeline(bundle)
    settings = SamplerSettings(members=members, steps=steps, time_chunk=1)
    walls, stores = {}, {}
    start = time.perf_counter()
    stores["single"] = pipe.run(coarse, work / "single.zarr", settings, progress=False)
    walls["single"] = time.perf_counter() - start
    for n in (1, 2):
        with (
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
            ) as c,
            Client(c, set_as_default=False) as client,
        ):
            client.run(
                importlib.import_module, "kmscale.diffusion.pipeline"
            )  # imports off the clock
            start = time.perf_counter()
            stores[n] = pipe.run(
                coarse,
                work / f"workers{n}.zarr",
                settings,
                progress=False,
                scheduler=c.scheduler_address,
            )
            walls[n] = time.perf_counter() - start
    ref = open_store(stores["single"])["t2m"].values
    identical = all(
        np.array_equal(ref, open_store(stores[n])["t2m"].values, equal_nan=True) for n in (1, 2)
    )
    return {
        "identical": bool(identical),
        "speedup_2_workers": round(walls[1] / walls[2], 3),
        "wall_s": {
            "single_process": round(walls["single"], 2),
            "1_worker": round(walls[1], 2),
            "2_workers": round(walls[2], 2),
        },
        "job": {
            "stage": "sample",
            "times": times,
            "members": members,
            "steps": steps,
            "time_chunk": 1,
            "grid": [16, 24],
        },
    }


_STREAM_PROBE = """
import resource, sys, time, torch
from torch.utils.data import DataLoader
from kmscale.data.loader import PatchDataset
torch.set_num_threads(1)
ds = PatchDataset(sys.argv[1], ["z0", "z1", "z2", "z3"], patch=(64, 64), samples_per_epoch=512, seed=0)
start = time.perf_counter()
n = 0
for batch in DataLoader(ds, batch_size=16, num_workers=2):
    n += batch["x"].shape[0]
wall = time.perf_counter() - start
kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(kib / 2**20, n / wall)
"""


def _latent_like_store(path: Path, n_time: int, shape: tuple[int, int]) -> None:
    """Hourly store of 4 float16 channels (a latent store's layout, one variable per channel),
    24 hours per chunk, written in one pass by dask (a synthetic store: no per-chunk resume)."""
    import dask.array as da
    import pandas as pd
    import xarray as xr

    from kmscale.data.store import KIND_KEY, STATUS_KEY, consolidate

    h, w = shape
    yy, xx = np.meshgrid(np.linspace(0, 6, h), np.linspace(0, 6, w), indexing="ij")

    def block(c, block_info=None):
        (t0, t1), _, _ = block_info[None]["array-location"]
        t = np.arange(t0, t1)[:, None, None]
        return (np.sin(xx + 0.01 * t) * np.cos(yy - 0.02 * t) + c).astype("float16")

    data = {
        f"z{c}": (
            ("time", "y", "x"),
            da.map_blocks(block, c, dtype="float16", chunks=((24,) * (n_time // 24), (h,), (w,))),
        )
        for c in range(4)
    }
    ds = xr.Dataset(
        data,
        coords={
            "time": pd.date_range("2021-01-01", periods=n_time, freq="h"),
            "y": np.arange(h, dtype="float32"),
            "x": np.arange(w, dtype="float32"),
        },
        attrs={STATUS_KEY: "complete", KIND_KEY: "latents_streaming_test"},
    )
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    consolidate(path)


def streaming(work: Path, shape: tuple[int, int]) -> dict:
    """Peak RSS (main + 2 DataLoader workers) of streaming 512 random patches from 1 month
    vs 1 year of hourly latent-like fields: PatchDataset's lazy zarr reads."""
    import subprocess

    out = {
        "grid": list(shape),
        "what": "kmscale.data.loader.PatchDataset, 512 patches of 64 x 64 "
        "from 4 float16 channels, 2 DataLoader workers; peak RSS = max RSS of the main process "
        "+ max RSS of the largest worker",
    }
    for label, n_time in (("month", 24 * 30), ("year", 24 * 365)):
        path = work / f"stream_{label}.zarr"
        start = time.perf_counter()
        _latent_like_store(path, n_time, shape)
        write_s = time.perf_counter() - start
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.run(
            [sys.executable, "-c", _STREAM_PROBE, str(path)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        rss, rate = map(float, proc.stdout.split())
        out[f"rss_{label}_gib"] = round(rss, 3)
        out[f"patches_per_s_{label}"] = round(rate, 1)
        out[f"store_write_s_{label}"] = round(write_s, 1)
    return out


def fuzz(examples: int) -> dict:
    from _fuzz_readers import cases, run_in_tempdir
    from hypothesis import HealthCheck, given, settings

    outcomes: collections.Counter = collections.Counter()
    unhandled: list[str] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=["generate"],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases())
    def drive(case):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                outcomes[run_in_tempdir(case)] += 1
            except Exception as err:  # noqa: BLE001 (counting them is the point)
                outcomes["unhandled"] += 1
                unhandled.append(f"{type(err).__name__}: {str(err)[:200]}")

    drive()
    return {
        "inputs": sum(outcomes.values()),
        "unhandled": outcomes["unhandled"],
        "outcomes": dict(outcomes),
        "unhandled_examples": unhandled[:5],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--times", type=int, default=16, help="valid times sampled (default 16)")
    p.add_argument("--members", type=int, default=8, help="ensemble members (default 8)")
    p.add_argument("--steps", type=int, default=12, help="EDM steps (default 12)")
    p.add_argument(
        "--fault-trials", type=int, default=3, help="kill-and-resume trials per stage (default 3)"
    )
    p.add_argument(
        "--fault-stages",
        default=",".join(("prepare", "encode", "compress", "sample", "score", "train")),
    )
    p.add_argument(
        "--fuzz-examples", type=int, default=500, help="fuzzed reader inputs (default 500)"
    )
    p.add_argument(
        "--stream-grid",
        default="274,430",
        help="latent grid of the streaming stores "
        "(default 274,430: a quarter of the full demo grid's 548 x 860 latents at 8x down)",
    )
    p.add_argument(
        "--skip",
        default="",
        help="comma-separated parts to skip: distributed,fault_injection,fuzz,streaming",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    import torch

    torch.set_num_threads(1)
    result: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"2-core shared dev VM, no GPU ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs)",
        "load_before": os.getloadavg(),
        "split": "n/a: synthetic inputs, no settings chosen from results",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "nice python benchmarks/scale.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    earlier = json.loads(out.read_text()).get("commands", []) if out.exists() else []
    result["commands"] = [*earlier, f"{result['date']}: {command}"]

    def save():
        """Merge this run's keys into the file as it is now: parts run separately (--skip)
        accumulate, and keys other scripts write (``full_grid_sampling``) are kept."""
        merged = json.loads(out.read_text()) if out.exists() else {}
        stages = merged.get("fault_injection", {}) | result.get("fault_injection", {})
        merged |= result
        if stages:
            merged["fault_injection"] = stages
        merged["not_measured"] = [k for k in MEASURED_KEYS if k not in merged]
        tmp_out = out.with_name(out.name + ".tmp")
        tmp_out.write_text(json.dumps(merged, indent=2, default=str))
        os.replace(tmp_out, out)

    with tempfile.TemporaryDirectory() as tmp:
        if "fuzz" not in skip:
            start = time.perf_counter()
            result["fuzz"] = fuzz(args.fuzz_examples) | {
                "wall_s": round(time.perf_counter() - start, 1)
            }
            print("fuzz", result["fuzz"], flush=True)
            save()
        if "distributed" not in skip:
            result["distributed"] = distributed_sampling(
                args.times, args.members, args.steps, Path(tmp)
            )
            print("distributed", result["distributed"], flush=True)
            save()
        if "fault_injection" not in skip:
            import fault_injection

            stages = fault_injection.build_stages(Path(tmp) / "fault")
            result["fault_injection"] = {}
            for name in args.fault_stages.split(","):
                start = time.perf_counter()
                r = fault_injection.run_stage(
                    stages[name], args.fault_trials, seed=fault_injection.STAGES.index(name)
                )
                result["fault_injection"][name] = r | {
                    "stage_wall_s": round(time.perf_counter() - start, 1)
                }
                print(name, result["fault_injection"][name], flush=True)
                save()
        if "streaming" not in skip:
            grid = tuple(int(v) for v in args.stream_grid.split(","))
            result["streaming"] = streaming(Path(tmp), grid)
            print("streaming", result["streaming"], flush=True)
    result["load_after"] = os.getloadavg()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
