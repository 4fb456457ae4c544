"""Fault injection: every CLI stage killed with SIGKILL at seeded random moments, then resumed.

For each stage (prepare, encode, compress, sample, score, a short regression training
recipe) the harness

1. runs the stage once uninterrupted as a subprocess (``python -m kmscale.cli ...`` with
   the caller's PYTHONPATH) and fingerprints its artifact: every array's bytes, dtype and
   shape plus its attributes (zarr stores, NetCDF files) or the weight files (training);
2. per trial: starts the stage afresh, waits until it starts writing (start-up is mostly
   imports, where a kill tests nothing), kills its process group with SIGKILL after a
   delay drawn uniformly from [0, 1.1 x the uninterrupted writing phase] (seeded), checks that
   nothing complete-looking but wrong sits at the artifact's final name (it is absent, or
   it fingerprints like the uninterrupted one), runs the same command again to resume,
   and checks the final artifact is bit-identical to the uninterrupted one.

Tiny synthetic inputs (16 x 24 grid, a few dozen hours) keep a trial to a few seconds,
most of which is the interpreter importing torch.  Used by ``tests/test_fault_injection.py``
(one trial per stage) and by ``python benchmarks/fault_injection.py --trials N``
(writes ``benchmarks/results/fault_injection.json``; ``benchmarks/scale.py`` runs it too).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("prepare", "encode", "compress", "sample", "score", "train")


@dataclass
class Stage:
    """One CLI stage: its command, the artifact it completes, and what else it leaves."""

    name: str
    argv: list[str]
    artifact: Path
    scratch: list[Path] = field(default_factory=list)  # removed before each fresh start
    # globs (under the artifact's folder) whose appearance means the stage started writing
    writing: tuple[str, ...] = ()

    def started_writing(self) -> bool:
        base = self.artifact.parent
        return self.artifact.exists() or any(
            any(base.glob(g)) for g in (self.artifact.name + ".*", *self.writing)
        )

    def clean(self) -> None:
        for p in [self.artifact, *self.scratch]:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for p in self.artifact.parent.glob(self.artifact.name + ".*"):  # .partial, .tmp, progress
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "kmscale.cli", *args]


def _sample_cli(work: Path, out: Path, *extra: str) -> list[str]:
    """``kmscale sample`` of the tiny bundle on the 8-time predictors, 3 members."""
    bundle, predictors = work / "bundle", work / "data" / "pred8.nc"
    return _cli(
        "sample", "--bundle", str(bundle), "--predictors", str(predictors),
        "--members", "3", "--steps", "2", *extra, "--out", str(out),
    )  # fmt: skip


def save_tiny_vae(path: Path, latent_channels: int) -> None:
    """An untrained one-variable (t2m) VAE, widths 8-16, seed 0, saved to ``path``: the
    autoencoder of the benchmarks that measure machinery, not skill."""
    import torch

    from kmscale.autoencoders.vae import VAEAutoencoder

    torch.manual_seed(0)
    VAEAutoencoder(
        variables=["t2m"],
        input_stats={"t2m": {"mean": 280.0, "std": 5.0}},
        block_out_channels=(8, 16),
        norm_num_groups=8,
        latent_channels=latent_channels,
    ).save_pretrained(path)


def build_stages(work: Path) -> dict[str, Stage]:
    """Write the tiny inputs under ``work`` and return the stages reading them."""
    import yaml

    sys.path.insert(0, str(ROOT / "tests"))
    from _downscaling_data import write_files
    from test_bundle import make_bundle

    work.mkdir(parents=True, exist_ok=True)
    files = write_files(work / "data", n=48)
    save_tiny_vae(work / "ae", latent_channels=2)
    bundle, coarse = make_bundle()
    bundle.save(work / "bundle")
    coarse.to_netcdf(work / "data" / "pred8.nc", engine="netcdf4")
    ens = work / "reference_ensemble.zarr"
    if not ens.exists():
        subprocess.run(
            _sample_cli(work, ens),
            env=_env(),
            check=True,
            capture_output=True,
        )
    cfg = {
        "data": {
            "targets": str(files["targets"]),
            "predictors": str(files["predictors"]),
            "static": str(files["static"]),
            "train_period": ["2019-03-01T00", "2019-03-01T23"],
            "val_period": ["2019-03-02T00", "2019-03-02T05"],
        },
        "unet": {"block_out_channels": [8, 16], "norm_num_groups": 4, "layers_per_block": 1},
        "train": {
            "global_batch_size": 4,
            "checkpoint_every_samples": 8,
            "log_every_samples": 8,
            "lr": 1e-3,
            "ema_decay": 0.9,
            "mixed_precision": "no",
            "total_samples": 48,
        },
        "out_dir": str(work / "train_run"),
    }
    (work / "train.yaml").write_text(yaml.safe_dump(cfg))
    out = work / "out"
    out.mkdir(exist_ok=True)
    return {
        "prepare": Stage(
            "prepare",
            _cli(
                "prepare",
                "--targets",
                str(files["targets"]),
                "--predictors",
                str(files["predictors"]),
                "--static",
                str(files["static"]),
                "--train-period",
                "2019-03-01..2019-03-01",
                "--out",
                str(out / "prepared"),
                "--chunk-time",
                "4",
                "--no-progress",
            ),
            out / "prepared" / "stats.json",
            [out / "prepared"],
            ("*.zarr*",),
        ),
        "encode": Stage(
            "encode",
            _cli(
                "encode",
                "--autoencoder",
                str(work / "ae"),
                "--input",
                str(files["targets"]),
                "--out",
                str(out / "latents.zarr"),
                "--chunk",
                "2",
                "--no-progress",
            ),
            out / "latents.zarr",
        ),
        "compress": Stage(
            "compress",
            _cli(
                "compress",
                "--autoencoder",
                str(work / "ae"),
                "--input",
                str(files["targets"]),
                "--out",
                str(out / "archive.zarr"),
                "--chunk",
                "2",
                "--quantize",
                "0.05",
                "--verify",
                "0",
                "--no-progress",
            ),
            out / "archive.zarr",
        ),
        "sample": Stage(
            "sample",
            _sample_cli(work, out / "ensemble.zarr", "--time-chunk", "1"),
            out / "ensemble.zarr",
        ),
        "score": Stage(
            "score",
            _cli(
                "score",
                "--forecast",
                f"ldm={ens}",
                "--truth",
                str(files["targets"]),
                "--out",
                str(out / "metrics.nc"),
                "--no-progress",
            ),
            out / "metrics.nc",
        ),
        "train": Stage(
            "train",
            [
                sys.executable,
                str(ROOT / "recipes" / "train_regression.py"),
                "--config",
                str(work / "train.yaml"),
            ],
            work / "train_run" / "bundle",
            [work / "train_run"],
            ("checkpoints",),
        ),
    }


def fingerprint(path: Path) -> str | None:
    """Hash of an artifact's content (None when absent): arrays' bytes and attributes of
    zarr stores and NetCDF files, raw bytes of weights and JSON."""
    import xarray as xr

    if not path.exists():
        return None
    h = hashlib.sha256()
    if path.name == "stats.json":  # prepare: the stores beside it and the statistics
        for store in sorted(path.parent.glob("*.zarr")):
            h.update(str(fingerprint(store)).encode())
        h.update(path.read_bytes())
        return h.hexdigest()
    if path.suffix in (".zarr", ".nc"):
        with xr.open_dataset(path, engine="zarr" if path.suffix == ".zarr" else None) as ds:
            for name in sorted(map(str, ds.variables)):
                v = ds[name]
                h.update(f"{name}{v.dtype}{v.shape}{sorted(v.attrs.items())}".encode())
                h.update(np.ascontiguousarray(v.values).tobytes())
            h.update(json.dumps(ds.attrs, sort_keys=True, default=str).encode())
        return h.hexdigest()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):  # bundle / weights directory
        if f.suffix in (".safetensors", ".json") or f.suffix == ".zarr":
            h.update(f.relative_to(path).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _start(stage: Stage) -> subprocess.Popen:
    return subprocess.Popen(
        stage.argv,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_writes(stage: Stage, proc: subprocess.Popen, poll: float = 0.02) -> float:
    """Block until the stage starts writing (or exits); the seconds waited."""
    start = time.perf_counter()
    while proc.poll() is None and not stage.started_writing():
        time.sleep(poll)
    return time.perf_counter() - start


def _finish(stage: Stage, proc: subprocess.Popen, timeout: float = 900.0) -> None:
    _, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{stage.name}: exit {proc.returncode}\n{err[-3000:]}")


def _run(stage: Stage) -> tuple[float, float]:
    """Run to completion; (seconds before the first write, seconds of the writing phase)."""
    start = time.perf_counter()
    proc = _start(stage)
    startup = _wait_for_writes(stage, proc)
    _finish(stage, proc)
    return startup, time.perf_counter() - start - startup


def run_stage(stage: Stage, trials: int, seed: int) -> dict:
    """Reference run, then ``trials`` kill-and-resume trials; the stage's summary."""
    stage.clean()
    startup, writing = _run(stage)
    reference = fingerprint(stage.artifact)
    rng = np.random.default_rng(seed)
    failures, identical, killed, partial_seen, messages = 0, 0, 0, 0, []
    for trial in range(trials):
        stage.clean()
        # the kill lands in the writing phase (start-up is imports, where a kill tests nothing)
        delay = float(rng.uniform(0.0, 1.1 * writing))
        proc = _start(stage)
        _wait_for_writes(stage, proc)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed += 1
        partial_seen += (not stage.artifact.exists()) and stage.started_writing()
        at_kill = fingerprint(stage.artifact)
        ok = True
        if at_kill is not None and at_kill != reference:
            ok = False
            messages.append(
                f"trial {trial}: a complete-looking artifact differs after the kill at "
                f"{delay:.2f} s"
            )
        if at_kill is None:
            try:
                _finish(stage, _start(stage))
            except RuntimeError as err:
                ok = False
                messages.append(
                    f"trial {trial}: resume failed after a kill at {delay:.2f} s: {err}"
                )
        same = fingerprint(stage.artifact) == reference
        identical += same
        if not same and ok:
            ok = False
            messages.append(f"trial {trial}: resumed artifact differs (kill at {delay:.2f} s)")
        failures += not ok
    return {
        "trials": trials,
        "failures": failures,
        "identical": identical / max(trials, 1),
        "killed_before_completion": killed,
        "partial_left_by_kill": partial_seen,
        "startup_s": round(startup, 2),
        "writing_s": round(writing, 2),
        "messages": messages[:5],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--trials", type=int, default=20, help="kill-and-resume trials per stage (default 20)"
    )
    p.add_argument(
        "--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES)
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="/tmp/kmscale_fault_injection", help="scratch folder")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fault_injection.json"))
    args = p.parse_args(argv)
    stages = build_stages(Path(args.work))
    results = {}
    for i, name in enumerate(args.stages.split(",")):
        start = time.perf_counter()
        results[name] = run_stage(stages[name], args.trials, args.seed + i)
        results[name]["stage_wall_s"] = round(time.perf_counter() - start, 1)
        print(name, json.dumps(results[name]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0 if all(r["failures"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
