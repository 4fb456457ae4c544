"""Staged VAE training on the shared Accelerate Trainer (``recipes/train_autoencoder.py``).

    stage 1: small random patches (fast, many samples)  ──► out_dir/stage1/final
    stage 2: large patches, initialized from stage 1     ──► out_dir/stage2/{best,final}
    decoder: optional fine-tuning of the decoder alone   ──► out_dir/decoder/final
             (encoder frozen) with a spectral loss
    latent statistics fitted on training latents         ──► out_dir/autoencoder  (load_autoencoder)

The decoder stage (off unless ``decoder.total_samples`` > 0) is what makes the smallest
scales come back at their true power: a decoder trained under a pixel loss smooths them
(measured on ERA5 t2m at 0.25 deg: 0.47 / 0.32 of the true power at the two smallest
scales), and a decoder that cannot know the exact phase of each small wiggle is best
taught the right *amount* of texture by matching the batch-mean spectrum
(``mean_log_power``, :func:`kmscale.autoencoders.losses.mean_log_power_distance`); the
encoder, and so the latents and their statistics, stay as they are (the decoder
fine-tuning of the Stable Diffusion VAEs works the same way).

Each stage is one :class:`kmscale.training.Trainer` run (EMA, mixed precision where the
device supports it, checkpoints every N samples, strict resume); a finished stage is
not trained again, so rerunning the same command after an interruption continues where
it stopped. Input statistics are fitted on the training period only
(:class:`kmscale.data.stats.NormStats`), or read from the ``stats.json`` of
``kmscale prepare``. Validation encodes and decodes whole held-out fields and reports
the RMSE per variable in physical units; the best (lowest mean standardized RMSE) EMA
weights of stage 2 become the autoencoder.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from kmscale.autoencoders.latent_store import _spatial_dims, open_targets
from kmscale.autoencoders.losses import VAELoss
from kmscale.autoencoders.registry import get_autoencoder_class
from kmscale.autoencoders.tiling import auto_tiling, tiled_decode, tiled_encode
from kmscale.autoencoders.vae import VAESettings
from kmscale.config import to_dict
from kmscale.data.patches import random_patch
from kmscale.data.stats import NormStats
from kmscale.errors import ConfigError, SchemaError
from kmscale.training import Trainer, TrainingSettings

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    targets: str = ""  # targets store of `kmscale prepare`, any canonical zarr, or NetCDF
    variables: list[str] = field(
        default_factory=list
    )  # the variable group; empty = all (time, Y, X) vars
    train_period: list[str] = field(
        default_factory=list
    )  # [start, end] inclusive; empty = all times
    val_period: list[str] = field(
        default_factory=list
    )  # held-out [start, end]; empty = no validation
    stats: str = ""  # stats.json of `kmscale prepare`; empty = fit on train_period
    # Value-transform scales when the statistics are fitted here, per variable in its units
    # (tp: log1p(tp / scale)); empty = the variable catalogue's (1.0).
    transform_scales: dict[str, float] = field(default_factory=dict)
    val_max_fields: int = 32  # validation fields (evenly spaced over val_period)
    # Level-shift augmentation: std (standardized units) of a random constant added to
    # each training field of every variable without a value transform (t2m, winds; not
    # log1p precipitation). A convolutional VAE otherwise fails on days warmer or windier
    # than any it was trained on; 0 = off.
    shift_augment: float = 0.0


@dataclass
class ModelConfig(VAESettings):
    """``model:`` of the recipe. ``name`` is a registered autoencoder: "vae" (trained here in
    stages; its width and depth are the :class:`VAESettings` fields), "identity" (pixel
    space: standardized fields, nothing to train), "fsae" / "face_vae" on HEALPix stores, ...
    ``options`` are the constructor arguments of models other than the VAE (e.g. fsae:
    levels, dim, heads, window); a HEALPix model's nside comes from the targets' cell count.
    """

    name: str = "vae"
    options: dict = field(default_factory=dict)


@dataclass
class LossConfig:
    charbonnier_eps: float = 1e-3
    kl_weight: float = 1e-6
    kl_warmup_samples: int = 10_000
    spectral_weight: float = 0.0
    spectral_mode: str = "log_amplitude"  # or "log_power": keeps the smallest scales' power
    spectral_floor: float = 1e-4


@dataclass
class StageConfig:
    patch: list[int] = field(
        default_factory=lambda: [64, 64]
    )  # (rows, cols) px, multiples of 2**n_down
    total_samples: int = 20_000
    lr: float = 1e-3
    # Quantization-aware training: > 0 makes the decoder see the posterior mean plus uniform
    # noise of this step in normalized latent units (VAEAutoencoder.forward(quant_step=...)),
    # so that latents quantized with about this step (kmscale encode) decode well.
    quant_step: float = 0.0


@dataclass
class DecoderStageConfig(StageConfig):
    """The decoder-only stage: encoder frozen, posterior means decoded, own spectral term.

    Start it from a model that already reconstructs well: it refines the texture of a
    good decoder and does not rescue a poor one (on a model whose small-scale power is off
    by orders of magnitude the spectrum term, linear beyond a log ratio of 1, keeps the
    model from being wrecked but does not make it better).
    """

    total_samples: int = 0  # 0 = no decoder stage
    lr: float = 5e-4
    spectral_weight: float = 0.3
    spectral_mode: str = "mean_log_power"
    spectral_floor: float = 1e-6


@dataclass
class GroupConfig:
    """One variable group of a grouped autoencoder: its variables and its own network.

    Every group trains with the config's data, loss, stages and loop settings; the
    groups' latents are concatenated (:class:`kmscale.autoencoders.grouped.GroupedAutoencoder`).
    """

    variables: list[str] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    # multiplies every stage's total_samples for this group (e.g. 2.0 for a harder group)
    budget_factor: float = 1.0


@dataclass
class AutoencoderConfig:
    out_dir: str = "runs/autoencoder"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # Non-empty: one autoencoder per group (each group's variables and model replace
    # data.variables and model), written to out_dir/<i>_<variables> and assembled into
    # out_dir/autoencoder; the groups must cover data.variables (or every target variable).
    groups: list[GroupConfig] = field(default_factory=list)
    # common latent grid factor F of the grouped autoencoder; 0 = the coarsest group's
    group_factor: int = 0
    loss: LossConfig = field(default_factory=LossConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(
        default_factory=lambda: StageConfig(patch=[256, 256], total_samples=5_000, lr=2e-4)
    )
    decoder: DecoderStageConfig = field(
        default_factory=lambda: DecoderStageConfig(patch=[256, 256])
    )
    train: TrainingSettings = field(default_factory=TrainingSettings)  # shared loop settings


class FieldDataset(torch.utils.data.Dataset):
    """Whole fields (HEALPix ``(T, C, npix)``: a sphere has no patches); item i is a seeded
    random time, as :class:`PatchDataset`."""

    def __init__(self, x: torch.Tensor, valid: torch.Tensor, seed: int, length: int = 100_000):
        self.x, self.valid, self.seed, self.length = x, valid, seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        t = int(np.random.default_rng([self.seed, i]).integers(self.x.shape[0]))
        return self.x[t], self.valid[t]


class PatchDataset(torch.utils.data.Dataset):
    """Random patches of standardized fields; item i is patch ``i`` of a seeded stream.

    Args:
        x: standardized fields (T, C, H, W), NaN already replaced by 0.
        valid: bool (T, C, H, W), True where the input had values.
        patch: (ph, pw) patch size in pixels (clipped to the field).
        length: number of items (an epoch); patches repeat with period ``length``.
    """

    def __init__(
        self,
        x: torch.Tensor,
        valid: torch.Tensor,
        patch: tuple[int, int],
        seed: int,
        length: int = 100_000,
    ):
        self.x, self.valid, self.seed, self.length = x, valid, seed, length
        self.patch = (min(patch[0], x.shape[-2]), min(patch[1], x.shape[-1]))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, i])
        t = int(rng.integers(self.x.shape[0]))
        sy, sx = random_patch(self.x.shape[-2:], self.patch, rng)
        return self.x[t, :, sy, sx], self.valid[t, :, sy, sx]


def _open(cfg: DataConfig) -> tuple[xr.Dataset, list[str]]:
    if not cfg.targets:
        raise ConfigError("data.targets: expected a targets store or NetCDF path, found none")
    ds = open_targets(cfg.targets)
    return ds, _target_names(ds, cfg.variables, cfg.targets)


def _target_names(ds: xr.Dataset, variables: list[str], source) -> list[str]:
    """The variable group: ``variables``, or every (time, Y, X) (HEALPix: (time, cell))
    variable of ``ds``; checked."""

    ndim = 2 if "cell" in ds.dims else 3
    names = list(variables) or [
        v for v, da in ds.data_vars.items() if da.ndim == ndim and da.dims[0] == "time"
    ]
    if not names:
        raise SchemaError(
            f"{source}: expected (time, Y, X) or (time, cell) target variables, "
            f"found {list(ds.data_vars)}"
        )
    if ndim == 2:
        from kmscale.sphere import check_healpix_dataset

        check_healpix_dataset(ds)
        bad = [v for v in names if v not in ds.data_vars or ds[v].dims != ("time", "cell")]
        if bad:
            raise SchemaError(f"{source}: expected {bad} with dims (time, cell)")
    else:
        _spatial_dims(ds, names, source)
    return names


def _build_model(cfg: ModelConfig, ds: xr.Dataset, names: list[str], stats: dict):
    """The configured autoencoder class and a fresh instance for ``names``."""
    cls = get_autoencoder_class(cfg.name)
    if cfg.name == "vae":
        kwargs = dict(
            block_out_channels=tuple(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block,
            norm_num_groups=cfg.norm_num_groups,
            norm_type=cfg.norm_type,
        )
    else:
        kwargs = dict(cfg.options)
    if "cell" in ds.dims:
        from kmscale.sphere import check_healpix_dataset

        nside = check_healpix_dataset(ds).nside
        if kwargs.setdefault("nside", nside) != nside:
            raise SchemaError(
                f"model.options.nside: expected the targets' nside {nside}, found {kwargs['nside']}"
            )
    return cls, cls(
        variables=names, input_stats=stats, latent_channels=cfg.latent_channels, **kwargs
    )


def _encode_all(model, fields: np.ndarray, batch: int = 16) -> torch.Tensor:
    """Latents of physical fields (T, C, *spatial): tiled for grids, batched for HEALPix."""
    if fields.ndim == 3:
        with torch.no_grad():
            return torch.cat(
                [
                    model.encode(torch.from_numpy(fields[i : i + batch]))
                    for i in range(0, fields.shape[0], batch)
                ]
            )
    tile, overlap = auto_tiling(fields.shape[-2:], model.downsample_factor)
    return tiled_encode(model, fields, tile=tile, overlap=overlap)


def _reconstruct(model, fields: np.ndarray, batch: int = 16) -> np.ndarray:
    """encode -> decode of physical fields (T, C, *spatial)."""
    if fields.ndim == 3:
        with torch.no_grad():
            return torch.cat(
                [
                    model.decode(model.encode(torch.from_numpy(fields[i : i + batch])))
                    for i in range(0, fields.shape[0], batch)
                ]
            ).numpy()
    tile, overlap = auto_tiling(fields.shape[-2:], model.downsample_factor)
    return tiled_decode(
        model,
        tiled_encode(model, fields, tile=tile, overlap=overlap),
        shape=fields.shape[-2:],
        tile=tile,
        overlap=overlap,
    ).numpy()


def select_period(
    ds: xr.Dataset, period: list[str], key: str, *, required: bool = False
) -> xr.Dataset:
    """Times of ``ds`` in ``period`` = [start, end] (inclusive); all of them when ``period`` is
    empty, unless ``required``. ``key`` names the setting in errors."""
    if not period and not required:
        return ds
    if len(period) != 2:
        raise ConfigError(f"{key}: expected [start, end], found {period}")
    sub = ds.sel(time=slice(period[0], period[1]))
    if sub.sizes["time"] == 0:
        raise ConfigError(f"{key}: expected times within {period}, found none in the targets")
    return sub


def stack_fields(ds: xr.Dataset, names: list[str]) -> np.ndarray:
    """(T, C, *spatial) float32 physical fields of ``names``, in channel order."""
    return np.stack([np.asarray(ds[v].values, np.float32) for v in names], axis=1)


def _input_stats(cfg: DataConfig, train: xr.Dataset, names: list[str]) -> dict:
    if cfg.stats:
        stats = NormStats.load(cfg.stats)
    else:
        stats = NormStats.fit(train, names, scales=cfg.transform_scales)
    return {v: stats.stat(v) for v in names}


def _shiftable(model) -> torch.Tensor:
    """(C,) 1.0 for variables whose standardized values may be shifted (no value transform)."""
    stats = model.config.input_stats
    return torch.tensor(
        [float(stats[v].get("transform", "none") in (None, "none")) for v in model.variables]
    )


def _stage(cfg: AutoencoderConfig, name: str, stage: StageConfig, model, x, valid, val_fn) -> Path:
    """Train one stage; returns the directory of its exported EMA weights."""
    f = model.downsample_factor
    if x.ndim == 4 and (stage.patch[0] % f or stage.patch[1] % f):
        raise ConfigError(
            f"{name}.patch: expected multiples of the downsample factor {f}, found {stage.patch}"
        )
    out = Path(cfg.out_dir) / name
    final = out / "final"
    if (final / "config.json").is_file():
        log.info("%s already trained (%s): skipped", name, final)
        return final
    settings = TrainingSettings(
        **{**to_dict(cfg.train), "total_samples": stage.total_samples, "lr": stage.lr}
    )
    decoder_only = isinstance(stage, DecoderStageConfig)
    loss_settings = to_dict(cfg.loss)
    if decoder_only:
        loss_settings.update(
            spectral_weight=stage.spectral_weight,
            spectral_mode=stage.spectral_mode,
            spectral_floor=stage.spectral_floor,
        )
        model.train_decoder_only()  # the Trainer optimizes only parameters that require gradients
    loss = VAELoss(**loss_settings)
    box: dict = {}

    shift = cfg.data.shift_augment * _shiftable(model)

    def loss_fn(m, batch) -> torch.Tensor:
        xb, vb = (b.to(next(m.parameters()).device) for b in batch)
        if cfg.data.shift_augment > 0:
            offset = torch.randn(*xb.shape[:2], *(1,) * (xb.ndim - 2), device=xb.device)
            offset = offset * shift.to(xb.device).reshape(1, -1, *(1,) * (xb.ndim - 2))
            xb = xb + offset * vb
        out = m(xb, quant_step=stage.quant_step, sample_posterior=not decoder_only)
        seen = box["trainer"].counters.samples_seen
        return loss(out.sample, xb, out.latent_dist, mask=vb, samples_seen=seen)["total"].mean()

    data = (
        FieldDataset(x, valid, seed=cfg.train.seed)
        if x.ndim == 3
        else PatchDataset(x, valid, tuple(stage.patch), seed=cfg.train.seed)
    )
    # The decoder stage keeps its final weights (see train_autoencoder): validation only logs.
    trainer = Trainer(
        model,
        loss_fn,
        data,
        out,
        settings,
        validate_fn=val_fn,
        best_metric="rmse_norm" if val_fn and not decoder_only else None,
        run_config=to_dict(cfg),
    )
    box["trainer"] = trainer
    result = trainer.fit()
    log.info(
        "%s: %d samples, last loss %.4g, best %s",
        name,
        result.samples_seen,
        result.last_loss,
        result.best_score,
    )
    return final


def train_autoencoder(cfg: AutoencoderConfig, targets: xr.Dataset | None = None):
    """Run the stages and write ``<out_dir>/autoencoder``; returns the trained model.

    Args:
        targets: the fields already in memory (time, Y, X per variable); None reads
            ``cfg.data.targets``. ``stage2.total_samples = 0`` trains one stage only
            (then validation, if any, runs in stage 1); ``decoder.total_samples > 0``
            adds the decoder stage, started from the best weights of the last one (its
            final weights become the autoencoder). With ``cfg.groups`` every group is
            trained this way on its own and the result is a grouped autoencoder.
    """
    if targets is None:
        ds, names = _open(cfg.data)
    else:
        ds, names = targets, _target_names(targets, cfg.data.variables, "targets (in memory)")
    if cfg.groups:
        return _train_groups(cfg, ds, names)
    return _train_one(cfg, ds, names)


def _train_groups(cfg: AutoencoderConfig, ds: xr.Dataset, names: list[str]):
    """One autoencoder per group (each trained by :func:`_train_one`), assembled."""
    from kmscale.autoencoders.grouped import GroupedAutoencoder, check_groups, group_dir

    check_groups(names, [g.variables for g in cfg.groups])
    out = Path(cfg.out_dir)
    parts = []
    for i, group in enumerate(cfg.groups):
        stages = {
            name: dataclasses.replace(
                stage, total_samples=int(round(stage.total_samples * group.budget_factor))
            )
            for name, stage in (
                ("stage1", cfg.stage1),
                ("stage2", cfg.stage2),
                ("decoder", cfg.decoder),
            )
        }
        sub = dataclasses.replace(
            cfg,
            out_dir=str(out / group_dir(i, group.variables)),
            groups=[],
            model=group.model,
            data=dataclasses.replace(cfg.data, variables=list(group.variables)),
            **stages,
        )
        parts.append(_train_one(sub, ds, list(group.variables)))
    model = GroupedAutoencoder(parts, names, cfg.group_factor or None)
    model.save_pretrained(out / "autoencoder")
    log.info("grouped autoencoder %s written to %s", model.groups, out / "autoencoder")
    return model


def _train_one(cfg: AutoencoderConfig, ds: xr.Dataset, names: list[str]):
    """The staged training of one autoencoder on ``names`` (see :func:`train_autoencoder`)."""
    final = Path(cfg.out_dir) / "autoencoder"
    train = select_period(ds, cfg.data.train_period, "data.train_period")
    stats = _input_stats(cfg.data, train, names)
    if cfg.model.name == "identity":
        model = get_autoencoder_class("identity")(variables=names, input_stats=stats)
        model.save_pretrained(final)
        return model
    torch.manual_seed(cfg.train.seed)
    cls, model = _build_model(cfg.model, ds, names, stats)
    raw = torch.from_numpy(stack_fields(train, names))
    valid = torch.isfinite(raw)
    x = model.normalize_input(raw)
    val_fn = None
    if cfg.data.val_period:
        val = select_period(ds, cfg.data.val_period, "data.val_period")
        idx = np.unique(
            np.linspace(
                0, val.sizes["time"] - 1, min(cfg.data.val_max_fields, val.sizes["time"])
            ).astype(int)
        )
        val_fields = stack_fields(val.isel(time=idx), names)
        val_fn = _validator(val_fields, names, stats)
    two_stages = cfg.stage2.total_samples > 0
    s1 = _stage(cfg, "stage1", cfg.stage1, model, x, valid, None if two_stages else val_fn)
    if two_stages:
        model = cls.from_pretrained(s1)
        _stage(cfg, "stage2", cfg.stage2, model, x, valid, val_fn)
    out = Path(cfg.out_dir)
    last = out / ("stage2" if two_stages else "stage1")
    best = last / ("best" if (last / "best" / "config.json").is_file() else "final")
    if cfg.decoder.total_samples > 0:
        # Its final EMA weights: the stage trades a little RMSE for the smallest scales'
        # power, so the lowest-RMSE checkpoint would tend to undo it (none is kept).
        best = _stage(cfg, "decoder", cfg.decoder, cls.from_pretrained(best), x, valid, val_fn)
    model = cls.from_pretrained(best).eval()
    # Latent normalization: per-channel mean/std of the training latents (posterior means).
    sub = raw[:: max(1, raw.shape[0] // 64)].numpy()
    z = _encode_all(model, sub).numpy()
    axes = (0, *range(2, z.ndim))
    model.set_latent_stats(z.mean(axis=axes).tolist(), (z.std(axis=axes) + 1e-6).tolist())
    model.save_pretrained(out / "autoencoder")
    log.info("autoencoder written to %s (from %s)", out / "autoencoder", best)
    return model


def _validator(fields: np.ndarray, names: list[str], stats: dict):
    """validate_fn: RMSE of encode -> decode on held-out fields, per variable and standardized."""
    valid = np.isfinite(fields)

    def validate(model) -> dict[str, float]:
        rec = _reconstruct(model, fields)
        out, norm = {}, []
        for c, v in enumerate(names):
            err = (rec[:, c] - fields[:, c])[valid[:, c]]
            rmse = float(np.sqrt(np.mean(err.astype(np.float64) ** 2)))
            out[f"rmse_{v}"] = rmse
            std = float(np.std(fields[:, c][valid[:, c]])) or 1.0
            norm.append(rmse / std)
        out["rmse_norm"] = float(np.mean(norm))
        return out

    return validate


def vae_config(
    out: str | Path,
    field_shape: list[int],
    widths: list[int],
    latent_channels: int,
    samples: int,
    *,
    batch: int = 16,
    seed: int = 0,
    spectral_weight: float = 0.1,
    lr: float = 1e-3,
    shift_augment: float = 0.0,
    spectral_mode: str = "log_amplitude",
    small_patch: list[int] | None = None,
    small_fraction: float = 0.5,
    decoder_samples: int = 0,
    decoder_spectral_weight: float = 0.3,
    groups: list[GroupConfig] | None = None,
    group_factor: int = 0,
    transform_scales: dict[str, float] | None = None,
) -> AutoencoderConfig:
    """The config of a short VAE run on whole fields of ``field_shape`` (the demo's and
    the benchmarks'): one stage on whole fields, or, with ``small_patch``, two stages
    (``small_fraction`` of the ``samples`` on cheap small patches, then whole fields;
    ``small_fraction=1`` trains on small patches only), then, with ``decoder_samples``
    > 0, the decoder stage on whole fields (encoder frozen, batch-mean spectrum term of
    weight ``decoder_spectral_weight``). ``groups``: one VAE per group (their own
    widths and channels; ``widths`` and ``latent_channels`` are then unused).
    ``shift_augment``, ``transform_scales``: see :class:`DataConfig`; ``spectral_mode``: see
    :class:`VAELoss`."""
    n_small = max(1, int(round(samples * small_fraction))) if small_patch else samples
    return AutoencoderConfig(
        out_dir=str(out),
        data=DataConfig(shift_augment=shift_augment, transform_scales=dict(transform_scales or {})),
        model=ModelConfig(
            block_out_channels=list(widths),
            latent_channels=latent_channels,
            norm_num_groups=min(16, *widths),
        ),
        groups=list(groups or []),
        group_factor=group_factor,
        loss=LossConfig(
            kl_weight=1e-6,
            kl_warmup_samples=max(1, samples // 4),
            spectral_weight=spectral_weight,
            spectral_mode=spectral_mode,
        ),
        stage1=StageConfig(patch=list(small_patch or field_shape), total_samples=n_small, lr=lr),
        stage2=StageConfig(patch=list(field_shape), total_samples=samples - n_small, lr=lr),
        decoder=DecoderStageConfig(
            patch=list(field_shape),
            total_samples=decoder_samples,
            spectral_weight=decoder_spectral_weight,
        ),
        train=TrainingSettings(
            global_batch_size=batch,
            warmup_samples=min(200, samples),
            lr_decay="cosine",
            ema_decay=0.99,
            checkpoint_every_samples=max(batch, samples // 2),
            log_every_samples=max(batch, samples // 10),
            seed=seed,
        ),
    )


def fit_vae(
    targets: xr.Dataset,
    out: str | Path,
    widths: list[int],
    latent_channels: int,
    samples: int,
    **kwargs,
) -> Path:
    """Train on ``targets`` (time, lat, lon per variable; all of them are training fields)
    with :func:`vae_config` (``kwargs``) and :func:`train_autoencoder`; returns
    ``out/autoencoder`` (kept if already there). Input statistics come from the
    targets, latent statistics from encoding them afterwards."""
    out = Path(out)
    final = out / "autoencoder"
    if not (final / "config.json").is_file():
        shape = [int(targets.sizes["lat"]), int(targets.sizes["lon"])]
        train_autoencoder(
            vae_config(out, shape, widths, latent_channels, samples, **kwargs), targets
        )
    return final
