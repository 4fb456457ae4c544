"""Scale benchmark (issue 19): distributed stages, fault injection, fuzzed reader inputs,
streaming training.

Writes (merges its keys into) ``benchmarks/results/scale.json``:

- ``distributed``: per stage of ``--distributed-stages``, the same job run in one process,
  on a 1-worker and on a 2-worker ``LocalCluster`` (worker processes, one thread each),
  side by side in one run (clusters started and warmed before the clock; ``--repeats`` timed
  runs per setting, alternating, medians reported): ``sample`` on the
  tiny synthetic bundle of the tests (16 x 24 grid, ``--times`` valid times, ``--members``
  members, ``--steps`` EDM steps), ``score`` of a lazily read synthetic ensemble
  (``--score-times`` times, 128 x 192 grid); one time step per chunk. ``identical`` (every
  result equals the single-process one bit for bit) and ``speedup_2_workers`` (median
  1-worker wall time / median 2-worker wall time, of score);
- ``fault_injection``: ``benchmarks/fault_injection.py`` with ``--fault-trials`` trials per
  stage of ``--fault-stages``;
- ``fuzz``: ``--fuzz-examples`` hypothesis examples of ``tests/_fuzz_readers.py``:
  inputs tried, outcomes, unhandled exceptions (anything that is neither a kmscale typed
  error nor the right numbers);
- ``streaming``: peak RSS and examples/s of a short streamed regression training run
  (``benchmarks/streaming_probe.py``) on 1 month vs 1 year of synthetic hourly latents.

Every input is synthetic and no setting is chosen from results (there is no
validation/test split to speak of). Full-grid sampling is measured by its own script.
Settings are the argparse defaults below; run with ``nice`` on a shared machine:
``nice python benchmarks/scale.py``.
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


def side_by_side(run, modules: str, repeats: int) -> tuple[dict, dict]:
    """Time ``run(tag, scheduler)`` in one process (``scheduler=None``) and on a 1- and a
    2-worker ``LocalCluster`` (worker processes, one thread each), ``repeats`` times each.

    Both clusters are started, and ``modules`` imported on their workers, before the clock;
    the repeats alternate single process, 1 worker, 2 workers so that a change of machine
    load falls on all three alike. Returns ({setting: median wall s}, {setting: [each s]})
    and the first run's result of every setting (to compare them).
    """
    from distributed import Client, LocalCluster

    walls: dict[str, list[float]] = {"single": [], "1_worker": [], "2_workers": []}
    results: dict[str, object] = {}
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as c1,
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as c2,
        Client(c1, set_as_default=False) as client1,
        Client(c2, set_as_default=False) as client2,
    ):
        for client in (client1, client2):
            client.run(importlib.import_module, modules)  # imports off the clock
        schedulers = {
            "single": None,
            "1_worker": c1.scheduler_address,
            "2_workers": c2.scheduler_address,
        }
        for r in range(repeats):
            for name, scheduler in schedulers.items():
                start = time.perf_counter()
                result = run(f"{name}-{r}", scheduler)
                walls[name].append(round(time.perf_counter() - start, 2))
                results.setdefault(name, result)
    return walls, results


def _timing(walls: dict[str, list[float]]) -> dict:
    median = {k: float(np.median(v)) for k, v in walls.items()}
    return {
        "speedup_2_workers": round(median["1_worker"] / median["2_workers"], 3),
        "wall_s": {k: round(v, 2) for k, v in median.items()},
        "wall_s_each": walls,
        "repeats": len(walls["single"]),
        "load": os.getloadavg(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def distributed_sampling(times: int, members: int, steps: int, work: Path, repeats: int) -> dict:
    """Single process vs 1 and 2 dask workers on the same sampling job (medians)."""
    from _downscaling_data import synthetic
    from test_bundle import make_bundle

    from kmscale.data.store import open_store
    from kmscale.diffusion.pipeline import DownscalingPipeline, SamplerSettings

    bundle, _ = make_bundle()
    _, coarse, _ = synthetic(n=times)
    pipe = DownscalingPipeline(bundle)
    settings = SamplerSettings(members=members, steps=steps, time_chunk=1)

    def run(tag: str, scheduler: str | None) -> Path:
        return pipe.run(coarse, work / f"{tag}.zarr", settings, progress=False, scheduler=scheduler)

    walls, stores = side_by_side(run, "kmscale.diffusion.pipeline", repeats)
    ref = open_store(stores["single"])["t2m"].values
    identical = all(
        np.array_equal(ref, open_store(stores[n])["t2m"].values, equal_nan=True)
        for n in ("1_worker", "2_workers")
    )
    return {
        "identical": bool(identical),
        **_timing(walls),
        "job": {
            "stage": "sample",
            "times": times,
            "members": members,
            "steps": steps,
            "time_chunk": 1,
            "grid": [16, 24],
        },
    }


def distributed_scoring(
    times: int, members: int, shape: tuple[int, int], work: Path, repeats: int
) -> dict:
    """``score`` of a lazily opened synthetic ensemble (zarr) in one process and on a 1- and
    a 2-worker LocalCluster, side by side (medians); one time step per chunk."""
    import pandas as pd
    import xarray as xr

    from kmscale.evaluation.scoring import ScoreOptions, score

    rng = np.random.default_rng(0)
    h, w = shape
    coords = {
        "time": pd.date_range("2021-01-01", periods=times, freq="h"),
        "lat": 40 + 0.01 * np.arange(h),
        "lon": 100 + 0.01 * np.arange(w),
    }
    mu = 280 + rng.standard_normal((times, 1, h, w)).astype("f4")
    truth = xr.Dataset(
        {
            "t2m": (
                ("time", "lat", "lon"),
                mu[:, 0] + rng.standard_normal((times, h, w)),
                {"units": "K"},
            )
        },
        coords=coords,
    ).chunk(time=1)
    ens = xr.Dataset(
        {
            "t2m": (
                ("time", "member", "lat", "lon"),
                mu + rng.standard_normal((times, members, h, w)),
                {"units": "K"},
            )
        },
        coords=coords,
    ).chunk(time=1)
    truth.to_zarr(work / "truth.zarr", mode="w", zarr_format=3, consolidated=False)
    ens.to_zarr(work / "ens.zarr", mode="w", zarr_format=3, consolidated=False)
    truth, ens = (
        xr.open_zarr(work / n, zarr_format=3, consolidated=False)
        for n in ("truth.zarr", "ens.zarr")
    )
    opts = ScoreOptions(time_chunk=1)

    def run(tag: str, scheduler: str | None) -> xr.Dataset:
        return score({"ens": ens}, truth, opts, progress=False, scheduler=scheduler)

    walls, results = side_by_side(run, "kmscale.evaluation.scoring", repeats)
    # every variable and coordinate, NaN equal to NaN, floats compared exactly
    identical = all(results["single"].identical(results[n]) for n in ("1_worker", "2_workers"))
    return {
        "identical": bool(identical),
        **_timing(walls),
        "job": {
            "stage": "score",
            "times": times,
            "members": members,
            "time_chunk": 1,
            "grid": list(shape),
        },
    }


def _latent_store(path: Path, ae_dir: Path, n_time: int, shape: tuple[int, int]) -> None:
    """An hourly latent store of ``n_time`` times on the latent grid ``shape`` for the VAE in
    ``ae_dir``: layout and attributes of ``encode_to_store``'s (copied from a 2-time store it
    writes), values synthetic (float16 waves), written in one pass by dask (the latent
    variable only: no validity mask)."""
    import dask.array as da
    import pandas as pd
    import xarray as xr

    from kmscale.autoencoders.latent_store import LATENT_VAR, encode_to_store, open_latents
    from kmscale.autoencoders.registry import load_autoencoder
    from kmscale.data.store import consolidate

    ae = load_autoencoder(str(ae_dir)).eval()
    h, w = shape
    small = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), np.full((2, 2 * h, 2 * w), 280.0, "f4"), {"units": "K"})},
        coords={
            "time": pd.date_range("2021-01-01", periods=2, freq="h"),
            "lat": 40 + 0.01 * np.arange(2 * h),
            "lon": 100 + 0.01 * np.arange(2 * w),
        },
    )
    ref = open_latents(encode_to_store(ae, small, path.with_suffix(".small.zarr"), progress=False))
    c = ref.sizes["latent_channel"]
    yy, xx = np.meshgrid(np.linspace(0, 6, h), np.linspace(0, 6, w), indexing="ij")

    def block(block_info=None):
        (t0, t1), _, _, _ = block_info[None]["array-location"]
        t = np.arange(t0, t1)[:, None, None, None]
        ch = np.arange(c)[None, :, None, None]
        return (np.sin(xx + 0.01 * t + ch) * np.cos(yy - 0.02 * t)).astype("float16")

    chunks = ((24,) * (n_time // 24), (c,), (h,), (w,))
    ds = xr.Dataset(
        {LATENT_VAR: (ref[LATENT_VAR].dims, da.map_blocks(block, dtype="float16", chunks=chunks))},
        coords={"time": pd.date_range("2021-01-01", periods=n_time, freq="h")}
        | {k: v for k, v in ref.coords.items() if "time" not in v.dims},
        attrs=ref.attrs,
    )
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    consolidate(path)


def streaming(work: Path, shape: tuple[int, int], samples: int) -> dict:
    """Peak RSS and throughput of a short streamed regression training run
    (``benchmarks/streaming_probe.py``) on 1 month vs 1 year of hourly latents, and the
    in-memory run on the month for reference."""
    import subprocess

    from fault_injection import save_tiny_vae

    save_tiny_vae(work / "ae", latent_channels=4)
    out: dict = {
        "latent_grid": list(shape),
        "what": f"recipes' train_regression with data.stream (DataSettings), {samples} examples "
        "of random 64 x 64 latent windows, batch 4, 2 DataLoader workers, 4 float16 latent "
        "channels; rss = peak RSS of the main process + of the largest worker",
    }
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for label, n_time, extra in (
        ("month", 24 * 30, []),
        ("month_in_memory", 24 * 30, ["--in-memory"]),
        ("year", 24 * 365, []),
    ):
        store = work / f"latents_{n_time}.zarr"
        if not store.exists():
            start = time.perf_counter()
            _latent_store(store, work / "ae", n_time, shape)
            out[f"store_write_s_{n_time}h"] = round(time.perf_counter() - start, 1)
        probe = [sys.executable, str(ROOT / "benchmarks" / "streaming_probe.py")]
        args = [str(store), str(work / "ae"), str(work / f"run_{label}"), "--samples", str(samples)]
        proc = subprocess.run(
            [*probe, *args, *extra], capture_output=True, text=True, env=env, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"streaming probe {label}: {proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        out[label] = r
        out[f"rss_{label}_gib"] = round(r["rss_main_gib"] + r["rss_worker_gib"], 3)
        out[f"store_gib_{label}"] = round(
            sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**30, 3
        )
    out["load"] = os.getloadavg()
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
    p.add_argument("--times", type=int, default=96, help="valid times sampled (default 96)")
    p.add_argument("--members", type=int, default=8, help="ensemble members (default 8)")
    p.add_argument("--steps", type=int, default=12, help="EDM steps (default 12)")
    p.add_argument(
        "--distributed-stages", default="score,sample", help="stages timed on 1 vs 2 workers"
    )
    p.add_argument(
        "--score-times", type=int, default=192, help="times of the distributed score (default 192)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs per setting of the distributed part; medians reported (default 3)",
    )
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
        default="128,192",
        help="latent grid of the streaming stores (default 128,192: a year of 4 float16 "
        "channels is 1.7 GB)",
    )
    p.add_argument(
        "--stream-samples", type=int, default=32, help="streamed training examples (default 32)"
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
            earlier = json.loads(out.read_text()).get("distributed", {}) if out.exists() else {}
            parts = {k: earlier[k] for k in ("sample", "score") if k in earlier}
            if "sample" not in parts and "wall_s" in earlier:  # the sampling figures alone
                parts["sample"] = {k: v for k, v in earlier.items() if k != "earlier_run"}
            for stage in args.distributed_stages.split(","):
                work = Path(tmp) / f"distributed_{stage}"
                work.mkdir()
                parts[stage] = (
                    distributed_sampling(args.times, args.members, args.steps, work, args.repeats)
                    if stage == "sample"
                    else distributed_scoring(
                        args.score_times, args.members, (128, 192), work, args.repeats
                    )
                )
                print(stage, parts[stage], flush=True)
            result["distributed"] = {
                "identical": all(p["identical"] for p in parts.values()),
                # the stage with more (and heavier) time chunks: score
                "speedup_2_workers": parts.get("score", parts.get("sample"))["speedup_2_workers"],
                **parts,
            }
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
            result["streaming"] = streaming(Path(tmp), grid, args.stream_samples)
            print("streaming", result["streaming"], flush=True)
    result["load_after"] = os.getloadavg()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
