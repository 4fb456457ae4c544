"""Scoring at scale: `kmscale score` on 8 members x 24 hours of the full 4384 x 6880 demo grid.

Steps:
1. write the truth (``demo_targets(DemoRegion.full(), 24 hours)``, t2m only) and an
   8-member forecast (truth + a member-common smooth error + independent member noise)
   to zarr stores under ``benchmarks/_work/`` (git-ignored) with ``StoreWriter``;
2. run ``kmscale score`` on them in a child process, timing it and reading the child's
   peak resident memory from ``os.wait4``;
3. merge ``score_full_grid`` {seconds, peak_rss_gib, ...} into
   ``benchmarks/results/evaluation.json``.

Only t2m is scored: the four demo variables would need 4 x 26 GB of stores on a disk
shared by five engineers (one variable: 2.9 GB of truth + 23 GB of forecast, float32,
barely compressible noise). Budget: about 20 min to generate and write (dominated by
the demo generator, 126 512 x 512 blocks per hour), about 10 min to score.

    python benchmarks/score_full_grid.py            # generate (if absent), score, record
    python benchmarks/score_full_grid.py --cleanup  # ... and delete the stores afterwards
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "score_full_grid"
RESULTS = HERE / "results" / "evaluation.json"
MEMBERS, HOURS = 8, 24
SPATIAL_CHUNK = (1096, 1720)  # 16 zarr chunks per field (4384 = 4 x 1096, 6880 = 4 x 1720)


def generate(work: Path, members: int, hours: int, region=None) -> tuple[Path, Path]:
    import pandas as pd
    import xarray as xr
    from scipy import ndimage
    from tqdm import tqdm

    from kmscale.data.demo import DemoRegion, demo_targets
    from kmscale.data.store import StoreWriter

    truth_path, ens_path = work / "truth.zarr", work / "ens.zarr"
    if truth_path.exists() and ens_path.exists():
        return truth_path, ens_path
    free = shutil.disk_usage(work.parent if work.parent.exists() else HERE).free
    shape = (region or DemoRegion.full()).shape
    need = 4 * shape[0] * shape[1] * hours * (members + 1) * 1.05
    if free < need + 10e9:
        sys.exit(
            f"expected at least {(need + 10e9) / 1e9:.0f} GB free for the stores, found "
            f"{free / 1e9:.0f} GB"
        )
    times = pd.date_range("2024-07-01T00", periods=hours, freq="h")
    truth = demo_targets(region or DemoRegion.full(), times, seed=0)[["t2m"]]
    ny, nx = truth.sizes["lat"], truth.sizes["lon"]
    zeros = __import__("dask.array", fromlist=["zeros"]).zeros(
        (hours, members, ny, nx), dtype="float32", chunks=(1, 1, *SPATIAL_CHUNK)
    )
    lead_time = np.arange(1, hours + 1)
    ens_template = xr.Dataset(
        {"t2m": (("time", "member", "lat", "lon"), zeros, truth["t2m"].attrs)},
        coords={
            "time": truth["time"],
            "member": np.arange(members),
            "lat": truth["lat"],
            "lon": truth["lon"],
            "lead_time": (
                "time",
                lead_time,
                {"units": "h", "long_name": "hours since 2024-06-30T23"},
            ),
        },
    )
    spatial = {"lat": SPATIAL_CHUNK[0], "lon": SPATIAL_CHUNK[1]}
    tw = StoreWriter(
        truth_path,
        truth.chunk({"time": 1, **spatial}),
        kind="targets",
        fingerprint="bench-demo-seed0",
        chunk=1,
        encoding={"t2m": {"chunks": (1, *SPATIAL_CHUNK)}},
    )
    ew = StoreWriter(
        ens_path,
        ens_template,
        kind="ensemble",
        fingerprint="bench-demo-seed0",
        chunk=1,
        encoding={"t2m": {"chunks": (1, 1, *SPATIAL_CHUNK)}},
    )
    rng = np.random.default_rng(1)
    for i in tqdm(range(hours), desc="writing truth + ensemble", unit="hour"):
        y = truth.isel(time=slice(i, i + 1)).compute()
        if i in tw.pending():
            tw.write(i, y)
        if i in ew.pending():
            # A common error smooth at ~25 km, and member noise smooth at ~5 km; 1 K each.
            common = ndimage.zoom(
                rng.standard_normal((ny // 25 + 2, nx // 25 + 2)).astype("float32"), 25, order=1
            )[:ny, :nx]
            ens = np.empty((1, members, ny, nx), dtype="float32")
            for j in range(members):
                noise = ndimage.zoom(
                    rng.standard_normal((ny // 5 + 2, nx // 5 + 2)).astype("float32"), 5, order=1
                )[:ny, :nx]
                ens[0, j] = y["t2m"].values[0] + common + noise
            ew.write(i, ens_template.isel(time=slice(i, i + 1)).copy(data={"t2m": ens}))
    tw.finalize()
    ew.finalize()
    return truth_path, ens_path


def score(truth: Path, ens: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "kmscale.cli", "score", "--forecast", f"demo={ens}",
           "--truth", str(truth), "--out", str(out),
           "--overwrite", "--time-chunk", "1"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"kmscale score failed with exit code {os.waitstatus_to_exitcode(status)}")
    return {
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / 2**30, 2),  # ru_maxrss is KiB on Linux
        "members": MEMBERS,
        "times": HOURS,
        "grid": [4384, 6880],
        "variables": ["t2m"],
        "command": " ".join(["kmscale", *cmd[3:]]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cleanup", action="store_true", help="delete the stores after scoring")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a 1096 x 1720 window, 2 hours, nothing recorded (checks the script)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        from kmscale.data.demo import DemoRegion

        work = WORK.with_name("score_smoke")
        work.mkdir(parents=True, exist_ok=True)
        truth, ens = generate(work, MEMBERS, 2, DemoRegion.small(1096, 1720))
        print(json.dumps(score(truth, ens, work / "metrics.nc"), indent=2))
        shutil.rmtree(work)
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    truth, ens = generate(WORK, MEMBERS, HOURS)
    gen_s = time.perf_counter() - t0
    result = score(truth, ens, WORK / "metrics.nc")
    result["generate_seconds"] = round(gen_s, 1)
    result["machine"] = (
        f"{platform.node()} {os.cpu_count()} cores (shared with other engineers' jobs)"
    )
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["score_full_grid"] = result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.cleanup:
        shutil.rmtree(truth)
        shutil.rmtree(ens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
