"""``kmscale demo``: the whole pipeline on the built-in demo data, end to end.

Stages (each writes its artifact under ``out``; a re-run reuses finished stages)::

    data/          prepare: demo targets (t2m, u10, v10, tp at ~1 km), 0.25-deg
                   forecast predictors (10 variables, 24 h lead), static fields
    vae/           train a VAE on the training days (2x, 8 latent channels for the four
                   variables) with the autoencoder recipe's code
    latents.zarr   encode the targets (the compressed archive; the training data below)
    regression/    train the regression U-Net in latent space (bundle without diffusion)
    ldm/           train the EDM residual latent diffusion model on cross-fitted
                   residuals (two half-period regressions under ldm/folds; complete bundle)
    ensemble.zarr  sample the validation hours (members with recorded seeds), and
                   regression_mean.zarr, the deterministic reference
    metrics.nc     score: fair CRPS, spread-skill, spectra, ... (kmscale score)
    report/        report with tables and figures (kmscale report)
    summary.json   timings per stage and the headline scores

Sizes: ``small`` fits in 10 minutes on 2 CPU cores; ``gpu`` is the larger setting
(a 256 x 256 km region, a week of training hours, wider networks, 10x longer
training, 16 members) meant for one GPU.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kmscale.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class DemoSize:
    """Everything a demo size changes (one place)."""

    ny: int = 64  # region rows (1 km pixels)
    nx: int = 64
    # Lower-left corner: the eastern edge of the Tibetan Plateau (Hengduan Mountains),
    # chosen so that the demo exercises terrain (3 km relief), lapse rates and rain
    # (about 18 % of pixels wet); a window over the sea would leave tp all zero.
    lat0: float = 29.0
    lon0: float = 100.0
    # Ten days of training hours: with four, the validation day's weather (a wet spell)
    # lay outside everything the VAE had seen. Budgets count samples, so more hours
    # cost no training time.
    train_times: str = "2023-07-01T00/2023-07-10T23"
    val_times: str = "2023-07-11T00/2023-07-11T11"
    variables: list[str] = field(default_factory=lambda: ["t2m", "u10", "v10", "tp"])
    vae_widths: list[int] = field(default_factory=lambda: [32, 32])  # 2x downsampling
    vae_latent_channels: int = 8  # 4 variables x 4 pixels -> 8 channels: 2x compression
    vae_samples: int = 6_400
    vae_batch: int = 8  # small batches: the VAE needs many steps more than many samples
    # The autoencoder recipe's decoder stage (encoder frozen, batch-mean spectrum loss);
    # 0 = none. Off here: on the demo's short-trained 4-variable VAE (t2m validation RMSE
    # 3.4 K) 1,600 decoder samples made it worse (7.6 K; BENCHMARKS.md, demo): the stage is
    # for a decoder that already reconstructs well, whose texture it then restores.
    vae_decoder_samples: int = 0
    # Level shifts (standardized units) added to t2m/u10/v10 training fields (off: with
    # this budget they cost more fit than they gained on the warmer validation day).
    vae_shift_augment: float = 0.0
    unet_widths: list[int] = field(default_factory=lambda: [32, 64])
    regression_samples: int = 1_600
    ldm_samples: int = 2_400
    batch: int = 16
    members: int = 8
    steps: int = 10


SIZES = {
    "small": DemoSize(),
    "gpu": DemoSize(ny=256, nx=256, train_times="2023-07-01T00/2023-07-07T23", val_times="2023-07-08T00/2023-07-08T23",
                    vae_widths=[32, 64, 128, 128], vae_latent_channels=8, vae_samples=40_000, vae_batch=16,
                    unet_widths=[64, 128, 256], regression_samples=20_000, ldm_samples=40_000, batch=32,
                    members=16, steps=18),
    # smoke-test size (tests, CI): every stage, tiny budgets, seconds per stage
    "tiny": DemoSize(ny=32, nx=32, train_times="2023-07-01T00/2023-07-01T15", val_times="2023-07-01T16/2023-07-01T19",
                     vae_widths=[16, 16], vae_samples=32, vae_batch=8, vae_decoder_samples=8, unet_widths=[16, 16],
                     regression_samples=32, ldm_samples=32, batch=8, members=2, steps=2),
}


def fit_vae(targets, out: Path, widths: list[int], latent_channels: int, samples: int, batch: int = 16,
            seed: int = 0, spectral_weight: float = 0.1, lr: float = 1e-3, shift_augment: float = 0.0,
            spectral_mode: str = "log_amplitude", small_patch: list[int] | None = None,
            small_fraction: float = 0.5, decoder_samples: int = 0, decoder_spectral_weight: float = 0.3) -> Path:
    """Train a VAE on ``targets`` fields (time, lat, lon per variable) with the
    autoencoder recipe's code (:func:`kmscale.autoencoders.train.train_autoencoder`) and
    return ``out/autoencoder``: whole fields in one stage, or, with ``small_patch``, the
    recipe's two stages (``small_fraction`` of the samples on small patches, which are
    cheap, then whole fields), then, with ``decoder_samples`` > 0, the decoder stage on
    whole fields (encoder frozen, batch-mean spectrum term of weight
    ``decoder_spectral_weight``). Input statistics come from the targets, latent statistics
    from encoding them afterwards. ``shift_augment``: see
    :class:`kmscale.autoencoders.train.DataConfig`; ``spectral_mode``: see
    :class:`kmscale.autoencoders.losses.VAELoss`."""
    from kmscale.autoencoders.train import (
        AutoencoderConfig,
        DataConfig,
        DecoderStageConfig,
        LossConfig,
        ModelConfig,
        StageConfig,
        train_autoencoder,
    )
    from kmscale.training import TrainingSettings

    final = out / "autoencoder"
    if not (final / "config.json").is_file():
        field_shape = [int(targets.sizes["lat"]), int(targets.sizes["lon"])]
        n_small = max(1, int(round(samples * small_fraction))) if small_patch else samples
        cfg = AutoencoderConfig(
            out_dir=str(out),
            data=DataConfig(shift_augment=shift_augment),
            model=ModelConfig(block_out_channels=list(widths), latent_channels=latent_channels,
                              norm_num_groups=min(16, *widths)),
            loss=LossConfig(kl_weight=1e-6, kl_warmup_samples=max(1, samples // 4), spectral_weight=spectral_weight,
                            spectral_mode=spectral_mode),
            stage1=StageConfig(patch=list(small_patch or field_shape), total_samples=n_small, lr=lr),
            stage2=StageConfig(patch=field_shape, total_samples=samples - n_small, lr=lr),
            decoder=DecoderStageConfig(patch=field_shape, total_samples=decoder_samples,
                                       spectral_weight=decoder_spectral_weight),
            train=TrainingSettings(global_batch_size=batch, warmup_samples=min(200, samples), lr_decay="cosine",
                                   ema_decay=0.99, checkpoint_every_samples=max(batch, samples // 2),
                                   log_every_samples=max(batch, samples // 10), seed=seed),
        )
        train_autoencoder(cfg, targets)
    return final


def run_demo(out: str | Path, size: str = "small", device: str = "cpu", fresh: bool = False) -> dict:
    """Run every stage; returns the summary (also written to ``out/summary.json``)."""
    from kmscale.cli import main as kmscale
    from kmscale.config import load_config
    from kmscale.data.demo import DemoRegion, demo_times
    from kmscale.data.demo_write import write_demo
    from kmscale.data.readers import open_dataset
    from kmscale.diffusion.train import (
        LDMConfig,
        RegressionConfig,
        TrainingData,
        train_ldm,
        train_regression,
    )

    if size not in SIZES:
        raise ConfigError(f"--size: expected one of {sorted(SIZES)}, found {size!r}")
    s = SIZES[size]
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    def stage(name: str):
        timings[name] = round(time.perf_counter() - t_start - sum(timings.values()), 2)
        log.info("demo: %s done (%.1f s)", name, timings[name])

    region = DemoRegion.small(s.ny, s.nx, lat0=s.lat0, lon0=s.lon0)
    train_t, val_t = demo_times(s.train_times), demo_times(s.val_times)
    all_t = train_t.append(val_t)
    paths = write_demo(out / "data", region, all_t, lead_time_hours=24)
    stage("prepare")
    targets = open_dataset(paths["targets"], variables=s.variables).load()
    predictors = open_dataset(paths["predictors"]).load()
    static = open_dataset(paths["static"]).load()
    if "time" in static.dims:
        static = static.isel(time=0, drop=True)
    period = [str(train_t[0]), str(train_t[-1])]
    val_period = [str(val_t[0]), str(val_t[-1])]
    ae_path = fit_vae(targets.sel(time=slice(*period)), out / "vae", s.vae_widths, s.vae_latent_channels,
                      s.vae_samples, s.vae_batch, shift_augment=s.vae_shift_augment,
                      decoder_samples=s.vae_decoder_samples)
    stage("train_autoencoder")
    if not (out / "latents.zarr").exists():
        from kmscale.autoencoders import load_autoencoder
        from kmscale.autoencoders.latent_store import encode_to_store

        encode_to_store(load_autoencoder(ae_path), targets, out / "latents.zarr", progress=False)
    stage("encode")
    data = TrainingData(targets, predictors, static)
    common = [f"data.train_period=[{period[0]},{period[1]}]", f"data.val_period=[{val_period[0]},{val_period[1]}]",
              f"data.latents={out / 'latents.zarr'}",  # the archive is the training data
              f"unet.block_out_channels={s.unet_widths}", "unet.norm_num_groups=16", f"train.global_batch_size={s.batch}",
              "train.lr=1e-3", "train.warmup_samples=200", "train.lr_decay=cosine", "train.ema_decay=0.99"]
    reg_bundle = out / "regression" / "bundle"
    if not (reg_bundle / "bundle.json").is_file():
        n = s.regression_samples
        cfg = load_config(RegressionConfig, None, common + [
            f"out_dir={out / 'regression'}", f"autoencoder={ae_path}", f"train.total_samples={n}",
            f"train.checkpoint_every_samples={n // 2}", f"train.log_every_samples={n // 8}"])
        train_regression(cfg, data)
    stage("train_regression")
    ldm_bundle = out / "ldm" / "bundle"
    if not (ldm_bundle / "bundle.json").is_file():
        n = s.ldm_samples
        cfg = load_config(LDMConfig, None, common + [
            f"out_dir={out / 'ldm'}", f"regression_bundle={reg_bundle}", f"train.total_samples={n}",
            f"train.checkpoint_every_samples={n // 2}", f"train.validate_every_samples={n // 2}",
            f"train.log_every_samples={n // 8}", "validation.members=4", "validation.steps=6",
            "validation.max_times=4", "residual_folds=2"])
        train_ldm(cfg, data)
    stage("train_diffusion")
    truth_path = out / "truth_val.nc"
    if not truth_path.exists():
        truth = targets.sel(time=slice(*val_period))
        truth.attrs["kmscale_kind"] = "targets"
        truth.to_netcdf(truth_path, engine="netcdf4")
    pred_val = out / "predictors_val.nc"
    if not pred_val.exists():
        predictors.sel(time=slice(*val_period)).to_netcdf(pred_val, engine="netcdf4")
    ens = out / "ensemble.zarr"
    if not ens.exists():
        rc = kmscale(["sample", "--bundle", str(ldm_bundle), "--predictors", str(pred_val), "--out", str(ens),
                      "--members", str(s.members), "--steps", str(s.steps), "--time-chunk", "4",
                      "--device", device])
        if rc:
            raise RuntimeError(f"demo: kmscale sample failed with exit code {rc}")
    reg_mean = out / "regression_mean.zarr"  # the deterministic reference: ẑ decoded
    if not reg_mean.exists():
        rc = kmscale(["sample", "--bundle", str(reg_bundle), "--predictors", str(pred_val), "--out", str(reg_mean),
                      "--members", "1", "--time-chunk", "4", "--device", device])
        if rc:
            raise RuntimeError(f"demo: kmscale sample (regression) failed with exit code {rc}")
    stage("sample")
    metrics = out / "metrics.nc"
    rc = kmscale(["score", "--forecast", f"ldm={ens}", "--forecast", f"regression={reg_mean}", "--truth",
                  str(truth_path), "--out", str(metrics), "--overwrite", "--no-progress"])
    if rc:
        raise RuntimeError(f"demo: kmscale score failed with exit code {rc}")
    stage("score")
    rc = kmscale(["report", "--metrics", str(metrics), "--out", str(out / "report"), "--format", "md",
                  "--title", f"kmscale demo ({size})"])
    if rc:
        raise RuntimeError(f"demo: kmscale report failed with exit code {rc}")
    stage("report")
    summary = {"size": size, "seconds": round(time.perf_counter() - t_start, 1), "stages": timings,
               "region": [s.ny, s.nx], "variables": s.variables, "members": s.members,
               "torch_threads": torch.get_num_threads(), "outputs": {
                   "bundle": str(ldm_bundle), "ensemble": str(ens), "metrics": str(metrics),
                   "report": str(out / "report")}}
    try:
        import xarray as xr

        m = xr.open_dataset(metrics)
        if "summary_crps_fair" in m:
            head = m["summary_crps_fair"].sel(region="all").isel(lead_time_group=0)
            summary["crps_fair"] = {
                str(f): {str(v): float(head.sel(forecast=f, variable=v)) for v in head["variable"].values}
                for f in head["forecast"].values
            }
    except (OSError, KeyError, ValueError) as err:  # the report is written; the headline is a nicety
        log.warning("demo: could not read the headline CRPS from %s: %s", metrics, err)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
