"""The shared Accelerate loop: schedule in samples, resume, corrupt checkpoints, EMA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kmscale.errors import CheckpointError, ConfigError
from kmscale.training import GlobalBatchSampler, Trainer, TrainingSettings, latest_checkpoint


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    return TensorDataset(x, y)


def _model():
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def _loss(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _export(model, path):
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / "weights.pt")


def _settings(**kw):
    base = dict(
        total_samples=256,
        global_batch_size=16,
        lr=5e-2,
        checkpoint_every_samples=64,
        log_every_samples=64,
        ema_decay=0.9,
        mixed_precision="no",
    )
    base.update(kw)
    return TrainingSettings(**base)


def _fit(tmp, **kw):
    trainer = Trainer(_model(), _loss, _data(), tmp, _settings(**kw), export_fn=_export)
    return trainer, trainer.fit()


def test_loss_decreases_and_outputs_written(tmp_path):
    trainer, result = _fit(tmp_path / "run")
    assert result.samples_seen == 256 and result.steps == 16
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    assert (tmp_path / "run" / "final" / "weights.pt").is_file()
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "checkpoint-000000000256"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["samples_seen"] == 256


def test_resume_reproduces_uninterrupted_run(tmp_path):
    _, _ = _fit(tmp_path / "full")
    # "interrupted" run: the first half, then a new process resumes to the end
    _fit(tmp_path / "split", total_samples=128)
    trainer, result = _fit(tmp_path / "split")
    assert result.samples_seen == 256
    a = torch.load(tmp_path / "full" / "final" / "weights.pt")
    b = torch.load(tmp_path / "split" / "final" / "weights.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_corrupt_checkpoint_is_an_error_not_a_restart(tmp_path):
    _fit(tmp_path / "run", total_samples=64)
    ckpt = latest_checkpoint(tmp_path / "run" / "checkpoints")
    for f in ckpt.iterdir():
        if f.suffix in {".safetensors", ".bin", ".pt", ".pkl"} or f.name.startswith(
            "custom_checkpoint"
        ):
            f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        _fit(tmp_path / "run", total_samples=128)


def test_resume_never_refuses_existing_checkpoints(tmp_path):
    _fit(tmp_path / "run", total_samples=64)
    with pytest.raises(CheckpointError, match="resume='never'"):
        _fit(tmp_path / "run", total_samples=128, resume="never")


def test_global_batches_do_not_depend_on_processes_or_accumulation():
    def batches(world, accum):
        per_rank = [
            list(GlobalBatchSampler(10, 8, world, r, accum, 5, seed=3)) for r in range(world)
        ]
        steps = []
        for s in range(5):
            idx = []
            for r in range(world):
                for a in range(accum):
                    idx += per_rank[r][s * accum + a]
            steps.append(sorted(idx))
        return steps

    ref = batches(1, 1)
    assert batches(2, 1) == ref and batches(2, 2) == ref and batches(1, 4) == ref
    # every epoch visits every sample once
    stream = GlobalBatchSampler(10, 8, 1, 0, 1, 5, seed=3)._stream(0, 20)
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))


def test_grad_accumulation_follows_the_same_schedule(tmp_path):
    _, r1 = _fit(tmp_path / "a", ema_decay=0.0)
    _, r2 = _fit(tmp_path / "b", ema_decay=0.0, grad_accum=2)
    a = torch.load(tmp_path / "a" / "final" / "weights.pt")
    b = torch.load(tmp_path / "b" / "final" / "weights.pt")
    assert r1.steps == r2.steps
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_batch_must_split_over_accumulation(tmp_path):
    with pytest.raises(ConfigError, match="multiple"):
        _fit(tmp_path / "x", global_batch_size=10, grad_accum=4)


def test_validation_keeps_best(tmp_path):
    scores = iter(np.linspace(1.0, 0.1, 10).tolist() + [5.0] * 10)
    trainer = Trainer(
        _model(),
        _loss,
        _data(),
        tmp_path / "v",
        _settings(validate_every_samples=64),
        validate_fn=lambda m: {"crps": next(scores)},
        best_metric="crps",
        export_fn=_export,
    )
    result = trainer.fit()
    best = json.loads((tmp_path / "v" / "best" / "best.json").read_text())
    assert best["score"] == pytest.approx(result.best_score)
    assert result.best_score < 1.0


def test_two_process_cpu_launch_follows_the_one_process_schedule(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "_train_linear.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(script),
        str(tmp_path / "two"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _fit(tmp_path / "one", ema_decay=0.0)
    a = torch.load(tmp_path / "one" / "final" / "weights.pt")
    b = torch.load(tmp_path / "two" / "final" / "weights.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
