"""What the two downscaling recipes do: configs, data loading, model assembly, fit.

``recipes/train_regression.py`` and ``recipes/train_ldm.py`` only parse their config
and call :func:`train_regression` / :func:`train_ldm`; ``kmscale demo`` and the
benchmarks call them directly. The loop itself is :class:`kmscale.training.Trainer`.

Stage 1 (regression) writes ``<out_dir>/bundle``: autoencoder + regression U-Net +
conditioning spec, a complete deterministic bundle. Stage 2 (LDM) reads that bundle,
computes ẑ for every training time, trains the EDM denoiser on the residual
``r = residual.make(z, ẑ, scale)``, optionally refines the autoencoder's decoder on the
latents the trained model generates (``decoder_refinement``, :mod:`kmscale.diffusion.refine`)
and writes ``<out_dir>/bundle`` with all three models.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from accelerate import PartialState
from torch.utils.data import Subset

from kmscale.autoencoders.grouped import GroupedAutoencoder
from kmscale.autoencoders.latent_store import open_latents, read_latents
from kmscale.autoencoders.registry import get_autoencoder_class, load_autoencoder
from kmscale.conditioning.dataset import (
    ConditioningSpec,
    DownscalingDataset,
    build_dataset,
    encode_targets,
    physical_targets,
)
from kmscale.conditioning.embeddings import DEFAULT_MAX_LEAD_HOURS, lead_times_of
from kmscale.conditioning.static import grid_coords
from kmscale.config import from_dict, parse_recipe_config, to_dict
from kmscale.data.patches import random_patch
from kmscale.data.readers import open_dataset
from kmscale.data.stats import NormStats
from kmscale.diffusion import residual
from kmscale.diffusion.bundle import (
    EDMSettings,
    ModelBundle,
    build_denoiser,
    data_fingerprint,
    grid_dataset,
)
from kmscale.diffusion.edm import EDMLoss
from kmscale.diffusion.networks import ConditionalUNet, UNetSettings
from kmscale.diffusion.patching import context_channels, with_context
from kmscale.diffusion.pipeline import patched_denoiser
from kmscale.diffusion.refine import DecoderRefinement, pick_times, refine_decoder
from kmscale.diffusion.regression import (
    SkipGroup,
    build_unet,
    fit_linear_skip,
    load_backbone,
    predict_mean,
    regression_loss,
)
from kmscale.diffusion.settings import HEUN, EDMLossSettings
from kmscale.diffusion.streaming import StreamingExamples, store_indices
from kmscale.diffusion.validation import ensemble_scores
from kmscale.errors import AlignmentError, ConfigError
from kmscale.training import Trainer, TrainingSettings, TrainResult

log = logging.getLogger(__name__)


# ---- configs ------------------------------------------------------------------------
@dataclass
class DataSettings:
    """Where the training data is and which part of it to use."""

    targets: str = ""  # target fields (time, lat, lon): NetCDF/GRIB/zarr path or glob
    predictors: str = ""  # coarse predictors (time, lat, lon), any variables
    static: str | None = None  # static fields on the target grid (orography, land_sea_mask)
    variables: list[str] | None = None  # target variables (default: the autoencoder's / all)
    predictor_variables: list[str] | None = None  # default: every predictor variable
    static_variables: list[str] | None = None  # default: every static variable
    # Value-transform scales of the predictors' statistics per variable (tp: log1p(tp /
    # scale)); empty = the variable catalogue's. Setting the targets' autoencoder's scales
    # here puts a predictor in the same transform as its target.
    predictor_transform_scales: dict[str, float] = field(default_factory=dict)
    train_period: list[str] | None = None  # [first, last] valid time (inclusive); None: all
    val_period: list[str] | None = None  # held-out valid times for validation; None: none
    # Latent store written by `kmscale encode` with this run's autoencoder: training reads
    # the latents from it instead of re-encoding the targets (refused if another
    # autoencoder wrote it). None: encode the targets on the fly.
    latents: str | None = None
    # Training reads its examples from data.latents time by time (lazy zarr reads, in
    # train.num_workers DataLoader workers) instead of holding the period in memory: peak
    # memory independent of the period's length (kmscale.diffusion.streaming). The
    # diffusion stage then takes the regression mean batch by batch (in-sample residuals:
    # residual_folds 0 or 1, no decoder refinement).
    stream: bool = False
    stream_patch: list[int] | None = None  # random latent window (th, tw) per example
    patches_per_time: int = 1  # streamed examples (windows) per time and epoch


@dataclass
class RegressionConfig:
    """``recipes/train_regression.py``."""

    out_dir: str = "runs/regression"
    autoencoder: str = "identity"  # "identity" (pixel space) or a pretrained autoencoder directory
    data: DataSettings = field(default_factory=DataSettings)
    unet: UNetSettings = field(default_factory=UNetSettings)
    train: TrainingSettings = field(default_factory=TrainingSettings)
    max_lead_hours: float = DEFAULT_MAX_LEAD_HOURS
    interpolation: str = "bilinear"  # predictors -> latent grid
    eval_batch_size: int = 32
    # U(cond) + A cond + b, A and b fitted by least squares before training: the regression
    # starts from a linear downscaling of the interpolated predictors and static fields.
    linear_skip: bool = True
    # The static variable (elevation) whose slopes modulate the skip's coefficients of every
    # predictor (:class:`kmscale.diffusion.networks.LinearSkip`); None, or a static set
    # without it: a plain linear skip.
    skip_terrain: str | None = "orography"


@dataclass
class EnsembleValidation:
    """The small ensemble scored on held-out times during LDM training."""

    members: int = 4
    steps: int = 12
    solver: str = HEUN
    max_times: int = 8  # held-out times scored (evenly spread over the validation period)
    seed: int = 0
    center_residuals: bool = (
        False  # as SamplerSettings.center_residuals (members re-centred on the regression)
    )


@dataclass
class LDMConfig:
    """``recipes/train_ldm.py``."""

    out_dir: str = "runs/ldm"
    regression_bundle: str = "runs/regression/bundle"  # written by train_regression
    data: DataSettings = field(default_factory=DataSettings)
    unet: UNetSettings = field(default_factory=UNetSettings)
    train: TrainingSettings = field(default_factory=TrainingSettings)
    edm: EDMLossSettings = field(default_factory=EDMLossSettings)
    validation: EnsembleValidation = field(default_factory=EnsembleValidation)
    eval_batch_size: int = 32
    cross_attention: bool = False  # backbone also attends to the conditioning (CrossAttentionUNet)
    patch: list[int] | None = None  # train on random latent patches (th, tw); None: whole field
    context_size: list[int] | None = None  # coarse global context (ch, cw) given to each patch
    # Cross-fitted residuals. The regression U-Net fits its own training times far better
    # than new ones (on ERA5 UK: latent residual std 0.05 in training, 0.14 on held-out
    # days), so residuals taken in-sample teach the diffusion model a spread several times
    # too small. With K > 1 folds, K more regression U-Nets (the bundle's regression
    # config, each trained on the training times outside one contiguous block of them)
    # give every training time the prediction of a model that did not see it; those
    # out-of-fold residuals train the diffusion model and set its residual scale. The
    # bundle keeps the full regression for inference. 0 or 1: in-sample residuals.
    residual_folds: int = 0
    # After the diffusion model: fine-tune the autoencoder's decoder on latents it generates
    # for training times (kmscale.diffusion.refine); the bundle gets the refined autoencoder.
    decoder_refinement: DecoderRefinement = field(default_factory=DecoderRefinement)


# ---- data ---------------------------------------------------------------------------
@dataclass
class TrainingData:
    """Targets, predictors and static fields in canonical form (xarray, possibly lazy)."""

    targets: xr.Dataset
    predictors: xr.Dataset
    static: xr.Dataset | None = None

    @classmethod
    def open(cls, s: DataSettings) -> TrainingData:
        for key in ("targets", "predictors"):
            if not getattr(s, key):
                raise ConfigError(f"data.{key}: expected a path to a dataset, found nothing")
        static = open_dataset(s.static) if s.static else None
        if static is not None and "time" in static.dims:
            static = static.isel(time=0, drop=True)
        return cls(open_dataset(s.targets), open_dataset(s.predictors), static)

    def period(self, bounds: list[str] | None) -> tuple[xr.Dataset, xr.Dataset]:
        """(targets, predictors) restricted to [first, last] valid times (inclusive)."""
        if bounds is None:
            return self.targets, self.predictors
        if len(bounds) != 2:
            raise ConfigError(f"period: expected [first, last], found {bounds!r}")
        sl = slice(np.datetime64(bounds[0]), np.datetime64(bounds[1]))
        t, p = self.targets.sel(time=sl), self.predictors.sel(time=sl)
        if t.sizes["time"] == 0 or p.sizes["time"] == 0:
            raise ConfigError(
                f"period {bounds}: expected valid times in it, found {t.sizes['time']} targets "
                f"and {p.sizes['time']} predictor times"
            )
        return t, p


def _fit_input_stats(targets: xr.Dataset, variables: list[str]) -> dict[str, dict]:
    """Per-variable transform + mean/std of the training targets (for the autoencoder)."""
    stats = NormStats.fit(targets, variables)
    return {name: stats.stat(name) for name in variables}


def make_autoencoder(spec: str, targets: xr.Dataset, variables: list[str] | None):
    """ "identity" (pixel space, stats fitted on ``targets``) or a pretrained directory."""
    if spec == "identity":
        names = variables or [n for n, v in targets.data_vars.items() if "time" in v.dims]
        ae = get_autoencoder_class("identity")(variables=names)
        ae.set_input_stats(_fit_input_stats(targets, names))
        return ae
    ae = load_autoencoder(spec)
    if variables and list(variables) != list(ae.variables):
        raise ConfigError(
            f"data.variables: expected the autoencoder's {list(ae.variables)}, found {variables}"
        )
    return ae


def target_latents(ae, targets: xr.Dataset, store: str | None) -> torch.Tensor:
    """Normalized latents (T, C_z, h, w) of ``targets``: read from the latent store
    ``store`` when given (it must hold every target time and come from ``ae``), else
    encoded now."""
    if store is None:
        return encode_targets(ae, targets)
    ds = open_latents(store, ae)
    index = store_indices(ds, targets["time"].values, store)
    return torch.from_numpy(read_latents(ds.isel(time=index), slice(None), store))


def validation_examples(
    s: DataSettings, ae, spec: ConditioningSpec, data: TrainingData, grid
) -> DownscalingDataset | None:
    """The examples of ``s.val_period`` (in memory, with the physical targets for scoring
    against the truth itself); None without a validation period."""
    if s.val_period is None:
        return None
    targets, preds = data.period(s.val_period)
    lat, lon = grid
    return build_dataset(
        spec,
        preds,
        data.static,
        lat,
        lon,
        target_latents(ae, targets, s.latents),
        targets["time"].values,
        physical_targets(targets, ae.variables),
    )


def training_examples(
    s: DataSettings, ae, spec: ConditioningSpec, data: TrainingData, period, grid
) -> DownscalingDataset | StreamingExamples:
    """The regression examples of ``period`` = (targets, predictors) on ``grid`` = (lat, lon):
    streamed from the latent store with ``data.stream``, else built in memory."""
    (targets, preds), (lat, lon) = period, grid
    if not s.stream:
        z = target_latents(ae, targets, s.latents)
        return build_dataset(spec, preds, data.static, lat, lon, z, targets["time"].values)
    if s.latents is None:
        raise ConfigError("data.stream: expected data.latents (the store to stream), found none")
    latents = open_latents(s.latents, ae)
    return StreamingExamples(
        spec,
        latents,
        preds,
        data.static,
        lat,
        lon,
        targets["time"].values,
        patch=s.stream_patch,
        patches_per_time=s.patches_per_time,
        path=s.latents,
    )


def _batch_to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---- stage 1: regression --------------------------------------------------------------
def skip_groups(ae, spec: ConditioningSpec) -> list[SkipGroup]:
    """The regression skip's groups: one per autoencoder group (or one for the whole latent),
    whose own inputs are the predictors of its variables and every static channel."""
    if isinstance(ae, GroupedAutoencoder):
        layout = list(zip(ae.groups, ae.group_slices(), strict=True))
    else:
        layout = [(list(ae.variables), slice(0, ae.latent_channels))]
    names = list(spec.predictors.variables)
    static = list(range(len(names), spec.cond_channels))
    return [
        SkipGroup(out, [i for i, v in enumerate(names) if v in variables] + static)
        for variables, out in layout
    ]


def skip_terrain(cfg: RegressionConfig, spec: ConditioningSpec) -> dict:
    """``build_unet`` arguments of the terrain-modulated skip: the elevation channel of the
    conditioning and the predictor channels (empty when the static fields lack it)."""
    if not cfg.linear_skip or cfg.skip_terrain is None:
        return {}
    if cfg.skip_terrain not in spec.static_channels:
        log.info(
            "regression: no static %r among %s: plain linear skip",
            cfg.skip_terrain,
            spec.static_channels,
        )
        return {}
    n = len(spec.predictors.variables)
    return {
        "skip_terrain_channel": n + spec.static_channels.index(cfg.skip_terrain),
        "skip_dynamic_channels": list(range(n)),
    }


def train_regression(
    cfg: RegressionConfig, data: TrainingData | None = None
) -> tuple[TrainResult, Path]:
    """Train the regression U-Net; returns the training result and the bundle path."""
    data = data or TrainingData.open(cfg.data)
    targets_tr, preds_tr = data.period(cfg.data.train_period)
    ae = make_autoencoder(cfg.autoencoder, targets_tr, cfg.data.variables).eval()
    lat, lon = grid_coords(data.targets)
    spec = ConditioningSpec.from_data(
        preds_tr,
        data.static,
        lat,
        lon,
        ae.downsample_factor,
        cfg.data.predictor_variables,
        cfg.data.static_variables,
        cfg.max_lead_hours,
        cfg.interpolation,
        cfg.data.predictor_transform_scales,
    )
    train_ds = training_examples(cfg.data, ae, spec, data, (targets_tr, preds_tr), (lat, lon))
    val_ds = validation_examples(cfg.data, ae, spec, data, (lat, lon))
    torch.manual_seed(cfg.train.seed)  # the initial weights are part of the run's identity
    model = build_unet(
        spec.cond_channels,
        ae.latent_channels,
        spec.emb_dim,
        cfg.unet,
        linear_skip=cfg.linear_skip,
        **skip_terrain(cfg, spec),
    )
    skip_fit = fit_linear_skip(model, train_ds, skip_groups(ae, spec)) if cfg.linear_skip else None
    if skip_fit is not None:
        log.info("regression: linear skip %s", skip_fit)

    def loss_fn(m, batch):
        return regression_loss(m, _batch_to(batch, _device_of(m)))

    def validate_fn(m):
        z_hat = predict_mean(m, val_ds, cfg.eval_batch_size, progress=False)
        mse = torch.mean((z_hat - val_ds.z) ** 2).item()
        x_hat = ae.decode(z_hat)  # scored against the truth, not its reconstruction
        rmse = torch.sqrt(torch.nanmean((x_hat - val_ds.x) ** 2, dim=(0, 2, 3)))
        return {
            "mse_latent": mse,
            **{f"rmse_{v}": float(r) for v, r in zip(ae.variables, rmse, strict=True)},
        }

    trainer = Trainer(
        model,
        loss_fn,
        train_ds,
        cfg.out_dir,
        cfg.train,
        validate_fn=validate_fn if val_ds is not None else None,
        best_metric="mse_latent" if val_ds is not None else None,
        run_config=to_dict(cfg),
    )
    result = trainer.fit()
    bundle_path = Path(cfg.out_dir) / "bundle"
    if trainer.accelerator.is_main_process:
        weights = Path(cfg.out_dir) / ("best" if (Path(cfg.out_dir) / "best").is_dir() else "final")
        leads = lead_times_of(preds_tr)
        record = {
            "config": to_dict(cfg),
            "weights": weights.name,
            "samples_seen": result.samples_seen,
            "best_score": result.best_score,
            "linear_skip": skip_fit,
        }
        ModelBundle(
            autoencoder=ae,
            regression=ConditionalUNet.from_pretrained(weights).eval(),
            diffusion=None,
            spec=spec,
            grid=grid_dataset(lat, lon, data.static, spec.static_variables),
            lead_times=sorted({0.0} if leads is None else set(np.unique(leads).tolist())),
            data_fingerprint=data_fingerprint(targets_tr, preds_tr, data.static),
            extra={"regression": record},
        ).save(bundle_path)
    trainer.accelerator.wait_for_everyone()
    return result, bundle_path


# ---- stage 2: residual latent diffusion ---------------------------------------------------
def residual_scale(z: torch.Tensor, z_mean: torch.Tensor) -> list[float]:
    """Per-channel std of z - ẑ over the training set: the residual's scale."""
    std = (z - z_mean).transpose(0, 1).reshape(z.shape[1], -1).std(dim=1)
    return [max(float(s), 1e-6) for s in std]


def _scale_tensor(scale: list[float], device=None) -> torch.Tensor:
    return torch.tensor(scale, dtype=torch.float32, device=device).reshape(-1, 1, 1)


def diffusion_inputs(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Conditioning of the denoiser: [ẑ, cond] along channels (B, C_z + C_c, h, w)."""
    return torch.cat([batch["z_mean"], batch["cond"]], dim=1)


def out_of_fold_means(
    cfg: LDMConfig,
    base: ModelBundle,
    data: TrainingData,
    targets_tr: xr.Dataset,
    preds_tr: xr.Dataset,
    train_ds,
    grid: tuple[np.ndarray, np.ndarray],
) -> torch.Tensor:
    """Regression means (N, C_z, h, w) of every row of ``train_ds``, each from a regression
    U-Net trained without that row's block of times (see ``LDMConfig.residual_folds``).

    The fold models are ordinary regression runs under ``<out_dir>/folds/fold<k>`` (resumable;
    a finished fold is reused). They share the bundle's autoencoder, saved once to
    ``<out_dir>/folds/autoencoder`` so that the pixel-space (identity) statistics stay those
    of the full training period, and see (K-1)/K of its samples.
    """
    recorded = (base.extra.get("regression") or {}).get("config")
    if recorded is None:
        raise ConfigError(
            f"residual_folds={cfg.residual_folds}: expected the regression config recorded "
            "in the bundle "
            f"{cfg.regression_bundle} (written by train_regression), found none"
        )
    k = cfg.residual_folds
    n = len(train_ds)
    if n < 2 * k:
        raise ConfigError(
            f"residual_folds: expected at least {2 * k} training times for {k} folds, found {n}"
        )
    folds_dir = Path(cfg.out_dir) / "folds"
    ae_dir = folds_dir / "autoencoder"
    state = PartialState()
    if state.is_main_process and not (ae_dir / "config.json").is_file():
        base.autoencoder.save_pretrained(ae_dir)
    state.wait_for_everyone()
    lat, lon = grid
    times = np.asarray(train_ds.time)
    z_mean = torch.empty_like(train_ds.z)
    for i, block in enumerate(np.array_split(np.arange(n), k)):
        run = folds_dir / f"fold{i}"
        bundle_path = run / "bundle"
        if not (bundle_path / "bundle.json").is_file():
            rc = from_dict(RegressionConfig, recorded)
            rc.out_dir, rc.autoencoder = str(run), str(ae_dir)
            rc.data.train_period, rc.data.val_period = None, None
            rc.train.total_samples = max(
                rc.train.global_batch_size, rc.train.total_samples * (k - 1) // k
            )
            keep = ~np.isin(targets_tr["time"].values, times[block])
            log.info(
                "residual fold %d/%d: regression on %d of %d training times",
                i + 1,
                k,
                int(keep.sum()),
                n,
            )
            train_regression(rc, TrainingData(targets_tr.isel(time=keep), preds_tr, data.static))
        fold = ModelBundle.load(bundle_path)
        held = build_dataset(
            fold.spec, preds_tr, data.static, lat, lon, train_ds.z[block], times[block]
        )
        if not np.array_equal(np.asarray(held.time), times[block]):
            raise AlignmentError(
                f"residual fold {i}: expected the block's {len(block)} times, found {len(held)}"
            )
        z_mean[block] = predict_mean(fold.regression, held, cfg.eval_batch_size, progress=False)
    return z_mean


@dataclass
class LDMData:
    """What stage 2 trains and validates on (see :func:`ldm_data`)."""

    # training examples with "z_mean" (cross-fitted: residual_folds > 1); streamed
    # (data.stream) without it: the loss then takes ẑ from ``regression`` batch by batch
    train: DownscalingDataset | StreamingExamples
    val: DownscalingDataset | None  # held-out examples with "z_mean" and the physical truth "x"
    targets: xr.Dataset  # physical targets of the training period
    scale: list[float]  # per-channel std of the training residual z - ẑ
    regression: ConditionalUNet | None = None  # ẑ of streamed examples (None: in "z_mean")


def ldm_data(cfg: LDMConfig, base: ModelBundle, data: TrainingData) -> LDMData:
    """Training examples with their regression means, the residual scale and the
    validation subset, for :func:`train_ldm`."""
    targets_tr, preds_tr = data.period(cfg.data.train_period)
    lat, lon = grid_coords(data.targets)
    base.validate(preds_tr, (lat, lon))
    ae, spec = base.autoencoder, base.spec
    val_ds = validation_examples(cfg.data, ae, spec, data, (lat, lon))
    if val_ds is not None:
        val_ds = val_ds.subset(pick_times(len(val_ds), cfg.validation.max_times))
        val_ds = val_ds.with_z_mean(
            predict_mean(base.regression, val_ds, cfg.eval_batch_size, progress=False)
        )
    if cfg.data.stream:
        return _streamed_ldm_data(cfg, base, data, (targets_tr, preds_tr), (lat, lon), val_ds)
    train_ds = build_dataset(
        spec,
        preds_tr,
        data.static,
        lat,
        lon,
        target_latents(ae, targets_tr, cfg.data.latents),
        targets_tr["time"].values,
    )
    if cfg.residual_folds > 1:
        z_mean = out_of_fold_means(cfg, base, data, targets_tr, preds_tr, train_ds, (lat, lon))
    else:
        z_mean = predict_mean(base.regression, train_ds, cfg.eval_batch_size)
    train_ds = train_ds.with_z_mean(z_mean)
    return LDMData(train_ds, val_ds, targets_tr, residual_scale(train_ds.z, train_ds.z_mean))


# Examples (spread evenly over the period) from which a streamed run estimates the residual
# scale: a per-channel standard deviation, which a few hundred fields pin down.
STREAM_SCALE_EXAMPLES = 256


def _streamed_ldm_data(cfg: LDMConfig, base: ModelBundle, data, period, grid, val_ds) -> LDMData:
    """``ldm_data`` with ``data.stream``: examples read from the latent store as training asks
    for them, ẑ computed in the loss (in-sample residuals), the residual scale from
    :data:`STREAM_SCALE_EXAMPLES` examples, so memory does not grow with the period."""
    if cfg.residual_folds > 1:
        raise ConfigError(
            f"data.stream: expected residual_folds 0 or 1 (cross-fitted means need the whole "
            f"period in memory), found {cfg.residual_folds}"
        )
    if cfg.decoder_refinement.total_samples > 0:
        raise ConfigError(
            "data.stream: expected decoder_refinement.total_samples 0 (the refinement holds "
            f"its training fields in memory), found {cfg.decoder_refinement.total_samples}"
        )
    ae, spec = base.autoencoder, base.spec
    train_ds = training_examples(cfg.data, ae, spec, data, period, grid)
    picked = Subset(train_ds, list(pick_times(len(train_ds), STREAM_SCALE_EXAMPLES)))
    z = torch.stack([item["z"] for item in picked])
    z_mean = predict_mean(base.regression, picked, cfg.eval_batch_size, progress=False)
    scale = residual_scale(z, z_mean)
    return LDMData(train_ds, val_ds, period[0], scale, regression=base.regression.eval())


def residual_loss(
    cfg: LDMConfig,
    scale: list[float],
    field_shape: tuple[int, int],
    regression: ConditionalUNet | None = None,
):
    """``loss_fn(net, batch)`` of the Trainer: the EDM loss on the scaled residual, on a
    random latent patch (with its global context) when ``cfg.patch`` is set. Batches without
    "z_mean" (streamed examples) get it from the frozen ``regression``, which must be on the
    training device."""
    loss = EDMLoss(P_mean=cfg.edm.P_mean, P_std=cfg.edm.P_std, sigma_data=cfg.edm.sigma_data)

    def loss_fn(net, batch):
        b = _batch_to(batch, _device_of(net))
        if "z_mean" not in b:
            if regression is None:
                raise ConfigError("residual_loss: expected batches with z_mean or a regression")
            with torch.no_grad():
                b["z_mean"] = regression.regress(b["cond"], b["emb"]).float()
        r = residual.make(b["z"], b["z_mean"], _scale_tensor(scale, b["z"].device))
        cond = diffusion_inputs(b)
        if cfg.patch is not None:
            # Drawn from torch's RNG so that the patch sequence resumes with the Accelerate state.
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
            sl = random_patch(
                field_shape, [min(p, n) for p, n in zip(cfg.patch, field_shape, strict=True)], rng
            )
            r, cond = r[..., sl[0], sl[1]], with_context(cond, sl, cfg.context_size)
        return loss(net, r, cond, b["emb"]).mean()

    return loss_fn


def _refine_stage(cfg: LDMConfig, base: ModelBundle, d: LDMData, denoiser, validate_fn):
    """Fine-tune the bundle's decoder on latents ``denoiser`` generates for training times
    (``cfg.decoder_refinement``); returns (refined autoencoder, record)."""
    times = d.train.subset(pick_times(len(d.train), cfg.decoder_refinement.max_times))
    if cfg.decoder_refinement.regression_mean == "full":
        times = times.with_z_mean(
            predict_mean(base.regression, times, cfg.eval_batch_size, progress=False)
        )
    ae = base.autoencoder
    return refine_decoder(
        ae,
        denoiser,
        times,
        physical_targets(d.targets.sel(time=times.time), ae.variables),
        d.scale,
        cfg.decoder_refinement,
        Path(cfg.out_dir) / "decoder_refinement",
        cfg.train,
        validate_fn=validate_fn,
        run_config=to_dict(cfg),
    )


def _ldm_backbone(cfg: LDMConfig, latent_channels: int, spec: ConditioningSpec):
    """The untrained diffusion backbone: input [x_noisy, ẑ, cond, coarse context]."""
    C_z = latent_channels
    C_c = C_z + spec.cond_channels  # [ẑ, cond]
    torch.manual_seed(cfg.train.seed)  # the initial weights are part of the run's identity
    C_in = C_c + context_channels(C_c, cfg.context_size)  # every conditioning channel
    return build_unet(
        C_z + C_in, C_z, spec.emb_dim, cfg.unet, C_in if cfg.cross_attention else None
    )


def train_ldm(cfg: LDMConfig, data: TrainingData | None = None) -> tuple[TrainResult, Path]:
    """Train the EDM residual model on top of a regression bundle; returns (result, bundle path)."""
    base = ModelBundle.load(cfg.regression_bundle)
    ae, spec = base.autoencoder, base.spec
    if cfg.decoder_refinement.total_samples > 0:
        cfg.decoder_refinement.check(ae)  # before hours of diffusion training, not after
    if cfg.context_size is not None and cfg.patch is None:
        raise ConfigError(
            "context_size: expected patch training (set patch: [th, tw]), found patch: null"
        )
    d = ldm_data(cfg, base, data or TrainingData.open(cfg.data))
    edm = EDMSettings(
        sigma_data=cfg.edm.sigma_data,
        residual_scale=d.scale,
        train_patch=cfg.patch,
        context_size=cfg.context_size,
    )
    backbone = _ldm_backbone(cfg, ae.latent_channels, spec)
    field_shape = tuple(d.train[0]["z"].shape[-2:])

    def whole_field(net):
        return (
            net
            if cfg.patch is None
            else patched_denoiser(net, field_shape, cfg.patch, None, cfg.context_size)
        )

    def score(net, autoencoder):
        v = cfg.validation
        return ensemble_scores(
            whole_field(net),
            d.val,
            autoencoder,
            d.scale,
            members=v.members,
            steps=v.steps,
            solver=v.solver,
            seed=v.seed,
            center_residuals=v.center_residuals,
        )

    trainer = Trainer(
        build_denoiser(backbone, edm),
        residual_loss(cfg, d.scale, field_shape, d.regression),
        d.train,
        cfg.out_dir,
        cfg.train,
        validate_fn=(lambda net: score(net, ae)) if d.val is not None else None,
        best_metric="crps" if d.val is not None else None,
        export_fn=lambda m, path: m.backbone.save_pretrained(path),
        run_config=to_dict(cfg),
    )
    if d.regression is not None:  # ẑ of streamed batches, computed where they train
        d.regression.to(trainer.accelerator.device)
    result = trainer.fit()
    weights = Path(cfg.out_dir) / ("best" if (Path(cfg.out_dir) / "best").is_dir() else "final")
    backbone = load_backbone(weights).eval()
    record = {
        "config": to_dict(cfg),
        "weights": weights.name,
        "samples_seen": result.samples_seen,
        "best_score": result.best_score,
    }
    if cfg.decoder_refinement.total_samples > 0:
        net = build_denoiser(backbone, edm).eval()
        ae, record["decoder_refinement"] = _refine_stage(
            cfg,
            base,
            d,
            whole_field(net),
            validate_fn=(lambda m: score(net, m)) if d.val is not None else None,
        )
    bundle_path = Path(cfg.out_dir) / "bundle"
    if trainer.accelerator.is_main_process:
        base.autoencoder, base.diffusion, base.edm = ae, backbone, edm
        base.extra = dict(base.extra) | {"ldm": record}
        base.save(bundle_path)
    trainer.accelerator.wait_for_everyone()
    return result, bundle_path


def bundle_recipe(cls, train_fn, description: str | None, argv=None) -> int:
    """``main`` of the regression and LDM recipes: parse the config (``--dry-run`` prints it),
    train, and print what was trained and where its bundle is."""
    cfg = parse_recipe_config(cls, description, argv)
    if cfg is None:
        return 0
    result, bundle = train_fn(cfg)
    print(
        f"trained {result.samples_seen} samples ({result.steps} steps), best {result.best_score}; "
        f"bundle: {bundle}"
    )
    return 0
