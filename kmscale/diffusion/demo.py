"""``kmscale demo``: the whole pipeline on the built-in demo data, end to end.

Stages (each writes its artifact under ``out``; a re-run reuses finished stages)::

    data/          the demo targets (t2m, u10, v10, tp at ~1 km), 0.25-deg forecast
                   predictors (10 variables, analyses: lead 0 h) and static fields
    vae/           one autoencoder per variable group ({t2m}, {u10, v10}, {tp}), trained
                   by the autoencoder recipe's loop, assembled into vae/autoencoder
    latents.zarr   the targets encoded (the compressed archive; the training data below)
    regression/    the regression U-Net on the concatenated latent (regression-only bundle)
    ldm/           the EDM residual diffusion model on cross-fitted residuals (bundle)
    ensemble.zarr  the validation hours sampled (members with recorded seeds), and
                   regression_mean.zarr, the deterministic reference (ẑ decoded)
    data/hrcldas_validation/  the validation truth as HRCLDAS GRIB2 files (one per variable
                   and hour), read back through the HRCLDAS reader for scoring
    metrics.nc     fair CRPS, spread-skill, spectra, ... of the ensemble, the regression
                   and the bilinear and bicubic interpolation baselines
    report/        report with tables and figures
    summary.json   timings per stage, the headline scores and ``demo_checks``

Every stage is a library call (the recipes' training functions, the pipeline, the
evaluation package). The validation hours come after the training hours and from the
same regime (mid-July: the seasonal cycle moves t2m by well under 0.1 K over the
period), spread over four days so that the checks average over several weather
situations; :mod:`kmscale.diffusion.demo_checks` says whether the run shows skill.

Sizes: ``small`` fits in 10 minutes on 2 CPU cores; ``gpu`` is the same design at 256 x
256 km with VAE groups, wider networks, ten times the training and 16 members, meant
for one GPU; ``tiny`` is the smoke test (every stage, seconds each).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from kmscale.autoencoders.train import GroupConfig, ModelConfig
from kmscale.diffusion.demo_checks import DemoCriteria
from kmscale.diffusion.regression import UNetSettings
from kmscale.diffusion.settings import EDMLossSettings
from kmscale.errors import ConfigError
from kmscale.training import TrainingSettings

log = logging.getLogger(__name__)


def _pixel(variables: list[str]) -> GroupConfig:
    return GroupConfig(variables, ModelConfig(name="identity"))


def _vae(variables: list[str], widths: list[int], channels: int) -> GroupConfig:
    return GroupConfig(
        variables,
        ModelConfig(
            block_out_channels=widths, latent_channels=channels, norm_num_groups=min(16, *widths)
        ),
    )


@dataclass
class DemoSize:
    """Everything a demo size changes (one place)."""

    ny: int = 64  # region rows (1 km pixels)
    nx: int = 64
    # Lower-left corner: the eastern edge of the Tibetan Plateau (Hengduan Mountains), for
    # terrain (lapse rates, channelled winds) and rain (about a quarter of the hours wet).
    lat0: float = 29.0
    lon0: float = 100.0
    # Training: every ``train_every_hours`` over six weeks. The large-scale weather of the
    # generator decorrelates over days (rain regimes over about ten), so a period this
    # long holds several independent regimes; two weeks of consecutive hours hold one or
    # two, and the regression learns relations between predictors that hold for those
    # only (it then loses to interpolation on the validation days).
    train_times: str = "2023-06-03T00/2023-07-14T23"  # inclusive
    train_every_hours: int = 3
    # Validation: after the training hours, every ``val_every_hours`` over three weeks
    # (21 h steps also walk through the hours of the day). Consecutive days would sample
    # one regime: the checks would measure that regime's weather (from 0 % to 75 % of the
    # window wet), not the model.
    val_times: str = "2023-07-15T00/2023-08-04T23"
    val_every_hours: int = 21
    variables: list[str] = field(default_factory=lambda: ["t2m", "u10", "v10", "tp"])
    # Lead time of the coarse predictors (h): 0 is an analysis, as when downscaling ERA5.
    # At 24 h the generator's coarse forecast error (about 1 m/s and 0.75 K MAE, smooth
    # over the window) is most of every forecast's error; blocked cross-validation on the
    # training hours puts the regression's expected gain over interpolation for the winds
    # (0.06 m/s) below the standard error of that difference over the validation hours
    # (0.07 m/s), so the checks would measure the forecast error, not the downscaling.
    # At 0 h that standard error is 0.004-0.011.
    lead_time_hours: int = 0
    # One autoencoder per group, on a common grid of factor ``group_factor``. At this
    # size the groups are pixel space (identity; tp standardized after log1p) folded 2 x 2
    # into channels: a VAE trained for the minutes a 2-core demo has reconstructs t2m no
    # better than 1.7 K (3,200 samples, 4 min), above the 1 K the regression gains over
    # interpolation, so the latent space would hide the skill the demo is meant to show.
    groups: list[GroupConfig] = field(
        default_factory=lambda: [_pixel(["t2m"]), _pixel(["u10", "v10"]), _pixel(["tp"])]
    )
    group_factor: int = 2
    # tp enters the autoencoders (and the predictors the same way, so that the regression's
    # linear skip maps like to like) as log1p(tp / 0.1 mm/h), the wet threshold: rates below it
    # stay within 0.7 of zero, so the members' small noise around dry pixels decodes to well
    # under the threshold (no spurious drizzle), and rain rates are modelled by their
    # relative changes.
    transform_scales: dict[str, float] = field(default_factory=lambda: {"tp": 0.1})
    vae_samples: int = 0  # samples per VAE group (VAE groups only)
    vae_batch: int = 16
    vae_patch: list[int] = field(default_factory=lambda: [32, 32])  # VAE training patches (px)
    unet: UNetSettings = field(
        default_factory=lambda: UNetSettings(block_out_channels=[32, 64], norm_num_groups=16)
    )
    # The regression's tp needs the U-Net: its linear skip alone (a map of log1p rates) is
    # worse than interpolating the coarse rain, and at half this budget the regression only
    # ties interpolation on tp. The fold regressions get (K - 1) / K of it.
    regression_samples: int = 3_200
    ldm_samples: int = 3_200
    residual_folds: int = 2  # cross-fitted residuals: two more regressions on half the hours each
    # Training noise levels of the diffusion model: ln σ ~ N(0.5, 2.0²) instead of EDM's
    # N(-1.2, 1.2²) (tuned for 64 x 64 images). Most of the residual's variance here is the
    # coarse analysis' error, coherent over the whole window; for the window mean of a
    # 32 x 32 latent field, noise of level σ has std σ / 32, so that part of a member is
    # decided at σ between about 3 and 80, where EDM's default puts under 1 % of its
    # training examples (a model trained so gives members with no window-scale spread).
    # ±2 std of this distribution span σ 0.03-90, so low noise levels keep a share of the
    # training too.
    edm: EDMLossSettings = field(default_factory=lambda: EDMLossSettings(P_mean=0.5, P_std=2.0))
    batch: int = 16
    lr: float = 1e-3
    members: int = 8
    steps: int = 10


SIZES = {
    "small": DemoSize(),
    "gpu": DemoSize(
        ny=256,
        nx=256,
        groups=[
            _vae(["t2m"], [64, 128, 128], 4),
            _vae(["u10", "v10"], [64, 128, 128], 8),
            _pixel(["tp"]),
        ],
        group_factor=4,
        vae_samples=40_000,
        vae_patch=[64, 64],
        unet=UNetSettings(block_out_channels=[64, 128, 256], norm_num_groups=16),
        regression_samples=32_000,
        ldm_samples=48_000,
        batch=32,
        members=16,
        steps=18,
    ),
    # smoke test (tests, CI): every stage, a VAE group included, tiny budgets
    "tiny": DemoSize(
        ny=32,
        nx=32,
        train_times="2023-07-01T00/2023-07-01T15",
        train_every_hours=1,
        val_times="2023-07-01T16/2023-07-01T19",
        val_every_hours=2,
        groups=[_vae(["t2m"], [16, 16], 2), _pixel(["u10", "v10"]), _pixel(["tp"])],
        vae_samples=32,
        vae_batch=8,
        vae_patch=[16, 16],
        unet=UNetSettings(block_out_channels=[16, 16], norm_num_groups=16),
        regression_samples=32,
        ldm_samples=32,
        batch=8,
        members=2,
        steps=2,
    ),
}


def demo_hours(size: DemoSize) -> tuple[pd.DatetimeIndex, pd.DatetimeIndex]:
    """(training hours, validation hours) of a demo size."""
    from kmscale.data.demo import demo_times

    train = demo_times(size.train_times)[:: size.train_every_hours]
    val = demo_times(size.val_times)[:: size.val_every_hours]
    if val[0] <= train[-1]:
        raise ConfigError(
            f"demo: expected validation hours after the training hours ({train[-1]}), "
            f"found {val[0]}"
        )
    return train, val


class _Stages:
    """Wall time of each stage (the summary's ``stages``)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    def done(self, name: str) -> None:
        self.timings[name] = max(
            0.0, round(time.perf_counter() - self.start - sum(self.timings.values()), 2)
        )
        log.info("demo: %s done (%.1f s)", name, self.timings[name])


def _settings(size: DemoSize, samples: int, seed: int = 0) -> TrainingSettings:
    return TrainingSettings(
        total_samples=samples,
        global_batch_size=size.batch,
        lr=size.lr,
        warmup_samples=200,
        lr_decay="cosine",
        ema_decay=0.99,
        checkpoint_every_samples=max(size.batch, samples // 2),
        log_every_samples=max(size.batch, samples // 8),
        seed=seed,
    )


def train_autoencoders(size: DemoSize, targets: xr.Dataset, out: Path) -> Path:
    """The grouped autoencoder (``out/autoencoder``) with the autoencoder recipe's loop."""
    from kmscale.autoencoders.train import train_autoencoder, vae_config

    final = out / "autoencoder"
    if not (final / "config.json").is_file():
        shape = [int(targets.sizes["lat"]), int(targets.sizes["lon"])]
        cfg = vae_config(
            out,
            shape,
            [16],
            1,
            max(1, size.vae_samples),
            batch=size.vae_batch,
            small_patch=size.vae_patch,
            small_fraction=1.0,
            groups=size.groups,
            group_factor=size.group_factor,
            transform_scales=size.transform_scales,
        )
        train_autoencoder(cfg, targets)
    return final


def train_models(
    size: DemoSize,
    data,
    autoencoder: Path,
    latents: Path,
    out: Path,
    periods: tuple[list[str], list[str]],
) -> tuple[Path, Path]:
    """The regression (regression-only bundle) and the diffusion model (full bundle)."""
    from kmscale.diffusion.train import (
        DataSettings,
        LDMConfig,
        RegressionConfig,
        train_ldm,
        train_regression,
    )

    train_period, val_period = periods
    settings = DataSettings(
        train_period=train_period,
        val_period=val_period,
        latents=str(latents),
        predictor_transform_scales=dict(size.transform_scales),
    )
    reg_bundle = out / "regression" / "bundle"
    if not (reg_bundle / "bundle.json").is_file():
        train_regression(
            RegressionConfig(
                out_dir=str(out / "regression"),
                autoencoder=str(autoencoder),
                data=settings,
                unet=size.unet,
                train=_settings(size, size.regression_samples),
            ),
            data,
        )
    ldm_bundle = out / "ldm" / "bundle"
    if not (ldm_bundle / "bundle.json").is_file():
        from kmscale.diffusion.train import EnsembleValidation

        train = replace(
            _settings(size, size.ldm_samples), validate_every_samples=size.ldm_samples // 2
        )
        train_ldm(
            LDMConfig(
                out_dir=str(out / "ldm"),
                regression_bundle=str(reg_bundle),
                data=settings,
                unet=size.unet,
                train=train,
                residual_folds=size.residual_folds,
                edm=size.edm,
                validation=EnsembleValidation(members=4, steps=6, max_times=4),
            ),
            data,
        )
    return reg_bundle, ldm_bundle


def sample(
    bundle: Path, predictors: xr.Dataset, out: Path, members: int, steps: int, device: str
) -> Path:
    """An ensemble store of ``bundle`` for every time of ``predictors`` (kept if complete)."""
    from kmscale.diffusion.bundle import ModelBundle
    from kmscale.diffusion.pipeline import DownscalingPipeline, SamplerSettings

    if out.exists():
        return out
    pipe = DownscalingPipeline(ModelBundle.load(bundle), device=device)
    settings = SamplerSettings(members=members, steps=steps, time_chunk=4)
    return pipe.run(
        predictors, out, settings, progress=False, resolved_config={"demo": str(bundle)}
    )


def score_and_report(
    forecasts: dict[str, xr.Dataset], truth: xr.Dataset, out: Path, title: str
) -> Path:
    """metrics.nc and report/ (markdown) for ``forecasts`` against ``truth``."""
    from kmscale.evaluation.report import load_metrics, write_report
    from kmscale.evaluation.scoring import ScoreOptions, score, write_metrics

    metrics = write_metrics(
        score(forecasts, truth, ScoreOptions(), progress=False), out / "metrics.nc"
    )
    write_report(load_metrics([metrics]), out / "report", fmt="md", title=title)
    return metrics


def hrcldas_truth(targets: xr.Dataset, out: Path, variables: list[str]) -> xr.Dataset:
    """The validation targets written as HRCLDAS GRIB2 files (one per variable and hour, as
    users hold the analyses) under ``out`` and read back through the HRCLDAS reader."""
    from kmscale.data.hrcldas import write_hrcldas
    from kmscale.data.readers import open_dataset
    from kmscale.errors import GridError

    write_hrcldas(targets[variables], out, if_exists="keep")
    truth = open_dataset(out, variables=variables).load()
    # GRIB2 stores coordinates in micro-degrees: the same grid, up to that rounding
    for c in ("lat", "lon"):
        if truth.sizes[c] != targets.sizes[c] or not np.allclose(truth[c], targets[c], atol=1e-5):
            raise GridError(
                f"{out}: expected the targets' {c} ({targets.sizes[c]} values from "
                f"{float(targets[c][0]):.5f}), found {truth.sizes[c]} from {float(truth[c][0]):.5f}"
            )
    return truth.assign_coords(lat=targets["lat"], lon=targets["lon"])


def run_demo(
    out: str | Path,
    size: str = "small",
    device: str = "cpu",
    fresh: bool = False,
    criteria: DemoCriteria | None = None,
) -> dict:
    """Run every stage; returns the summary (also written to ``out/summary.json``).

    The checks of :mod:`kmscale.diffusion.demo_checks` are in ``summary["demo_checks"]``;
    a run whose checks fail is complete all the same (they are reported, not raised).
    """
    from kmscale.autoencoders import load_autoencoder
    from kmscale.autoencoders.latent_store import encode_to_store
    from kmscale.data.demo import DemoRegion
    from kmscale.data.demo_write import write_demo
    from kmscale.data.readers import open_dataset
    from kmscale.diffusion.demo_checks import demo_checks
    from kmscale.diffusion.train import TrainingData
    from kmscale.evaluation.baselines import BASELINES, baseline_forecasts

    if size not in SIZES:
        raise ConfigError(f"--size: expected one of {sorted(SIZES)}, found {size!r}")
    s = SIZES[size]
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = _Stages()

    region = DemoRegion.small(s.ny, s.nx, lat0=s.lat0, lon0=s.lon0)
    train_t, val_t = demo_hours(s)
    paths = write_demo(
        out / "data", region, train_t.append(val_t), lead_time_hours=s.lead_time_hours
    )
    targets = open_dataset(paths["targets"], variables=s.variables).load()
    predictors = open_dataset(paths["predictors"]).load()
    static = open_dataset(paths["static"]).load()
    if "time" in static.dims:
        static = static.isel(time=0, drop=True)
    stages.done("prepare")
    periods = ([str(train_t[0]), str(train_t[-1])], [str(val_t[0]), str(val_t[-1])])
    ae_path = train_autoencoders(s, targets.sel(time=slice(*periods[0])), out / "vae")
    stages.done("train_autoencoder")
    latents = out / "latents.zarr"
    if not latents.exists():
        encode_to_store(load_autoencoder(ae_path), targets, latents, progress=False)
    stages.done("encode")
    data = TrainingData(targets, predictors, static)
    reg_bundle, ldm_bundle = train_models(s, data, ae_path, latents, out, periods)
    stages.done("train_models")
    truth = hrcldas_truth(targets.sel(time=val_t), out / "data" / "hrcldas_validation", s.variables)
    pred_val = predictors.sel(time=val_t)
    ens_path = sample(ldm_bundle, pred_val, out / "ensemble.zarr", s.members, s.steps, device)
    reg_path = sample(reg_bundle, pred_val, out / "regression_mean.zarr", 1, s.steps, device)
    stages.done("sample")
    ensemble = xr.open_zarr(ens_path, consolidated=False).load()
    regression = xr.open_zarr(reg_path, consolidated=False).load()
    baselines = baseline_forecasts(
        pred_val, truth, list(BASELINES), s.variables, truth["time"].values
    )
    metrics = score_and_report(
        {"ldm": ensemble, "regression": regression, **baselines},
        truth,
        out,
        f"kmscale demo ({size})",
    )
    stages.done("score_report")
    checks = demo_checks(ensemble, regression, baselines["bilinear"], truth, s.variables, criteria)
    summary = {
        "size": size,
        "seconds": round(time.perf_counter() - stages.start, 1),
        "stages": stages.timings,
        "region": [s.ny, s.nx],
        "variables": s.variables,
        "groups": [g.variables for g in s.groups],
        "train_hours": [str(train_t[0]), str(train_t[-1]), len(train_t)],
        "validation_hours": [str(val_t[0]), str(val_t[-1]), len(val_t)],
        "members": s.members,
        "torch_threads": torch.get_num_threads(),
        "outputs": {
            "bundle": str(ldm_bundle),
            "ensemble": str(ens_path),
            "metrics": str(metrics),
            "report": str(out / "report"),
        },
        "demo_checks": checks,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
