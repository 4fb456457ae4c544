"""Fair CRPS speed against properscoring, each peer in its own best layout and dtype.

Sizes 16 members x 1024 x 1024 and 16 x 512 x 512 (``--sizes``), one thread for every
implementation. Each implementation gets the input it is built for, prepared outside
the timed call:

- ``kmscale`` fair CRPS (``kmscale.evaluation.probabilistic.crps_ensemble``: sorting
  network over cache-sized blocks, numpy only) on member-first (M, H, W) C-contiguous
  arrays, float64 and float32;
- ``properscoring.crps_ensemble`` with numba: its guvectorized kernel (the biased,
  standard estimator only) on member-last (H, W, M) C-contiguous float64 arrays, its
  natural layout (``axis=-1``, the default: no axis move or copy inside the call);
- ``properscoring.crps_ensemble`` without numba: properscoring picks its kernel at
  import (``from ._gufuncs import ...`` inside try/except ImportError) and falls back
  to the O(M^2) ``_crps_ensemble_vectorized``. ``NUMBA_DISABLE_JIT=1`` would still
  take the gufunc path (interpreted), so numba is hidden from a child process with a
  meta-path finder that refuses to import it, and the child checks which kernel it got;
  same member-last float64 input;
- the torch fair CRPS (``kmscale.evaluation.torch_metrics.crps_fair``, same network) on
  member-first float64 tensors, for orientation.

Timing: every implementation runs once to warm up (numba compiles), then ``--repeats``
rounds, each round timing every in-process implementation one after another
(interleaved, so machine load hits them alike); medians are reported. The numba-free
properscoring runs in its own child process with the same thread settings. Synthetic
data (no split: timing only). Results are merged into ``benchmarks/results/evaluation.json``.

    python benchmarks/evaluation_speed.py                      # 1024 and 512, 5 repeats
    python benchmarks/evaluation_speed.py --sizes 512 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "evaluation.json"

_HIDE_NUMBA = """
import sys, importlib.abc
class _NoNumba(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("numba hidden for the benchmark")
        return None
sys.meta_path.insert(0, _NoNumba())
"""


def _pin_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def _data(m: int, size: int, seed: int = 0):
    """Member-first (M, H, W) float64 ensemble and (H, W) truth."""
    import numpy as np

    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((size, size)) * 3 + 280
    ens = truth + rng.standard_normal((m, size, size)) * 2
    return ens, truth


def _member_last(ens):
    """properscoring's natural layout: (H, W, M) C-contiguous (members innermost)."""
    import numpy as np

    return np.ascontiguousarray(np.moveaxis(ens, 0, -1))


def child_plain(m: int, size: int, repeats: int) -> None:
    """Runs in a child process with numba hidden: time properscoring's fallback kernel."""
    exec(_HIDE_NUMBA, {})
    import numpy as np
    import properscoring
    from properscoring import _crps

    kernel = _crps._crps_ensemble_core.__name__
    if kernel != "_crps_ensemble_vectorized":
        sys.exit(f"expected properscoring's numba-free kernel, found {kernel}")
    ens, truth = _data(m, size)
    ens = _member_last(ens)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = properscoring.crps_ensemble(truth, ens)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"kernel": kernel, "times": times, "mean_crps": float(np.mean(out))}))


def time_size(size: int, args) -> dict:
    """Medians and raw times of every implementation on members x size x size."""
    import numpy as np
    import properscoring
    import torch

    from kmscale.evaluation import torch_metrics
    from kmscale.evaluation.probabilistic import crps_ensemble

    ens, truth = _data(args.members, size)
    ens32, truth32 = ens.astype(np.float32), truth.astype(np.float32)
    ens_last = _member_last(ens)
    tens, ttruth = torch.from_numpy(ens), torch.from_numpy(truth)
    impls = {
        "kmscale_fair_float64": lambda: crps_ensemble(ens, truth, fair=True),
        "kmscale_fair_float32": lambda: crps_ensemble(ens32, truth32, fair=True),
        "kmscale_standard_float64": lambda: crps_ensemble(ens, truth, fair=False),
        "properscoring_numba": lambda: properscoring.crps_ensemble(truth, ens_last),
        "torch_metrics_fair_float64": lambda: torch_metrics.crps_fair(tens, ttruth),
    }
    outputs = {k: np.asarray(f()) for k, f in impls.items()}  # warm-up (numba compiles here)
    check = float(
        np.abs(outputs["kmscale_standard_float64"] - outputs["properscoring_numba"]).max()
    )
    if check > 1e-6:
        sys.exit(
            f"expected kmscale standard CRPS == properscoring to 1e-6, found max difference {check}"
        )
    times = {k: [] for k in impls}
    for _ in range(args.repeats):
        for k, f in impls.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}

    child = subprocess.run(
        [sys.executable, __file__, "--child-plain", "--members", str(args.members),
         "--size", str(size), "--plain-repeats", str(args.plain_repeats),
         "--threads", str(args.threads)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if child.returncode != 0:
        sys.exit(f"numba-free properscoring child failed: {child.stderr[-2000:]}")
    plain = json.loads(child.stdout.strip().splitlines()[-1])
    med["properscoring_plain"] = float(np.median(plain["times"]))
    times["properscoring_plain"] = plain["times"]
    if abs(plain["mean_crps"] - float(outputs["properscoring_numba"].mean())) > 1e-9:
        sys.exit("expected both properscoring kernels to agree")
    fair = med["kmscale_fair_float64"]
    return {
        "shape": [args.members, size, size],
        "speedup_fair_float64_vs_properscoring_numba": round(med["properscoring_numba"] / fair, 2),
        "speedup_fair_float32_vs_properscoring_numba": round(
            med["properscoring_numba"] / med["kmscale_fair_float32"], 2
        ),
        "speedup_fair_float64_vs_properscoring_plain": round(med["properscoring_plain"] / fair, 2),
        "median_seconds": {k: round(v, 4) for k, v in med.items()},
        "raw_seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "max_abs_diff_standard_vs_properscoring": check,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument(
        "--sizes", default="1024,512", help="comma-separated field sizes (size x size)"
    )
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)  # the child's one size
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--plain-repeats", type=int, default=3, help="repeats of the slow numba-free run"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--no-record", action="store_true", help="do not write results/evaluation.json"
    )
    parser.add_argument("--child-plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _pin_threads(args.threads)
    if args.child_plain:
        child_plain(args.members, args.size, args.plain_repeats)
        return 0

    import torch
    from properscoring import _crps

    torch.set_num_threads(args.threads)
    if _crps._crps_ensemble_core.__name__ != "_crps_ensemble_gufunc":
        sys.exit("expected properscoring to use its numba kernel here (is numba installed?)")
    load = os.getloadavg()
    by_size = {}
    for size in (int(x) for x in args.sizes.split(",") if x.strip()):
        res = time_size(size, args)
        by_size[f"{args.members}x{size}x{size}"] = res
        print(f"{args.members}x{size}x{size}: {json.dumps(res['median_seconds'])}", flush=True)
    result = {
        "crps_benchmark": {
            "layouts": {
                "kmscale": "member-first (M, H, W) C-contiguous; float64 and float32",
                "properscoring": (
                    "member-last (H, W, M) C-contiguous float64, axis=-1 (no copy in the call)"
                ),
                "torch_metrics": "member-first (M, H, W) float64 tensor",
            },
            "split": "none (synthetic fields, timing only)",
            "threads": args.threads,
            "repeats": args.repeats,
            "plain_repeats": args.plain_repeats,
            "statistic": "median over interleaved rounds",
            "properscoring_kernels": {
                "numba": "_crps_ensemble_gufunc",
                "plain": "_crps_ensemble_vectorized",
            },
            "sizes": by_size,
            "load_average_1_5_15_min_at_start": [round(x, 2) for x in load],
            "load_average_1_5_15_min_at_end": [round(x, 2) for x in os.getloadavg()],
            "machine": (
                f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} "
                "cores, shared with other engineers' jobs while measured"
            ),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/evaluation_speed.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
        },
    }
    print(json.dumps(result, indent=2))
    if not args.no_record:
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        for stale in ("crps_speedup_vs_properscoring_numba", "crps_speedup_vs_properscoring_plain"):
            results.pop(stale, None)  # superseded by the per-size figures
        results.update(result)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
