"""Decoder refinement: the autoencoder's decoder fine-tuned on the latents the trained
diffusion model generates (``LDMConfig.decoder_refinement``; off unless
``total_samples`` > 0).

Why: a decoder trained on the encoder's latents draws less small-scale texture from the
latents the diffusion model generates, which lie slightly off what it has seen: on ERA5
UK t2m the ensemble's power at the smallest zonal scale falls as the generated residual
is scaled from 0 to 1, and neither more sampler steps nor stochastic churn restore it.

What: once the diffusion model is trained, it generates ``generated_members`` latents
(regression mean + sampled residual) for up to ``max_times`` training times. The decoder
alone is then fine-tuned (encoder frozen: latents, latent stores, the regression and the
diffusion model all stay valid) on

    Charbonnier(D(z), x) + w S(D(z), x) + w S(D(z_gen), x)

with z the true latents, x the standardized truth of the same times, z_gen a generated
latent of those times and S the distance of the batch-mean windowed spectra
(:func:`kmscale.autoencoders.losses.mean_log_power_distance`). A generated latent is not
a pixel-by-pixel match of the truth, but its decoded texture should carry the truth's
power; the Charbonnier term on true latents keeps the decoder a decoder.

The stage is an ordinary :class:`kmscale.training.Trainer` run under
``<out_dir>/decoder_refinement`` (resumable; the generated latents are cached there), and
its validation scores the ensemble with the refined decoder on the held-out times.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from kmscale.autoencoders.losses import charbonnier, mean_log_power_distance
from kmscale.autoencoders.registry import load_autoencoder
from kmscale.config import to_dict
from kmscale.data.patches import random_patch
from kmscale.diffusion.ensemble import default_seeds
from kmscale.diffusion.settings import HEUN
from kmscale.diffusion.validation import latent_members
from kmscale.errors import ConfigError
from kmscale.training import Trainer, TrainingSettings

log = logging.getLogger(__name__)


@dataclass
class DecoderRefinement:
    """``decoder_refinement:`` of the LDM recipe (see the module docstring)."""

    total_samples: int = 0  # 0: no refinement
    batch_size: int | None = None  # None: train.global_batch_size
    ema_decay: float | None = None  # None: train.ema_decay
    max_grad_norm: float | None = None  # None: train.max_grad_norm
    lr: float = 2e-4  # constant, no warm-up
    spectral_weight: float = 1.0  # w of both spectrum terms
    spectral_floor: float = 1e-6  # standardized units squared
    charbonnier_eps: float = 1e-3
    generated_members: int = 4  # generated latents per training time
    steps: int = 6  # sampler noise levels of the generated latents
    solver: str = HEUN
    max_times: int = 256  # training times used (evenly spread)
    patch: list[int] | None = None  # train on random (rows, cols) pixel crops; None: whole fields
    seed: int = 0  # first member seed of the generated latents
    # The regression mean under the generated residuals: "full", the bundle's own regression
    # on the training times (in-sample); "training", the means the diffusion model was
    # trained on (cross-fitted with residual_folds > 1). On ERA5 UK "full" gave the
    # ensemble more power at the smallest scale (0.849 vs 0.840 of the truth, BENCHMARKS.md).
    regression_mean: str = "full"

    def check(self, autoencoder) -> None:
        """ConfigError unless these settings can refine ``autoencoder``: called by the recipe
        before any training, so that a bad setting does not wait for the diffusion model."""
        if not autoencoder.decoder_modules():
            raise ConfigError(
                "decoder_refinement: expected an autoencoder with a trainable decoder, found "
                f"{type(autoencoder).__name__} (pixel space has nothing to refine); set "
                "total_samples: 0"
            )
        if self.generated_members < 1 or self.max_times < 1:
            raise ConfigError(
                f"decoder_refinement: expected generated_members and max_times >= 1, found "
                f"{self.generated_members} and {self.max_times}"
            )
        if self.patch is not None and any(p % autoencoder.downsample_factor for p in self.patch):
            raise ConfigError(
                f"decoder_refinement.patch: expected multiples of the downsample factor "
                f"{autoencoder.downsample_factor}, found {self.patch}"
            )
        if self.regression_mean not in ("full", "training"):
            raise ConfigError(
                f"decoder_refinement.regression_mean: expected full or training, found "
                f"{self.regression_mean!r}"
            )


class RefinementData(Dataset):
    """Items {"x", "valid", "z", "z_gen"}: standardized truth (C, H, W) with NaN as 0, its
    validity mask, the true latent (C_z, h, w) and the generated ones (G, C_z, h, w)."""

    def __init__(self, x: torch.Tensor, valid: torch.Tensor, z: torch.Tensor, z_gen: torch.Tensor):
        self.x, self.valid, self.z, self.z_gen = x, valid, z, z_gen

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "valid": self.valid[i], "z": self.z[i], "z_gen": self.z_gen[i]}


def pick_times(n: int, max_times: int) -> np.ndarray:
    """At most ``max_times`` indices evenly spread over ``n``."""
    return np.unique(np.linspace(0, n - 1, min(max_times, n)).round().astype(int))


@torch.no_grad()
def generate_latents(denoiser, dataset, scale: list[float], s: DecoderRefinement) -> torch.Tensor:
    """(N, G, C_z, h, w) latents the diffusion model generates for every example of
    ``dataset`` (which carries "z_mean"); time i gets member seeds
    ``seed + i G, ..., seed + i G + G - 1`` (G = ``generated_members``): the same seeds at
    every time would repeat the same noise patterns, and the decoder would see G textures
    instead of N G."""
    device = next(denoiser.parameters()).device
    sc = torch.tensor(scale, dtype=torch.float32, device=device).reshape(-1, 1, 1)
    g = s.generated_members
    out = [
        latent_members(
            denoiser, dataset[i], sc, default_seeds(g, s.seed + i * g), s.steps, s.solver
        )
        .cpu()
        .float()
        for i in tqdm(range(len(dataset)), desc="generate latents", leave=False)
    ]
    return torch.stack(out)


def refinement_loss(model, batch: dict[str, torch.Tensor], s: DecoderRefinement) -> torch.Tensor:
    """The refinement objective (module docstring) for one batch."""
    device = next(model.parameters()).device
    x, valid, z, z_gen = (batch[k].to(device) for k in ("x", "valid", "z", "z_gen"))
    # One generated member per sample, from torch's RNG: it resumes with the Accelerate state.
    pick = torch.randint(0, z_gen.shape[1], (z_gen.shape[0],), device=device)
    z_gen = z_gen[torch.arange(z_gen.shape[0], device=device), pick]
    if s.patch is not None:
        f = x.shape[-1] // z.shape[-1]
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
        shape = tuple(z.shape[-2:])
        lat_sl = random_patch(
            shape, [min(p // f, n) for p, n in zip(s.patch, shape, strict=True)], rng
        )
        z, z_gen = z[..., lat_sl[0], lat_sl[1]], z_gen[..., lat_sl[0], lat_sl[1]]
        px = tuple(slice(sl.start * f, sl.stop * f) for sl in lat_sl)
        x, valid = x[..., px[0], px[1]], valid[..., px[0], px[1]]
    x_hat = model.decode_standardized(z)
    x_gen = model.decode_standardized(z_gen)
    w = valid.float()
    recon = (charbonnier(x_hat - x, s.charbonnier_eps) * w).sum() / w.sum().clamp(min=1.0)
    target = torch.where(valid, x, x_hat.detach())  # masked points do not pull the spectrum
    return (
        recon
        + s.spectral_weight * mean_log_power_distance(x_hat, target, s.spectral_floor)
        + s.spectral_weight * mean_log_power_distance(x_gen, target, s.spectral_floor)
    )


def refine_decoder(
    autoencoder,
    denoiser,
    dataset,
    x: torch.Tensor,
    scale: list[float],
    s: DecoderRefinement,
    out_dir: str | Path,
    train: TrainingSettings,
    validate_fn=None,
    run_config=None,
):
    """Fine-tune a copy of ``autoencoder``'s decoder; returns (refined autoencoder, record).

    Args:
        autoencoder: the bundle's autoencoder (left unchanged).
        denoiser: the trained EDM denoiser (EMA weights), possibly patched.
        dataset: training examples with "z" and "z_mean" (the means chosen by
            ``s.regression_mean``), already restricted to the times to use.
        x: (N, C, H, W) physical truth of those times.
        scale: the residual scale of the diffusion model.
        s: the settings; ``train`` gives the batch size, EMA and checkpointing.
        validate_fn: ``(autoencoder) -> scores`` on held-out times (logged, not used to pick).
    Returns:
        the refined autoencoder (eval mode) and a record for the bundle (settings, seconds,
        the fingerprints before and after).
    """
    s.check(autoencoder)
    out = Path(out_dir)
    t0 = time.perf_counter()
    state = PartialState()
    z_gen = cached_latents(denoiser, dataset, scale, s, out, state)
    model = copy.deepcopy(autoencoder)
    model.train_decoder_only()  # the Trainer optimizes only parameters that require gradients
    data = RefinementData(model.normalize_input(x), ~torch.isnan(x), dataset.z, z_gen)
    trainer = Trainer(
        model,
        lambda m, b: refinement_loss(m, b, s),
        data,
        out,
        refinement_training(s, train),
        validate_fn=validate_fn,
        run_config=run_config,
    )
    before = None
    if validate_fn is not None and state.is_main_process:
        with torch.no_grad():
            before = {f"val/{k}": float(v) for k, v in validate_fn(autoencoder.eval()).items()}
    result = trainer.fit()
    refined = load_autoencoder(out / "final").eval()
    scored = [r for r in trainer.history if any(k.startswith("val/") for k in r)]
    record = {
        "settings": to_dict(s),
        "samples_seen": result.samples_seen,
        "seconds": time.perf_counter() - t0,
        "autoencoder_before": autoencoder.fingerprint(),
        "autoencoder_after": refined.fingerprint(),
        "validation_before": before,
        "validation_after": scored[-1] if scored else None,
    }
    log.info("decoder refinement: %d samples in %.0f s", result.samples_seen, record["seconds"])
    return refined, record


def cached_latents(
    denoiser, dataset, scale: list[float], s: DecoderRefinement, out: Path, state: PartialState
) -> torch.Tensor:
    """The generated latents (N, G, C_z, h, w) of :func:`generate_latents`, cached in
    ``out/generated.pt``: the main process generates them once (atomic write), every
    process reads them.

    Raises:
        ConfigError: the cache holds another run's latents (other settings or times).
    """
    cache = out / "generated.pt"
    key = {
        k: getattr(s, k)
        for k in ("generated_members", "steps", "solver", "max_times", "seed", "regression_mean")
    }
    if state.is_main_process and not cache.is_file():
        out.mkdir(parents=True, exist_ok=True)
        z_gen = generate_latents(denoiser, dataset, scale, s)
        torch.save({"z_gen": z_gen, "settings": key}, cache.with_suffix(".tmp"))
        cache.with_suffix(".tmp").rename(cache)  # atomic: a resumed run never reads half a file
    state.wait_for_everyone()
    saved = torch.load(cache, weights_only=True)
    if saved["settings"] != key or saved["z_gen"].shape[0] != len(dataset):
        raise ConfigError(
            f"{cache}: expected generated latents for these settings and {len(dataset)} times, "
            f"found another run's; remove {out} to refine again"
        )
    return saved["z_gen"]


def refinement_training(s: DecoderRefinement, train: TrainingSettings) -> TrainingSettings:
    """The Trainer settings of the refinement: ``train`` with the refinement's samples,
    learning rate (constant, no warm-up), batch size, EMA and clipping where ``s`` sets them."""
    return TrainingSettings(
        **{
            **to_dict(train),
            "total_samples": s.total_samples,
            "lr": s.lr,
            "global_batch_size": s.batch_size or train.global_batch_size,
            "ema_decay": train.ema_decay if s.ema_decay is None else s.ema_decay,
            "max_grad_norm": train.max_grad_norm if s.max_grad_norm is None else s.max_grad_norm,
            "warmup_samples": 0,
            "lr_decay": "constant",
            "validate_every_samples": 0,
        }
    )
