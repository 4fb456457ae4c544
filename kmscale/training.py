"""The one Accelerate training loop every recipe uses.

Recipes stay thin: they parse their config, build a model, a loss function and a
dataset, and call :meth:`Trainer.fit`. This module owns the pieces the loop needs:

- **Schedule in samples seen.** ``total_samples`` and ``global_batch_size`` fix the
  number of optimizer steps; each process draws ``global_batch_size / (processes *
  grad_accum)`` samples per micro-step. The global batch at step ``s`` is the same set
  of dataset indices whatever the number of processes or the accumulation, so a run
  on 2 processes follows the schedule of a run on 1 (up to floating-point order).
- **Resume.** Checkpoints are written to ``checkpoint-<samples>.tmp`` and renamed when
  complete, so a directory named ``checkpoint-<samples>`` is always whole. With
  ``resume="auto"`` the latest one is loaded (model, optimizer, LR schedule, EMA,
  RNG states, counters). A checkpoint that fails to load is a :class:`CheckpointError`,
  never a silent restart from zero.
- **EMA** with diffusers' ``EMAModel`` (saved and restored with the Accelerate state);
  validation and exported weights use the EMA weights.
- **Validation** every ``validate_every_samples`` on the main process; the best score
  (``best_metric``, lower is better) is exported to ``out_dir/best``.
- **Mixed precision** ``auto``: bf16 where a CUDA device supports it, else fp32.

Layout of ``out_dir``::

    checkpoints/checkpoint-000000004096/   accelerate state + kmscale_checkpoint.json
    best/                                  EMA weights of the best validation (export_fn)
    final/                                 EMA weights at the end (export_fn)
    metrics.jsonl                          one JSON line per log/validation event
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from kmscale.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

CHECKPOINT_MARKER = "kmscale_checkpoint.json"


@dataclass
class TrainingSettings:
    """Loop settings shared by every recipe (embedded as ``train:`` in recipe configs)."""

    total_samples: int = 20_000  # training length in samples seen (not steps)
    global_batch_size: int = 16  # samples per optimizer step, over all processes
    grad_accum: int = 1  # micro-steps accumulated per optimizer step
    lr: float = 2e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_samples: int = 0  # linear LR ramp from 0 over this many samples
    lr_decay: str = "constant"  # "constant" or "cosine" (to 0 at total_samples) after warm-up
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables
    ema_decay: float = 0.999  # EMA decay ceiling; 0 disables the EMA
    ema_warmup_power: float = 0.75  # diffusers EMA warm-up power (3/4 suits short runs)
    mixed_precision: str = "auto"  # "auto", "no", "bf16" or "fp16"
    checkpoint_every_samples: int = 5_000
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk
    validate_every_samples: int = 0  # 0: validate only at the end (if validate_fn)
    log_every_samples: int = 1_000
    num_workers: int = 0  # DataLoader workers per process
    seed: int = 0
    resume: str = "auto"  # "auto" (latest checkpoint if any), "never", or a checkpoint path


@dataclass
class TrainResult:
    samples_seen: int
    steps: int
    last_loss: float
    best_score: float | None
    best_samples: int | None
    out_dir: Path
    history: list[dict] = field(default_factory=list)


class _Counters:
    """Loop counters registered with Accelerate so that they resume exactly."""

    def __init__(self) -> None:
        self.step = 0
        self.samples_seen = 0
        self.best_score = math.inf
        self.best_samples = -1

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: Mapping) -> None:
        for key in ("step", "samples_seen", "best_score", "best_samples"):
            setattr(self, key, state[key])


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this process's micro-batches of dataset indices, starting at a given step.

    The index stream is a concatenation of per-epoch permutations drawn from
    ``seed + epoch``; global batch ``s`` is stream positions ``[s*G, (s+1)*G)``. Process
    ``rank`` of ``world`` takes a contiguous slice of it and splits that into
    ``grad_accum`` micro-batches, so the global batches do not depend on ``world``.
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        world: int,
        rank: int,
        grad_accum: int,
        total_steps: int,
        seed: int,
        start_step: int = 0,
    ):
        if n <= 0:
            raise ConfigError("training dataset: expected at least one sample, found none")
        if global_batch % (world * grad_accum):
            raise ConfigError(
                f"global_batch_size: expected a multiple of processes x grad_accum = "
                f"{world} x {grad_accum}, found {global_batch}"
            )
        self.n, self.G, self.world, self.rank, self.accum = n, global_batch, world, rank, grad_accum
        self.micro = global_batch // (world * grad_accum)
        self.total_steps, self.seed, self.start_step = total_steps, seed, start_step

    def _stream(self, start: int, count: int) -> np.ndarray:
        out = []
        pos = start
        while len(out) < count:
            epoch, offset = divmod(pos, self.n)
            perm = np.random.default_rng(self.seed + epoch).permutation(self.n)
            take = perm[offset : offset + (count - len(out))]
            out.extend(take.tolist())
            pos += len(take)
        return np.asarray(out)

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.G // self.world
        for step in range(self.start_step, self.total_steps):
            batch = self._stream(step * self.G, self.G)
            mine = batch[self.rank * per_rank : (self.rank + 1) * per_rank]
            for a in range(self.accum):
                yield mine[a * self.micro : (a + 1) * self.micro].tolist()

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.accum


def resolve_mixed_precision(value: str) -> str:
    if value not in {"auto", "no", "bf16", "fp16"}:
        raise ConfigError(f"mixed_precision: expected auto/no/bf16/fp16, found {value!r}")
    if value != "auto":
        return value
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def default_export(model: nn.Module, path: Path) -> None:
    """Save a model with ``save_pretrained`` (diffusers/transformers models)."""
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} has no save_pretrained; pass export_fn to Trainer")
    model.save_pretrained(path)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The complete checkpoint with the most samples seen, or None."""
    if not ckpt_dir.is_dir():
        return None
    found = sorted(
        p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir() and not p.name.endswith(".tmp")
    )
    return found[-1] if found else None


class Trainer:
    """Train ``model`` to minimize ``loss_fn(model, batch)`` with Accelerate.

    Args:
        model: the trainable module (e.g. an EDMPrecond around a ConditionalUNet).
        loss_fn: ``(model, batch) -> scalar tensor`` (reduce the unreduced loss here).
        train_dataset: map-style dataset; its items are collated by ``collate_fn``.
        out_dir: run directory (checkpoints, best/, final/, metrics.jsonl).
        settings: :class:`TrainingSettings`.
        validate_fn: ``(model_with_ema_weights) -> {metric: value}`` on the main process.
        best_metric: key of ``validate_fn``'s result to minimize for ``best/``.
        export_fn: ``(unwrapped_model, path)`` writing deployable weights; defaults to
            ``save_pretrained``. Called with the EMA weights in place.
        collate_fn: DataLoader collate function.
        run_config: the recipe's resolved config, written to ``out_dir/config.json``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        train_dataset: Dataset,
        out_dir: str | Path,
        settings: TrainingSettings,
        *,
        validate_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
        best_metric: str | None = None,
        export_fn: Callable[[nn.Module, Path], None] = default_export,
        collate_fn: Callable | None = None,
        run_config: Mapping | None = None,
    ):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.s = settings
        self.out_dir = Path(out_dir)
        self.loss_fn = loss_fn
        self.validate_fn = validate_fn
        self.best_metric = best_metric
        self.export_fn = export_fn
        if settings.total_samples < settings.global_batch_size:
            raise ConfigError(
                "total_samples: expected at least one global batch "
                f"({settings.global_batch_size}), found {settings.total_samples}"
            )
        self.accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(settings.mixed_precision),
            gradient_accumulation_steps=settings.grad_accum,
        )
        set_seed(settings.seed, device_specific=True)
        acc = self.accelerator
        self.total_steps = settings.total_samples // settings.global_batch_size
        self.ckpt_dir = self.out_dir / "checkpoints"

        # Frozen parameters (e.g. the encoder while a decoder is fine-tuned) stay out.
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=settings.lr,
            betas=tuple(settings.betas),
            weight_decay=settings.weight_decay,
        )
        # Not prepared by Accelerate: its wrapper steps the schedule once per process.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.model, self.optimizer = acc.prepare(model, self.optimizer)
        self.ema = None
        if settings.ema_decay > 0:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(
                acc.unwrap_model(self.model).parameters(),
                decay=settings.ema_decay,
                use_ema_warmup=True,
                power=settings.ema_warmup_power,
            )
            self.ema.to(acc.device)
            acc.register_for_checkpointing(self.ema)
        self.counters = _Counters()
        acc.register_for_checkpointing(self.scheduler)
        acc.register_for_checkpointing(self.counters)
        self.train_dataset = train_dataset
        self.collate_fn = collate_fn
        self.history: list[dict] = []
        if acc.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if run_config is not None:
                (self.out_dir / "config.json").write_text(
                    json.dumps(run_config, indent=2, default=str)
                )

    # ---- schedule -------------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        samples = step * self.s.global_batch_size
        warm = 1.0 if self.s.warmup_samples <= 0 else min(1.0, samples / self.s.warmup_samples)
        if self.s.lr_decay == "constant":
            return warm
        if self.s.lr_decay == "cosine":
            frac = min(1.0, samples / max(1, self.s.total_samples))
            return warm * 0.5 * (1 + math.cos(math.pi * frac))
        raise ConfigError(f"lr_decay: expected constant or cosine, found {self.s.lr_decay!r}")

    def _loader(self, start_step: int) -> DataLoader:
        acc = self.accelerator
        sampler = GlobalBatchSampler(
            len(self.train_dataset),
            self.s.global_batch_size,
            acc.num_processes,
            acc.process_index,
            self.s.grad_accum,
            self.total_steps,
            self.s.seed,
            start_step,
        )
        return DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            num_workers=self.s.num_workers,
            collate_fn=self.collate_fn,
            persistent_workers=False,
            # Its own generator: creating the iterator draws a seed, which must not come
            # from the global RNG, or a resumed run's stochastic losses (EDM's sigma and
            # noise) would diverge from an uninterrupted run.
            generator=torch.Generator().manual_seed(self.s.seed),
        )

    # ---- checkpoints ----------------------------------------------------------------
    def _resume(self) -> None:
        mode = self.s.resume
        if mode == "never":
            if latest_checkpoint(self.ckpt_dir) is not None:
                raise CheckpointError(
                    f"{self.ckpt_dir}: expected no checkpoints with resume='never', found some; "
                    f"use another out_dir or resume='auto'"
                )
            return
        path = latest_checkpoint(self.ckpt_dir) if mode == "auto" else Path(mode)
        if path is None:
            return
        marker = path / CHECKPOINT_MARKER
        if not marker.is_file():
            raise CheckpointError(
                f"{path}: expected a kmscale checkpoint ({CHECKPOINT_MARKER}), found none"
            )
        try:
            meta = json.loads(marker.read_text())
            self.accelerator.load_state(str(path))
        # Loading a damaged state can fail in many libraries (safetensors, pickle, torch);
        # whatever the type, it is re-raised as one clear error, never swallowed.
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(
                f"{path}: expected a loadable checkpoint, found a corrupt or incompatible one "
                f"({err}); remove it to resume from an earlier one"
            ) from err
        if meta.get("samples_seen") != self.counters.samples_seen:
            raise CheckpointError(
                f"{path}: marker says {meta.get('samples_seen')} samples seen, "
                f"state says {self.counters.samples_seen}"
            )
        log.info("resumed from %s (%d samples seen)", path, self.counters.samples_seen)

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        name = f"checkpoint-{self.counters.samples_seen:012d}"
        final = self.ckpt_dir / name
        tmp = self.ckpt_dir / (name + ".tmp")
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            meta = {"samples_seen": self.counters.samples_seen, "step": self.counters.step}
            (tmp / CHECKPOINT_MARKER).write_text(json.dumps(meta))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            kept = sorted(
                p for p in self.ckpt_dir.glob("checkpoint-*") if not p.name.endswith(".tmp")
            )
            for old in kept[: -self.s.keep_checkpoints]:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        return final

    # ---- EMA views ------------------------------------------------------------------
    def _with_ema(self, fn: Callable[[nn.Module], Any]) -> Any:
        unwrapped = self.accelerator.unwrap_model(self.model)
        if self.ema is None:
            return fn(unwrapped)
        self.ema.store(unwrapped.parameters())
        self.ema.copy_to(unwrapped.parameters())
        try:
            return fn(unwrapped)
        finally:
            self.ema.restore(unwrapped.parameters())

    def export(self, path: Path) -> None:
        """Write the EMA weights with ``export_fn`` (main process)."""
        if self.accelerator.is_main_process:
            self._with_ema(lambda m: self.export_fn(m, path))
        self.accelerator.wait_for_everyone()

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.accelerator.is_main_process:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _validate(self) -> None:
        if self.validate_fn is None:
            return
        if self.accelerator.is_main_process:
            model_was_training = self.model.training
            self.model.eval()
            with torch.no_grad():
                scores = dict(self._with_ema(self.validate_fn))
            self.model.train(model_was_training)
            record = {
                "samples_seen": self.counters.samples_seen,
                **{f"val/{k}": float(v) for k, v in scores.items()},
            }
            self._log(record)
            if self.best_metric is not None:
                if self.best_metric not in scores:
                    raise KeyError(
                        f"validate_fn: expected the metric {self.best_metric!r}, found "
                        f"{sorted(scores)}"
                    )
                score = float(scores[self.best_metric])
                if score < self.counters.best_score:
                    self.counters.best_score = score
                    self.counters.best_samples = self.counters.samples_seen
                    self._with_ema(lambda m: self.export_fn(m, self.out_dir / "best"))
                    (self.out_dir / "best" / "best.json").write_text(
                        json.dumps(
                            {
                                "metric": self.best_metric,
                                "score": score,
                                "samples_seen": self.counters.samples_seen,
                            }
                        )
                    )
        self.accelerator.wait_for_everyone()

    # ---- the loop -------------------------------------------------------------------
    def fit(self) -> TrainResult:
        from tqdm.auto import tqdm

        acc = self.accelerator
        self._resume()
        G = self.s.global_batch_size
        loader = self._loader(self.counters.step)
        every = lambda n: max(1, n // G) if n > 0 else 0  # noqa: E731 - samples -> steps
        ckpt_steps, val_steps, log_steps = (
            every(self.s.checkpoint_every_samples),
            every(self.s.validate_every_samples),
            every(self.s.log_every_samples),
        )
        bar = tqdm(
            total=self.s.total_samples,
            initial=self.counters.samples_seen,
            unit="sample",
            disable=not acc.is_local_main_process,
            desc=self.out_dir.name,
        )
        self.model.train()
        running, n_running, last = 0.0, 0, float("nan")
        for batch in loader:
            with acc.accumulate(self.model):
                loss = self.loss_fn(self.model, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss at step {self.counters.step}: expected a finite value, "
                        f"found {loss.item()}"
                    )
                acc.backward(loss)
                if acc.sync_gradients and self.s.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.model.parameters(), self.s.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            running += loss.detach().float().item()
            n_running += 1
            if not acc.sync_gradients:
                continue
            self.scheduler.step()
            if self.ema is not None:
                self.ema.step(acc.unwrap_model(self.model).parameters())
            self.counters.step += 1
            self.counters.samples_seen += G
            bar.update(G)
            step = self.counters.step
            if log_steps and step % log_steps == 0 or step == self.total_steps:
                last = running / max(1, n_running)
                bar.set_postfix(loss=f"{last:.4g}")
                self._log(
                    {
                        "samples_seen": self.counters.samples_seen,
                        "step": step,
                        "loss": last,
                        "lr": self.scheduler.get_last_lr()[0],
                    }
                )
                running, n_running = 0.0, 0
            if val_steps and step % val_steps == 0 and step != self.total_steps:
                self._validate()
            if ckpt_steps and step % ckpt_steps == 0 and step != self.total_steps:
                self.save_checkpoint()
        bar.close()
        if self.counters.samples_seen < self.total_steps * G:  # pragma: no cover - defensive
            raise RuntimeError("training loop ended early: the data loader ran dry")
        self._validate()
        self.save_checkpoint()
        self.export(self.out_dir / "final")
        best = self.counters.best_score if math.isfinite(self.counters.best_score) else None
        return TrainResult(
            samples_seen=self.counters.samples_seen,
            steps=self.counters.step,
            last_loss=last,
            best_score=best,
            best_samples=self.counters.best_samples if best is not None else None,
            out_dir=self.out_dir,
            history=self.history,
        )
