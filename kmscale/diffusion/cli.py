"""``kmscale sample`` and ``kmscale demo``.

Only the standard library and :mod:`kmscale.diffusion.settings` (the sampler's
defaults, itself standard library only) are imported at top level (``kmscale --help``
stays fast); the handlers import torch and friends.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from kmscale.data.distributed import add_scheduler_argument
from kmscale.diffusion.settings import EULER, HEUN, SOLVERS, SamplerSettings

SAMPLE_HELP = """\
Downscale coarse predictors with a trained model bundle into an ensemble store.

The store (zarr v3) holds one variable per target field with dims
(time, member, lat, lon), CF attributes, and provenance: bundle fingerprint, sampler
settings, per-member seeds. It is written time chunk by time chunk under
OUT.partial and renamed to OUT only when complete; running the same command again
after an interruption resumes where it stopped.

example:
  kmscale sample --bundle runs/ldm/bundle --predictors fuxi_2024.zarr \\
      --members 16 --out ens.zarr --steps 18 --solver heun
"""

DEMO_HELP = """\
Run the whole pipeline on the built-in synthetic demo data: prepare data, train the
autoencoder, encode, train the regression U-Net, train the residual diffusion model,
sample an ensemble, score it, and write a report with figures.

--size small (default) finishes in at most 10 minutes on 2 CPU cores.
--size gpu is the larger documented setting (bigger region, wider networks, longer
training) for one GPU; see README.
"""


def _pair(text: str) -> list[int]:
    parts = [int(p) for p in text.replace("x", ",").split(",") if p]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(
            f"expected N or H,W with positive integers, found {text!r}"
        )
    return parts


def _sampler_args(p: argparse.ArgumentParser) -> None:
    """Ensemble size, solver and noise settings (defaults: SamplerSettings)."""
    d = SamplerSettings()
    p.add_argument(
        "--members", type=int, default=d.members, help=f"ensemble size M (default {d.members})"
    )
    p.add_argument(
        "--steps", type=int, default=d.steps, help=f"EDM noise levels N (default {d.steps})"
    )
    p.add_argument(
        "--solver",
        choices=SOLVERS,
        default=d.solver,
        help=f"{HEUN}: EDM Algorithm 2; {EULER}: first order, few-step option (default {d.solver})",
    )
    p.add_argument(
        "--churn",
        type=float,
        default=d.S_churn,
        help=f"S_churn stochasticity (default {d.S_churn:g})",
    )
    p.add_argument(
        "--seed", type=int, default=d.seed, help=f"member m uses seed SEED+m (default {d.seed})"
    )
    p.add_argument(
        "--center-residuals",
        action="store_true",
        help="re-centre the members on the regression mean: remove their mean latent residual, "
        "keep its variance (members then depend on M and on every seed)",
    )
    p.add_argument(
        "--member-batch",
        type=int,
        default=d.member_batch,
        help=f"members denoised together (memory only; default {d.member_batch})",
    )


def _tiling_args(p: argparse.ArgumentParser) -> None:
    """Latent patches for sampling and pixel tiles for decoding (large domains)."""
    p.add_argument(
        "--patch",
        type=_pair,
        default=None,
        metavar="H,W",
        help="patch-wise sampling with latent tiles of H,W (large domains)",
    )
    p.add_argument(
        "--overlap",
        type=_pair,
        default=None,
        metavar="H,W",
        help="tile overlap in latent pixels (default: a quarter of the tile)",
    )
    p.add_argument(
        "--decode-tile",
        type=_pair,
        default=None,
        metavar="H,W",
        help="decode in pixel tiles of H,W (multiples of the downsample factor; default: whole "
        "field up to 1024 px a side, else 1024 px tiles)",
    )
    p.add_argument(
        "--decode-overlap",
        type=_pair,
        default=None,
        metavar="H,W",
        help="pixel overlap of decode tiles (default: 320 px, at most half a tile)",
    )


def _register_demo(subparsers) -> None:
    d = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on the built-in demo data (<= 10 min on 2 cores)",
        description=DEMO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    d.add_argument(
        "--size",
        choices=("small", "gpu", "tiny"),
        default="small",
        help="small: 2 CPU cores, <= 10 min (default); gpu: larger setting for one GPU; "
        "tiny: smoke test",
    )
    _device_arg(d)
    d.add_argument("--fresh", action="store_true", help="delete --out first instead of resuming")
    d.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; use 1 on a busy shared machine)",
    )
    d.set_defaults(func=run_demo)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="sample a downscaled ensemble from predictors with a model bundle",
        description=SAMPLE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--bundle", required=True, help="model bundle directory (bundle.json, autoencoder/, ...)"
    )
    p.add_argument(
        "--predictors",
        required=True,
        nargs="+",
        help="predictor file(s): NetCDF/GRIB/zarr, canonical variables (time, lat, lon)",
    )
    p.add_argument("--out", required=True, help="output ensemble store (.zarr)")
    _sampler_args(p)
    _tiling_args(p)
    d = SamplerSettings()
    p.add_argument(
        "--time-chunk",
        type=int,
        default=d.time_chunk,
        help=f"valid times per store chunk (unit of resume; default {d.time_chunk})",
    )
    p.add_argument("--start", default=None, help="first valid time to downscale (ISO)")
    p.add_argument("--end", default=None, help="last valid time to downscale (ISO)")
    p.add_argument(
        "--target-grid",
        default=None,
        metavar="FILE",
        help="a dataset on the grid you expect the output on (e.g. your truth or static file): "
        "checked against the bundle's target grid before sampling",
    )
    _device_arg(p)
    p.add_argument("--overwrite", action="store_true", help="replace a complete store at --out")
    p.add_argument(
        "--no-range-check",
        action="store_true",
        help="accept predictor values outside the variables' plausible ranges (exotic data)",
    )
    add_scheduler_argument(p)
    p.set_defaults(func=run_sample)
    _register_demo(subparsers)


def _device_arg(p: argparse.ArgumentParser) -> None:
    """``--device``, resolved by :func:`_device`."""
    p.add_argument(
        "--device", default=None, help="torch device (default: cuda if available, else cpu)"
    )


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def run_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from kmscale.data.readers import open_dataset
    from kmscale.diffusion.bundle import ModelBundle
    from kmscale.diffusion.pipeline import DownscalingPipeline

    bundle = ModelBundle.load(args.bundle)
    predictors = open_dataset(
        args.predictors,
        variables=bundle.spec.predictors.variables,
        check_range=not args.no_range_check,
    )
    if args.start or args.end:
        sl = slice(
            None if args.start is None else np.datetime64(args.start),
            None if args.end is None else np.datetime64(args.end),
        )
        predictors = predictors.sel(time=sl)
    bundle.validate(predictors, open_dataset(args.target_grid) if args.target_grid else None)
    settings = SamplerSettings(
        members=args.members,
        steps=args.steps,
        solver=args.solver,
        S_churn=args.churn,
        seed=args.seed,
        member_batch=args.member_batch,
        patch=args.patch,
        overlap=args.overlap,
        time_chunk=args.time_chunk,
        decode_tile=args.decode_tile,
        decode_overlap=args.decode_overlap,
        center_residuals=args.center_residuals,
    )
    resolved = {k: v for k, v in vars(args).items() if k != "func"}
    pipe = DownscalingPipeline(bundle, device=_device(args.device))
    path = pipe.run(
        predictors,
        args.out,
        settings,
        overwrite=args.overwrite,
        resolved_config=resolved,
        scheduler=args.scheduler,
    )
    print(
        json.dumps(
            {"store": str(path), "members": args.members, "times": int(predictors.sizes["time"])}
        ),
        file=sys.stdout,
    )
    return 0


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from kmscale.diffusion.demo import run_demo as demo

    if args.threads:
        torch.set_num_threads(args.threads)
    # Accelerate logs every checkpoint file at INFO; the demo's own progress is enough.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    from kmscale.diffusion.demo_checks import format_checks

    summary = demo(args.out, size=args.size, device=_device(args.device), fresh=args.fresh)
    print(
        json.dumps({k: v for k, v in summary.items() if k != "demo_checks"}, indent=2, default=str)
    )
    print(f"\ndemo checks on the validation hours ({args.out}/summary.json, demo_checks):")
    print(format_checks(summary["demo_checks"]))
    return 0
