"""Peak memory and throughput of a short regression training run on a long latent store.

Run by ``benchmarks/scale.py`` (part ``streaming``) in a fresh process per store, so that
``ru_maxrss`` is this run's own peak::

    python benchmarks/streaming_probe.py STORE AE_DIR OUT_DIR --samples 32 [--in-memory]

The targets are a lazy dask array on the target grid (read by nothing but the data
fingerprint's streamed sum: the latents come from STORE), the predictors a small in-memory
coarse field. Prints one JSON line: peak RSS of this process and of its largest DataLoader
worker (GiB), examples/s of the DataLoader alone and of the training step alone (forward,
backward, Adam on one batch), and the wall time of the whole run (set-up included).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def _data(store: Path):
    import dask.array as da
    import xarray as xr

    from kmscale.autoencoders.latent_store import open_latents
    from kmscale.diffusion.train import TrainingData

    lat_ds = open_latents(store)
    time_ = lat_ds["time"].values
    h, w = 2 * lat_ds.sizes["latent_y"], 2 * lat_ds.sizes["latent_x"]  # the VAE's factor 2
    lat, lon = 40 + 0.01 * np.arange(h), 100 + 0.01 * np.arange(w)
    targets = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), da.zeros((time_.size, h, w), "f4", (24, h, w)))},
        coords={"time": time_, "lat": lat, "lon": lon},
    )
    targets["t2m"].attrs["units"] = "K"
    hours = np.arange(time_.size)[:, None, None]
    coarse = xr.Dataset(
        {
            "t2m": (
                ("time", "lat", "lon"),
                (280 + 5 * np.sin(2 * np.pi * hours / 24) + np.zeros((1, h // 32, w // 32))).astype(
                    "f4"
                ),
                {"units": "K"},
            )
        },
        coords={"time": time_, "lat": lat[16::32], "lon": lon[16::32]},
    )
    return TrainingData(targets, coarse, None)


def _step_rate(spec, unet, batch: dict, steps: int = 5) -> float:
    """Examples/s of the training step alone (forward, backward, Adam) on one batch."""
    import torch

    from kmscale.diffusion.regression import build_unet, regression_loss

    model = build_unet(spec.cond_channels, batch["z"].shape[1], spec.emb_dim, unet)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        regression_loss(model, batch).backward()
        opt.step()
    return round(steps * batch["z"].shape[0] / (time.perf_counter() - start), 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store")
    p.add_argument("autoencoder")
    p.add_argument("out_dir")
    p.add_argument("--samples", type=int, default=32, help="training examples (default 32)")
    p.add_argument("--patch", type=int, default=64, help="latent window side (default 64)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--in-memory", action="store_true", help="data.stream off (reference)")
    args = p.parse_args(argv)
    import torch
    from torch.utils.data import DataLoader

    from kmscale.diffusion.networks import UNetSettings
    from kmscale.diffusion.train import DataSettings, RegressionConfig, train_regression
    from kmscale.training import TrainingSettings

    torch.set_num_threads(1)
    data = _data(Path(args.store))
    patch = None if args.in_memory else [args.patch, args.patch]
    cfg = RegressionConfig(
        out_dir=args.out_dir,
        autoencoder=args.autoencoder,
        data=DataSettings(latents=args.store, stream=not args.in_memory, stream_patch=patch),
        unet=UNetSettings(block_out_channels=[8, 16], norm_num_groups=4, layers_per_block=1),
        train=TrainingSettings(
            global_batch_size=4,
            total_samples=args.samples,
            checkpoint_every_samples=args.samples,
            log_every_samples=args.samples,
            mixed_precision="no",
            num_workers=0 if args.in_memory else args.workers,
        ),
    )
    out: dict = {}
    if not args.in_memory:
        from kmscale.autoencoders.latent_store import open_latents
        from kmscale.conditioning.dataset import ConditioningSpec
        from kmscale.diffusion.streaming import StreamingExamples

        lat, lon = data.targets["lat"].values, data.targets["lon"].values
        spec = ConditioningSpec.from_data(data.predictors, None, lat, lon, 2)
        ds = StreamingExamples(
            spec, open_latents(args.store), data.predictors, None, lat, lon,
            data.targets["time"].values, patch=patch,
        )  # fmt: skip
        start, n = time.perf_counter(), 0
        loader = DataLoader(
            torch.utils.data.Subset(ds, range(args.samples)), batch_size=4, num_workers=args.workers
        )
        for batch in loader:
            n += batch["z"].shape[0]
        out["examples_per_s_loader"] = round(n / (time.perf_counter() - start), 2)
        out["examples_per_s_step"] = _step_rate(spec, cfg.unet, batch)
    start = time.perf_counter()
    train_regression(cfg, data)
    wall = time.perf_counter() - start
    gib = 2**20  # ru_maxrss is in KiB on Linux
    out |= {
        "rss_main_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / gib, 3),
        "rss_worker_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / gib, 3),
        "train_wall_s": round(wall, 1),
        "examples_per_s_training": round(args.samples / wall, 2),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
