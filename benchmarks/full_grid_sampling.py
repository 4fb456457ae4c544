"""Full-grid sampling cost (issue 19): `kmscale sample` on the 4384 x 6880 demo grid.

What it measures: seconds per member per valid time, the peak resident memory of the
`kmscale sample` process (``os.wait4``'s ru_maxrss of the child), and the seam
diagnostic the pipeline stores (``kmscale_seam_ratio``, :mod:`kmscale.evaluation.seams`).
Skill is not the point, cost is: the bundle is *untrained* (random weights, fixed seed),
built here on the full demo grid (15-58.84 N, 75-143.8 E, 1 km):

- autoencoder: the kmscale VAE (pixel norm, tiles exactly) for t2m, u10, v10, tp, widths
  ``--vae-widths`` (8x down: latent grid 548 x 860, 4 channels), unit input statistics;
- regression and diffusion: UNet2D backbones of widths ``--unet-widths``;
- predictors: smooth synthetic 0.25 deg t2m (K) over the demo predictor window, lead 6 h.

Sampling: ``--steps`` Heun steps, latent patches ``--patch`` with a quarter overlap
(PatchedDenoiser, blended at every step), decode tiles ``--decode-tile`` px with the
default 320 px overlap (blended), members written one at a time. If the whole
``--members`` x ``--times`` job does not fit the CPU budget, run fewer members: the
figure is per member and valid time, and the JSON records what was run.

Nothing is chosen from results (synthetic inputs, no split). Settings are the argparse
defaults below. Run niced on a shared machine::

    nice python benchmarks/full_grid_sampling.py              # record in scale.json
    nice python benchmarks/full_grid_sampling.py --smoke      # 512 x 768 window, no record

Writes the key ``full_grid_sampling`` of ``benchmarks/results/scale.json`` (other keys
are left as they are). The stores live under ``benchmarks/_work/`` (git-ignored) and are
deleted afterwards (about 1 GB per member and valid time on disk).
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
WORK = HERE / "_work" / "full_grid_sampling"
RESULTS = HERE / "results" / "scale.json"
VARIABLES = ["t2m", "u10", "v10", "tp"]


def predictors(lat: np.ndarray, lon: np.ndarray, times: int):
    """Smooth synthetic 0.25 deg t2m (K) covering (lat, lon) with a 1 deg halo, lead 6 h."""
    import pandas as pd
    import xarray as xr

    plat = np.arange(lat[0] - 1.0, lat[-1] + 1.0, 0.25)
    plon = np.arange(lon[0] - 1.0, lon[-1] + 1.0, 0.25)
    time_ = pd.date_range("2024-07-01T06", periods=times, freq="h").values
    t2m = (
        300
        - 0.6 * (plat[:, None] - 15)
        + 2 * np.sin(np.radians(plon[None, :] * 4))
        + np.arange(times)[:, None, None] * 0.5
    ).astype(np.float32)
    attrs = {"units": "K", "standard_name": "air_temperature", "long_name": "2 m temperature"}
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t2m, attrs)},
        coords={
            "time": time_,
            "lat": plat,
            "lon": plon,
            "lead_time": ("time", np.full(times, 6.0), {"units": "hours"}),
        },
    )


def build_bundle(region, args):
    """The untrained bundle on ``region`` (module docstring) and its predictors."""
    import torch

    from kmscale.autoencoders import get_autoencoder_class
    from kmscale.conditioning.dataset import ConditioningSpec
    from kmscale.diffusion.bundle import EDMSettings, ModelBundle, grid_dataset
    from kmscale.diffusion.networks import UNetSettings
    from kmscale.diffusion.regression import build_unet

    torch.manual_seed(0)
    lat, lon = region.lat, region.lon
    widths = args.vae_widths
    ae = get_autoencoder_class("vae")(
        variables=VARIABLES,
        block_out_channels=widths,
        latent_channels=4,
        norm_num_groups=min(widths),
    )
    ae.set_input_stats(
        {v: {"mean": 0.0, "std": 1.0, "transform": "none", "scale": 1.0} for v in VARIABLES}
    )
    pred = predictors(lat, lon, args.times)
    spec = ConditioningSpec.from_data(pred, None, lat, lon, factor=ae.downsample_factor)
    unet = UNetSettings(block_out_channels=args.unet_widths, norm_num_groups=min(args.unet_widths))
    reg = build_unet(spec.cond_channels, 4, spec.emb_dim, unet)
    diff = build_unet(8 + spec.cond_channels, 4, spec.emb_dim, unet)
    bundle = ModelBundle(
        ae,
        reg,
        diff,
        spec,
        grid_dataset(lat, lon, None, spec.static_variables),
        EDMSettings(residual_scale=[1.0] * 4),
        lead_times=[0.0, 12.0],
        data_fingerprint="untrained-full-grid-benchmark",
    )
    return bundle, pred


def run_sample(
    bundle_dir: Path, pred_path: Path, out: Path, args
) -> tuple[float, float, float, list]:
    """`kmscale sample` in a child process: (wall s, CPU s, peak RSS GiB, command)."""
    cmd = [
        sys.executable, "-m", "kmscale.cli", "sample", "--bundle", str(bundle_dir),
        "--predictors", str(pred_path), "--out", str(out), "--overwrite",
        "--members", str(args.members), "--steps", str(args.steps), "--member-batch", "1",
        "--patch", ",".join(map(str, args.patch)), "--decode-tile", str(args.decode_tile),
        "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"kmscale sample failed with exit code {os.waitstatus_to_exitcode(status)}")
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss * 1024 / 2**30, cmd  # ru_maxrss is KiB on Linux


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--members", type=int, default=8, help="ensemble members (default 8)")
    p.add_argument("--times", type=int, default=2, help="valid times (default 2)")
    p.add_argument("--steps", type=int, default=4, help="Heun steps (default 4: 7 evaluations)")
    p.add_argument("--patch", type=int, nargs=2, default=[128, 128], help="latent patch")
    p.add_argument("--decode-tile", type=int, default=2048, help="decode tile, px (default 2048)")
    p.add_argument("--vae-widths", type=int, nargs="+", default=[8, 8, 8, 8])
    p.add_argument("--unet-widths", type=int, nargs="+", default=[8, 16])
    p.add_argument("--threads", type=int, default=1, help="torch threads of the child")
    p.add_argument("--smoke", action="store_true", help="512 x 768 window, nothing recorded")
    p.add_argument("--keep", action="store_true", help="keep the store under benchmarks/_work")
    args = p.parse_args(argv)

    from kmscale.data.demo import DemoRegion
    from kmscale.data.store import open_store

    region = DemoRegion.small(512, 768) if args.smoke else DemoRegion.full()
    work = WORK.with_name("full_grid_sampling_smoke") if args.smoke else WORK
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    load = os.getloadavg()
    bundle, pred = build_bundle(region, args)
    bundle_dir = bundle.save(work / "bundle")
    pred_path = work / "predictors.nc"
    pred.to_netcdf(pred_path)
    wall, cpu, rss, cmd = run_sample(bundle_dir, pred_path, work / "ens.zarr", args)
    ds = open_store(work / "ens.zarr", kind="ensemble")
    seams = ds.attrs["kmscale_seam_ratio"]
    sampler = json.loads(ds.attrs["kmscale_sampler"])
    finite = [v for v in seams.values() if v is not None]
    result = {
        "seconds_per_member_time": round(wall / (args.members * args.times), 1),
        # on a shared machine the wall clock counts other jobs' time too; CPU seconds do not
        "cpu_seconds_per_member_time": round(cpu / (args.members * args.times), 1),
        "peak_rss_gib": round(rss, 2),
        "seam_ratio": round(float(np.mean(finite)), 3) if finite else None,
        "seam_ratio_per_variable": seams,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "grid": list(region.shape),
        "latent_grid": [region.ny // 8, region.nx // 8],
        "variables": VARIABLES,
        "members": args.members,
        "times": args.times,
        "sampler": {k: sampler[k] for k in ("steps", "solver", "patch", "overlap", "decode_tile")},
        "bundle": (
            f"untrained (random weights, seed 0): VAE widths {args.vae_widths} (8x, 4 latent "
            f"channels, pixel norm), regression + diffusion UNet2D widths {args.unet_widths}"
        ),
        "threads": args.threads,
        "includes": "process start, bundle load, conditioning, regression, sampling, tiled "
        "decode, zarr writes (one member at a time) and the seam diagnostic (reads back)",
        "split": "n/a: synthetic predictors, untrained bundle, no settings chosen from results",
        "machine": f"2-core shared dev VM, no GPU ({platform.machine()}, {os.cpu_count()} CPUs)",
        "load_before": [round(x, 1) for x in load],
        "load_after": [round(x, 1) for x in os.getloadavg()],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/full_grid_sampling.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "niceness": os.nice(0),
        "sample_command": " ".join(["kmscale", *cmd[3:]]),
    }
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(work)
    if args.smoke:
        return 0
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["full_grid_sampling"] = result
    # only this key is ours; re-read just before writing, so a concurrent writer's keys stay
    tmp = RESULTS.with_name(RESULTS.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
