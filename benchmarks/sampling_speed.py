"""Sampling speed (issue 4): latent vs pixel-space EDM sampling, side by side.

Target of issue 4: "latent sampling at least 5x faster per member than pixel-space
sampling with the same number of steps and network width, measured side by side".

Both runs use ``kmscale.diffusion.samplers.edm_sampler`` (Heun) on an
``EDMPrecond(ConditionalUNet)`` of the SAME width (block_out_channels, layers per block,
attention levels) and the same number of steps; only the grid differs:

  pixel   C_pix = 3 target channels on a 256 x 256 grid, + C_cond conditioning channels
  latent  4 latent channels on the 8x-down 32 x 32 grid (the VAE's default stride),
          + the same C_cond conditioning channels on the latent grid

Runs alternate (latent, pixel, latent, pixel, ...) so that load from other jobs on a
shared machine hits both alike; each figure is the median over ``--repeats`` runs after
one warm-up, for each torch thread count in ``--threads`` (default 1, the headline,
then 2). On the shared development machine (2 cores, load average ~8-10 from other
engineers' jobs) two threads per process oversubscribe the cores and the small latent
kernels pay most for it (thread synchronisation, not arithmetic), so the single-thread
figure measures the work and the two-thread figure is reported beside it. Per member =
time of one batch / batch size. The latent figure is the
sampler alone (the issue's definition); decoding one latent member with the default
kmscale VAE (``VAEAutoencoder``, 8x down, 4 channels) is timed too and reported
separately as the end-to-end speed-up.

Budget: with the defaults (4 Heun steps = 7 network calls, 5 repeats) about 10 minutes on
2 shared CPU cores.

Usage::

    python benchmarks/sampling_speed.py    # defaults, writes results/sampling_speed.json
    python benchmarks/sampling_speed.py --steps 18 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from kmscale.autoencoders.vae import VAEAutoencoder
from kmscale.diffusion.edm import EDMPrecond
from kmscale.diffusion.networks import ConditionalUNet
from kmscale.diffusion.samplers import edm_sampler, member_noise
from kmscale.diffusion.settings import HEUN

RESULTS = Path(__file__).resolve().parent / "results"


def build(channels: int, cond_channels: int, args: argparse.Namespace) -> EDMPrecond:
    torch.manual_seed(0)
    unet = ConditionalUNet(
        channels + cond_channels,
        channels,
        block_out_channels=tuple(args.width),
        layers_per_block=args.layers_per_block,
        attention_levels=[args.attention] * len(args.width),
        mid_attention=args.attention,
        norm_num_groups=args.norm_groups,
    )
    return EDMPrecond(unet.eval())


def time_sampling(net: EDMPrecond, shape: tuple[int, int, int], cond_channels: int, args) -> float:
    """Seconds for one batch of ``args.batch`` members."""
    seeds = list(range(args.batch))
    noise = member_noise(seeds, shape)
    cond = torch.randn(
        args.batch, cond_channels, *shape[1:], generator=torch.Generator().manual_seed(1)
    )
    t0 = time.perf_counter()
    edm_sampler(net, noise, cond, num_steps=args.steps)
    return time.perf_counter() - t0


def time_decode(vae: VAEAutoencoder, shape: tuple[int, int, int], batch: int) -> float:
    z = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(2))
    t0 = time.perf_counter()
    with torch.no_grad():
        vae._decode_normalized(z)  # the network part of decode(); standardization is negligible
    return time.perf_counter() - t0


def measure(pix_net, lat_net, vae, pix_shape, lat_shape, args, threads: int) -> dict:
    """Warm up, then interleave timed latent / decode / pixel runs; medians per member."""
    warm = argparse.Namespace(**{**vars(args), "steps": 1})
    time_sampling(lat_net, lat_shape, args.cond_channels, warm)
    time_sampling(pix_net, pix_shape, args.cond_channels, warm)
    time_decode(vae, lat_shape, args.batch)
    lat, pix, dec = [], [], []
    for r in range(args.repeats):
        lat.append(time_sampling(lat_net, lat_shape, args.cond_channels, args) / args.batch)
        dec.append(time_decode(vae, lat_shape, args.batch) / args.batch)
        pix.append(time_sampling(pix_net, pix_shape, args.cond_channels, args) / args.batch)
        print(
            f"{threads} thread(s), run {r + 1}/{args.repeats}: latent {lat[-1]:.3f} s, decode "
            f"{dec[-1]:.3f} s, pixel {pix[-1]:.3f} s per member",
            flush=True,
        )
    t_lat, t_pix, t_dec = statistics.median(lat), statistics.median(pix), statistics.median(dec)
    return {
        "speedup": round(t_pix / t_lat, 2),
        "speedup_including_vae_decode": round(t_pix / (t_lat + t_dec), 2),
        "seconds_per_member": {"latent": t_lat, "pixel": t_pix, "vae_decode": t_dec},
        "runs_seconds_per_member": {"latent": lat, "pixel": pix, "vae_decode": dec},
        "load_average_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def parser() -> argparse.ArgumentParser:
    """The command line (defaults in the module docstring's budget)."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Usage::")[1],
    )
    p.add_argument(
        "--pixel", type=int, nargs=2, default=(256, 256), metavar=("H", "W"), help="pixel grid"
    )
    p.add_argument("--pixel-channels", type=int, default=3, help="target variables in pixel space")
    p.add_argument("--factor", type=int, default=8, help="latent downsampling factor")
    p.add_argument("--latent-channels", type=int, default=4)
    p.add_argument("--cond-channels", type=int, default=8, help="conditioning channels (both runs)")
    p.add_argument(
        "--width", type=int, nargs="+", default=(32, 64, 128), help="block_out_channels (both runs)"
    )
    p.add_argument("--layers-per-block", type=int, default=2)
    p.add_argument("--norm-groups", type=int, default=16)
    p.add_argument(
        "--attention",
        action="store_true",
        help="self-attention at every level and in the bottleneck (default: none)",
    )
    p.add_argument(
        "--steps", type=int, default=4, help="EDM Heun steps (both runs; 2N-1 network calls)"
    )
    p.add_argument("--batch", type=int, default=1, help="members per sampler call")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each (median reported)")
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=(1, 2),
        help="torch CPU thread counts to measure in turn; the first is the headline",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "sampling_speed.json")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)

    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    H, W = args.pixel
    if H % args.factor or W % args.factor:
        p.error(f"expected a pixel grid divisible by --factor {args.factor}, found {H} x {W}")
    pix_shape = (args.pixel_channels, H, W)
    lat_shape = (args.latent_channels, H // args.factor, W // args.factor)
    pix_net = build(args.pixel_channels, args.cond_channels, args)
    lat_net = build(args.latent_channels, args.cond_channels, args)
    levels = {8: (32, 64, 128, 128), 4: (32, 64, 128), 2: (32, 64)}
    vae = VAEAutoencoder(
        variables=[f"v{i}" for i in range(args.pixel_channels)],
        block_out_channels=levels.get(args.factor, (32,) * (args.factor.bit_length())),
        latent_channels=args.latent_channels,
    ).eval()
    if vae.downsample_factor != args.factor:
        p.error(f"no default VAE for factor {args.factor}; use 2, 4 or 8")

    settings = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        settings[str(threads)] = measure(pix_net, lat_net, vae, pix_shape, lat_shape, args, threads)
    result = record(args, argv, settings, pix_net, lat_net, pix_shape, lat_shape, load0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for threads, r in settings.items():
        t = r["seconds_per_member"]
        print(
            f"{threads} thread(s): latent {t['latent']:.3f} s, pixel {t['pixel']:.3f} s per member "
            f"(median of {args.repeats}); speed-up {r['speedup']}x "
            f"({r['speedup_including_vae_decode']}x including VAE decode)"
        )
    print(f"-> {args.out}")
    return 0


def record(args, argv, settings: dict, pix_net, lat_net, pix_shape, lat_shape, load0) -> dict:
    """The JSON written to ``--out``: headline, figures per thread count, setup, machine."""
    head = settings[str(args.threads[0])]
    return {
        "sampling_speedup_latent_vs_pixel": head["speedup"],
        "speedup_including_vae_decode": head["speedup_including_vae_decode"],
        "headline_threads": args.threads[0],
        "by_torch_threads": settings,
        "setup": {
            "pixel_shape": list(pix_shape),
            "latent_shape": list(lat_shape),
            "cond_channels": args.cond_channels,
            "block_out_channels": list(args.width),
            "layers_per_block": args.layers_per_block,
            "attention": args.attention,
            "num_steps": args.steps,
            "solver": HEUN,
            "network_evaluations": 2 * args.steps - 1,
            "batch": args.batch,
            "repeats": args.repeats,
            "params": {
                "pixel": sum(q.numel() for q in pix_net.parameters()),
                "latent": sum(q.numel() for q in lat_net.parameters()),
            },
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": load0,
            "torch": torch.__version__,
            "note": "development machine shared with other engineers' jobs (2 cores)",
        },
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/sampling_speed.py "
        + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
    }


if __name__ == "__main__":
    raise SystemExit(main())
