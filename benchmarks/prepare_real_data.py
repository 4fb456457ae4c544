"""Time ``kmscale prepare`` (the library call behind it) on the shared real data.

Cases: ERA5 UK (NetCDF targets 576 x 33 x 49, GRIB predictors, UKV orography regridded
by area onto the target grid) and RADOLAN RW (24 x 900 x 900, NaN footprint kept as the
mask). Each case runs ``--repeats`` times from scratch into a temporary directory; the
median wall time and the input megabytes per second are printed and written as JSON.

    python benchmarks/prepare_real_data.py --repeats 3 \
        --out benchmarks/results/prepare_real_data.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # kmscale_testdata.py


def _cases(root: Path) -> dict:
    from kmscale.data.prepare import PrepareOptions
    from kmscale_testdata import ERA5_UK_SPLITS

    uk = root / "era5_uk_t2m_201903"
    return {
        "era5_uk": dict(
            targets=str(uk / "era5_uk_t2m_20190301-24.nc"),
            predictors=str(uk / "era5_uk_t2m_20190301-24.grib"),
            static=str(root / "static" / "ukv_orography.nc"),
            options=PrepareOptions(train_period=ERA5_UK_SPLITS["train"], chunk_time=24),
        ),
        "radolan_rw": dict(
            targets=str(root / "radolan_rw_20221018" / "radolan_RW_20221018_hourly_1km.nc"),
            predictors=None,
            static=None,
            options=PrepareOptions(
                train_period=("2022-10-18T00", "2022-10-18T15"), chunk_time=4, mask_nans=True
            ),
        ),
    }


def main(argv: list[str] | None = None) -> int:
    from kmscale.data.prepare import prepare
    from kmscale.data.readers import expand_paths
    from kmscale_testdata import data_dir

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    args = parser.parse_args(argv)
    root = data_dir(required=True)
    results = {}
    for name, case in _cases(root).items():
        inputs = [
            p for k in ("targets", "predictors", "static") if case[k] for p in expand_paths(case[k])
        ]
        mbytes = sum(p.stat().st_size for p in inputs) / 1e6
        times = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                prepare(
                    case["targets"],
                    Path(tmp) / name,
                    predictors=case["predictors"],
                    static=case["static"],
                    options=case["options"],
                    progress=False,
                )
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        results[name] = {
            "median_s": round(med, 2),
            "runs_s": [round(t, 2) for t in times],
            "input_mb": round(mbytes, 1),
            "mb_per_s": round(mbytes / med, 2),
        }
        print(
            f"{name:>12}: median {med:.2f} s over {args.repeats} runs ({mbytes:.1f} MB in, "
            f"{mbytes / med:.2f} MB/s)"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
