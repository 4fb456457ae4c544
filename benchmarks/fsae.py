"""Field-space autoencoder benchmark (issue 18) -> ``benchmarks/results/fsae.json``.

Data: CCSM3 annual-mean 2 m temperature (T42, 8 members x 110 years), regridded
conservatively to HEALPix nside 16 (``--prepare-only`` writes that store); train 1890-1969,
validate 1970-1984 (the recipe keeps the best validation checkpoint), test 1985-1999, all
members (120 test fields). Every setting comes from ``recipes/configs/fsae_benchmark.yaml``
and ``recipes/configs/autoencoder_fsae.yaml``; figures are on the test split.

1. FS-AE vs the face CNN-VAE (``face_vae``, the 12 faces with neighbour padding), one latent
   channel at 16x / 64x / 256x (levels 2 / 3 / 4), the same number of training samples,
   trained by the autoencoder recipe: RMSE, PSNR (20 log10(test range / RMSE)), MAE,
   max |error|, power at the top 25 % of spherical-harmonic degrees / truth's.
2. Zero-shot super-resolution: the 16x FS-AE (trained at nside 16) given nside-8 test
   fields (its finest residuals masked) -> nside 16; against healpy bilinear upsampling.
3. Compressed-field diffusion: the EDM (kmscale.diffusion.edm) with a face-convolution
   backbone on the 16x FS-AE's normalized latents (nside 4), conditioned on the
   standardized nside-4 coarse field; ``members`` members per test field decoded to
   nside 16 and scored with fair CRPS, spread-skill, and high-degree power, against the
   MAE of bilinear upsampling of the same coarse field.

Usage::

    # one training per process (each model and ratio), then the evaluation
    for m in fsae face_vae; do for r in 16 64 256; do
        nice python benchmarks/fsae.py --train-only --models $m --ratios $r & done; done; wait
    nice python benchmarks/fsae.py                   # trains what is missing, then evaluates
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from kmscale.autoencoders import load_autoencoder
from kmscale.autoencoders.train import AutoencoderConfig, train_autoencoder
from kmscale.config import load_config, to_dict
from kmscale.diffusion.edm import EDMLoss, EDMPrecond
from kmscale.diffusion.face_net import FaceDenoiser
from kmscale.diffusion.samplers import edm_sampler, member_generators, member_noise
from kmscale.evaluation.probabilistic import crps_ensemble, spread_skill_from_parts
from kmscale.evaluation.sphere_spectra import angular_power_spectrum, high_degree_power
from kmscale.sphere import (
    coarsen,
    open_healpix_store,
    regrid_to_healpix,
    upsample,
    write_healpix_store,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # kmscale_testdata.py
from kmscale_testdata import data_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "fsae.json"
SPLITS = {"train": ("1890", "1969"), "val": ("1970", "1984"), "test": ("1985", "1999")}
TRAIN_FIELDS = 8 * 80  # 8 members x the 80 training years
log = logging.getLogger("fsae_benchmark")


@dataclass
class BenchmarkConfig:
    autoencoder_config: str = "recipes/configs/autoencoder_fsae.yaml"
    out_dir: str = "runs/fsae_bench"
    nside: int = 16
    ratios: list[int] = field(default_factory=lambda: [16, 64, 256])
    train_samples: int = 1536
    fsae_options: dict = field(default_factory=dict)
    face_vae_options: dict = field(default_factory=dict)
    face_vae_kl_weight: float = 1e-6
    sr_ratio: int = 16
    diffusion_ratio: int = 16
    diffusion_samples: int = 4096
    diffusion_channels: int = 32
    diffusion_blocks: int = 4
    members: int = 8
    sampler_steps: int = 18


def prepare(cfg: BenchmarkConfig) -> Path:
    """CCSM3 -> HEALPix (conservative) targets store, time = year (members stacked)."""
    path = ROOT / cfg.out_dir / f"ccsm3_t2m_healpix{cfg.nside}.zarr"
    if path.exists():
        return path
    src = data_dir() / "era5_global" / "ccsm3_trefht_annual_t42_8members_1890-1999.nc"
    ds = xr.open_dataset(src, engine="h5netcdf")
    da = ds.TREFHT.transpose("year", "member", "lat", "lon")
    hp = regrid_to_healpix(da.rename("t2m").to_dataset(), cfg.nside, "conservative")
    t2m = hp.t2m.stack(time=("year", "member")).transpose("time", "cell")
    years = t2m.year.values
    out = xr.Dataset(
        {"t2m": (("time", "cell"), t2m.values.astype(np.float32), {"units": "K"})},
        coords={
            "time": pd.to_datetime([f"{y}-07-01" for y in years]),
            "member": ("time", np.searchsorted(ds.member.values, t2m.member.values)),
            "cell": hp.cell,
            "lat": hp.lat,
            "lon": hp.lon,
        },
        attrs={**hp.attrs, "source": src.name, "members": " ".join(ds.member.values)},
    )
    return write_healpix_store(out, path)


def split(ds: xr.Dataset, name: str) -> np.ndarray:
    a, b = SPLITS[name]
    return ds.t2m.sel(time=slice(a, b)).values[:, None].astype(np.float32)  # (T, 1, npix)


def ae_config(cfg: BenchmarkConfig, name: str, ratio: int, store: Path) -> AutoencoderConfig:
    levels = int(round(math.log(ratio, 4)))
    options = dict(cfg.fsae_options if name == "fsae" else cfg.face_vae_options, levels=levels)
    kl = 0.0 if name == "fsae" else cfg.face_vae_kl_weight
    ae = load_config(
        AutoencoderConfig,
        ROOT / cfg.autoencoder_config,
        [
            f"out_dir={ROOT / cfg.out_dir / f'{name}_{ratio}'}",
            f"data.targets={store}",
            f"model.name={name}",
            f"loss.kl_weight={kl}",
            f"stage1.total_samples={cfg.train_samples}",
        ],
    )
    ae.model.options = options  # replaced whole: a dotted override would merge into fsae's
    return ae


def train(cfg: BenchmarkConfig, name: str, ratio: int, store: Path) -> dict:
    ae = ae_config(cfg, name, ratio, store)
    t0, c0 = time.perf_counter(), time.process_time()
    model = train_autoencoder(ae)
    budget = {
        "samples": cfg.train_samples,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (Path(ae.out_dir) / "budget.json").write_text(json.dumps(budget))
    return budget


def power_ratio(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean C_l over the top 25 % of degrees, prediction / truth (spectra averaged)."""
    p = angular_power_spectrum(pred.reshape(-1, pred.shape[-1])).mean(0)
    t = angular_power_spectrum(truth.reshape(-1, truth.shape[-1])).mean(0)
    return float(high_degree_power(p) / high_degree_power(t))


def scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    err = pred.astype(np.float64) - truth
    rmse = float(np.sqrt(np.mean(err**2)))
    return {
        "rmse": rmse,
        "psnr": float(20 * np.log10(np.ptp(truth) / rmse)),
        "mae": float(np.mean(np.abs(err))),
        "max_abs": float(np.max(np.abs(err))),
        "power_ratio_high_l": power_ratio(pred, truth),
    }


@torch.no_grad()
def reconstruct(model, x: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(x)
    return torch.cat(
        [model.decode(model.encode(t[i : i + 32])) for i in range(0, len(t), 32)]
    ).numpy()


def zero_shot(model, test: np.ndarray) -> dict:
    coarse = coarsen(test, 1)
    with torch.no_grad():
        sr = model.super_resolve(torch.from_numpy(coarse)).numpy()
    bil = upsample(coarse.astype(np.float64), 1)
    return {
        "fsae_rmse": scores(sr, test)["rmse"],
        "bilinear_rmse": scores(bil, test)["rmse"],
        "power_ratio_high_l": power_ratio(sr, test),
        "bilinear_power_ratio_high_l": power_ratio(bil, test),
        "input": f"nside {model.config.nside // 2} (test fields coarsened by 1 level)",
    }


def diffusion(cfg: BenchmarkConfig, model, train_x: np.ndarray, test: np.ndarray) -> dict:
    """EDM on normalized FS-AE latents conditioned on the standardized coarse field."""
    levels = model.config.levels
    torch.manual_seed(0)

    def cond_of(x: np.ndarray) -> torch.Tensor:
        return model.normalize_input(torch.from_numpy(coarsen(x, levels)))[..., None]

    with torch.no_grad():
        z = torch.cat(
            [
                model.encode(torch.from_numpy(train_x[i : i + 64]))
                for i in range(0, len(train_x), 64)
            ]
        )[..., None]
    c = cond_of(train_x)
    net = EDMPrecond(
        FaceDenoiser(1 + c.shape[1], z.shape[1], cfg.diffusion_channels, cfg.diffusion_blocks),
        sigma_data=float(z.std()),
    )
    loss_fn = EDMLoss(sigma_data=float(z.std()))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    ema = torch.optim.swa_utils.AveragedModel(
        net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.99)
    )
    batch, t0, c0 = 16, time.perf_counter(), time.process_time()
    gen = torch.Generator().manual_seed(0)
    for _ in range(cfg.diffusion_samples // batch):
        idx = torch.randint(len(z), (batch,), generator=gen)
        loss = loss_fn(net, z[idx], c[idx], generator=gen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update_parameters(net)
    budget = {
        "samples": cfg.diffusion_samples,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
    }
    denoiser = ema.module.eval()
    ct = cond_of(test)
    members = []
    with torch.no_grad():
        for m in range(cfg.members):
            seeds = [1000 * m + i for i in range(len(test))]  # one per (member, field)
            gens = member_generators(seeds)
            noise = member_noise(seeds, z.shape[1:], generators=gens)
            zs = edm_sampler(denoiser, noise, cond=ct, num_steps=cfg.sampler_steps, generators=gens)
            members.append(model.decode(zs[..., 0].float()).numpy())
    ens = np.stack(members)  # (M, T, 1, npix)
    crps = float(crps_ensemble(ens, test, fair=True).mean())
    mse = float(np.mean((ens.mean(0) - test) ** 2))
    var = float(np.mean(ens.var(0, ddof=1)))
    baseline = upsample(coarsen(test, levels).astype(np.float64), levels)
    return {
        "crps_fair": crps,
        "spread_skill": float(spread_skill_from_parts(var, mse, cfg.members)),
        "baseline_mae": float(np.mean(np.abs(baseline - test))),
        "ensemble_mean_rmse": math.sqrt(mse),
        "power_ratio_high_l": power_ratio(
            ens.reshape(-1, ens.shape[-1]),
            np.broadcast_to(test, ens.shape).reshape(-1, ens.shape[-1]),
        ),
        "members": cfg.members,
        "budget": budget,
        "condition": f"coarse field at nside {model.config.nside >> levels}",
        "latent": f"FS-AE {4**levels}x latent, {model.latent_channels} channel",
    }


_PART_KEYS = {
    "ae": ("fsae", "cnn_vae", "budgets"),
    "sr": ("zero_shot_sr",),
    "diffusion": ("diffusion",),
}


def _keys(parts: set[str]) -> set[str]:
    """JSON keys a run owns: its parts' keys and the run description."""
    own = {k for p in parts for k in _PART_KEYS[p]}
    return own | {
        "split",
        "data",
        "config",
        "budget_note",
        "machine",
        "load_avg_1min",
        "date",
        "command",
    }


def parser() -> argparse.ArgumentParser:
    """The command line: which models, ratios and evaluations to run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="recipes/configs/fsae_benchmark.yaml")
    p.add_argument("--models", nargs="+", default=["fsae", "face_vae"])
    p.add_argument("--prepare-only", action="store_true")
    p.add_argument("--train-only", action="store_true")
    p.add_argument(
        "--parts",
        nargs="+",
        default=["ae", "sr", "diffusion"],
        choices=["ae", "sr", "diffusion"],
        help="evaluations to run (JSON keys merged)",
    )
    p.add_argument(
        "--ratios",
        nargs="+",
        type=int,
        default=None,
        help="train only these ratios (parallel runs); default: the config's",
    )
    return p


def main(argv: list[str] | None = None) -> dict | None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    cfg = load_config(BenchmarkConfig, ROOT / args.config, [])
    store = prepare(cfg)
    if args.prepare_only:
        print(store)
        return None
    for ratio in args.ratios or cfg.ratios:
        for name in args.models:
            run = ROOT / cfg.out_dir / f"{name}_{ratio}"
            if not (run / "budget.json").exists():
                log.info("training %s at %dx: %s", name, ratio, train(cfg, name, ratio, store))
    if args.train_only:
        return None
    ds = open_healpix_store(store, nside=cfg.nside).load()
    train_x, test = split(ds, "train"), split(ds, "test")
    parts = set(args.parts)
    result: dict = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "ae" in parts:
        result.update(autoencoder_scores(cfg, test))
    if "sr" in parts:
        sr_model = load_autoencoder(ROOT / cfg.out_dir / f"fsae_{cfg.sr_ratio}" / "autoencoder")
        result["zero_shot_sr"] = zero_shot(sr_model.eval(), test)
    if "diffusion" in parts:
        dm = load_autoencoder(ROOT / cfg.out_dir / f"fsae_{cfg.diffusion_ratio}" / "autoencoder")
        result["diffusion"] = diffusion(cfg, dm.eval(), train_x, test)
    if RESULTS.exists():  # another part may have finished meanwhile: keep its keys
        done = json.loads(RESULTS.read_text())
        result = {**done, **{k: v for k, v in result.items() if k in _keys(parts)}}
    result.update(provenance(cfg, parts))
    tmp = RESULTS.with_name(RESULTS.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, RESULTS)
    print(json.dumps(result, indent=2))
    return result


def autoencoder_scores(cfg: BenchmarkConfig, test) -> dict:
    """Test scores and training budgets of the FS-AE and the CNN VAE at every ratio, and
    the FS-AE's RMSE relative to the CNN VAE's (keys fsae, cnn_vae, budgets)."""
    result: dict = {"fsae": {}, "cnn_vae": {}, "budgets": {}}
    for ratio in cfg.ratios:
        for name, key in (("fsae", "fsae"), ("face_vae", "cnn_vae")):
            run = ROOT / cfg.out_dir / f"{name}_{ratio}"
            model = load_autoencoder(run / "autoencoder").eval()
            result[key][str(ratio)] = scores(reconstruct(model, test), test)
            result["budgets"][f"{key}_{ratio}"] = json.loads((run / "budget.json").read_text())
    for ratio in cfg.ratios:
        r = str(ratio)
        result["fsae"][r]["rmse_vs_cnn_vae"] = (
            result["fsae"][r]["rmse"] / result["cnn_vae"][r]["rmse"]
        )
    return result


def provenance(cfg: BenchmarkConfig, parts: set[str]) -> dict:
    """Split, data, config, budget note, machine, date and command of the JSON."""
    return {
        "split": "test: 1985-1999, all 8 members (120 fields); train 1890-1969 (640), "
        "validation 1970-1984 (best recipe checkpoint)",
        "data": f"CCSM3 TREFHT annual mean, T42 -> HEALPix nside {cfg.nside} (conservative)",
        "config": to_dict(cfg),
        "budget_note": f"every autoencoder sees the same train_samples ({cfg.train_samples} "
        f"fields, {cfg.train_samples / TRAIN_FIELDS:.1f} epochs; budgets.* give CPU seconds); "
        "the diffusion model diffusion_samples. Far below what the targets need: see "
        "BENCHMARKS.md",
        "machine": "2-core shared dev VM, no GPU, torch 1 thread",
        "load_avg_1min": os.getloadavg()[0],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "command": "nice python benchmarks/fsae.py --parts " + " ".join(sorted(parts)),
    }


if __name__ == "__main__":
    main()
