"""Time ``kmscale demo`` and record whether it shows skill: benchmarks/results/demo.json.

    python benchmarks/demo_checks.py                      # 3 fresh runs of `kmscale demo`
    python benchmarks/demo_checks.py --runs 1 --out /tmp/demo_bench

Runs the command a user runs (``python -m kmscale.cli demo --out DIR --fresh``, size
``small``, the design in :mod:`kmscale.diffusion.demo`) ``--runs`` times in a row, each
from scratch, and writes:

- ``demo_seconds``: the median wall time of the runs (the command's own ``seconds``);
- ``checks`` per variable (from the last run, on the validation hours): ``crps_fair``,
  ``regression_mae``, ``bilinear_mae``, ``spread_skill`` and for tp
  ``wet_fraction_ratio``, ``q99_ratio``, with each check's pass/fail;
- ``all_passed``, the machine, its load (1-minute load average before and after each
  run), the date and the command.

The demo has no settings chosen here: its sizes and budgets are the ``small`` size of
``kmscale.diffusion.demo.SIZES``; the checks are on its validation hours (after the
training hours). Timings on a shared machine are noisy; the load says how noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def run_once(out: Path, size: str, threads: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "kmscale.cli",
        "demo",
        "--out",
        str(out),
        "--size",
        size,
        "--fresh",
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    load_before = load_average()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "wall_seconds": round(wall, 1),
        "demo_seconds": summary["seconds"],
        "stages": summary["stages"],
        "load_before": load_before,
        "load_after": load_average(),
        "summary": summary,
        "table": proc.stdout.split("demo checks on the validation hours", 1)[-1].strip(),
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line: fresh runs, or the record of a finished run (``--summary``)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="fresh runs of the demo (median time; default 3)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo_bench"), help="run directory (replaced)"
    )
    parser.add_argument("--size", default="small", help="demo size (default small)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--machine", default="2-core shared dev VM, no GPU", help="recorded in the JSON"
    )
    parser.add_argument(
        "--json", type=Path, default=RESULTS / "demo.json", help="where to write the result"
    )
    parser.add_argument(
        "--summary",
        type=Path,
        default=None,
        help="record a finished run's summary.json instead of running (its own timing; "
        "--load gives the load it ran under)",
    )
    parser.add_argument(
        "--load",
        type=float,
        nargs=2,
        default=None,
        metavar=("BEFORE", "AFTER"),
        help="with --summary: the 1-minute load average during that run",
    )
    parser.add_argument("--note", default="", help="recorded in the JSON (how the run was made)")
    return parser


def recorded_run(summary_path: Path, load: list[float] | None) -> dict:
    """A finished run's ``summary.json`` in the form of :func:`run_once`'s result."""
    summary = json.loads(summary_path.read_text())
    load = list(load) if load else [None, None]
    return {
        "demo_seconds": summary["seconds"],
        "stages": summary["stages"],
        "load_before": load[0],
        "load_after": load[1],
        "summary": summary,
        "table": "",
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = []
    if args.summary is not None:
        runs.append(recorded_run(args.summary, args.load))
    for i in range(args.runs if args.summary is None else 0):
        runs.append(run_once(args.out, args.size, args.threads))
        print(
            f"run {i + 1}/{args.runs}: {runs[-1]['demo_seconds']} s (load "
            f"{runs[-1]['load_before']} -> {runs[-1]['load_after']})",
            flush=True,
        )
    result = record(args, argv, runs)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(runs[-1]["table"])
    print(f"wrote {args.json}")
    return 0


def record(args: argparse.Namespace, argv: list[str] | None, runs: list[dict]) -> dict:
    """The JSON of the benchmark: timings of ``runs`` and the last run's checks."""
    last = runs[-1]["summary"]
    checks = {
        v: {**res["values"], "passed": {c["check"]: c["passed"] for c in res["checks"]}}
        for v, res in last["demo_checks"].items()
        if isinstance(res, dict)
    }
    return {
        "command": "python benchmarks/demo_checks.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "demo_command": (
            f"kmscale demo --out {args.out} --size {args.size} --fresh"
            if args.summary is None
            else f"kmscale demo --size {args.size} (recorded from {args.summary})"
        ),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "machine": args.machine,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "runs": len(runs),
        "demo_seconds": statistics.median(r["demo_seconds"] for r in runs),
        "demo_seconds_each": [r["demo_seconds"] for r in runs],
        "load_average_1min": [[r["load_before"], r["load_after"]] for r in runs],
        "stages_seconds_last_run": runs[-1]["stages"],
        "split": {
            "train": last["train_hours"],
            "validation": last["validation_hours"],
            "checks_on": "validation hours (after the training hours)",
        },
        "checks": checks,
        "note": args.note,
        "all_passed": last["demo_checks"]["all_passed"],
        "failed": last["demo_checks"]["failed"],
    }


if __name__ == "__main__":
    sys.exit(main())
