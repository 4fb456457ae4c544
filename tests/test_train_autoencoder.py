"""recipes/train_autoencoder.py: two stages of a few steps, checkpoints, resume, validation."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kmscale.autoencoders import load_autoencoder
from kmscale.errors import CheckpointError

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "train_autoencoder.py"


def recipe():
    spec = importlib.util.spec_from_file_location("train_autoencoder", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def targets(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:16, 0:24]
    t = np.stack([280 + 3 * np.sin(xx / 4 + k / 3) + np.cos(yy / 5) for k in range(24)])
    t = (t + 0.2 * rng.standard_normal(t.shape)).astype(np.float32)
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t, {"units": "K"})},
        coords={
            "time": pd.date_range("2019-03-01", periods=24, freq="h"),
            "lat": np.linspace(50, 54, 16),
            "lon": np.linspace(-4, 2, 24),
        },
    )
    path = tmp_path / "targets.nc"
    ds.to_netcdf(path, engine="netcdf4")
    return path


def argv(targets: Path, out: Path) -> list[str]:
    return [
        f"out_dir={out}",
        f"data.targets={targets}",
        "data.variables=[t2m]",
        "data.train_period=[2019-03-01T00,2019-03-01T17]",
        "data.val_period=[2019-03-01T18,2019-03-01T23]",
        "model.block_out_channels=[8,16]",
        "model.norm_num_groups=8",
        "model.latent_channels=2",
        "loss.kl_warmup_samples=16",
        "stage1.patch=[8,8]",
        "stage1.total_samples=32",
        "stage1.quant_step=0.5",
        "stage2.patch=[16,24]",
        "stage2.total_samples=32",
        "stage2.lr=1e-4",
        "train.global_batch_size=8",
        "train.checkpoint_every_samples=16",
        "train.validate_every_samples=16",
        "train.log_every_samples=8",
        "train.ema_decay=0.9",
    ]


def test_two_stage_training_checkpoint_and_resume(targets, tmp_path, capsys):
    main = recipe().main
    out = tmp_path / "run"
    assert main(["--dry-run", *argv(targets, out)]) == 0
    assert "stage2" in capsys.readouterr().out
    assert main(argv(targets, out)) == 0
    model = load_autoencoder(out / "autoencoder", expect="vae")
    assert model.downsample_factor == 2 and model.config.latent_mean is not None
    assert model.config.input_stats["t2m"]["mean"] == pytest.approx(280, abs=2)
    records = [
        json.loads(line) for line in (out / "stage2" / "metrics.jsonl").read_text().splitlines()
    ]
    vals = [r for r in records if "val/rmse_t2m" in r]
    assert vals and all(np.isfinite(r["val/rmse_t2m"]) for r in vals)
    assert (out / "stage2" / "best" / "best.json").is_file()
    ckpts = sorted((out / "stage2" / "checkpoints").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-000000000016", "checkpoint-000000000032"]

    # Interrupted stage 2: only the first checkpoint survives; the rerun resumes from it.
    shutil.rmtree(out / "stage2" / "final")
    shutil.rmtree(ckpts[-1])
    shutil.rmtree(out / "autoencoder")
    assert main(argv(targets, out)) == 0
    marker = json.loads(
        (
            out / "stage2" / "checkpoints" / "checkpoint-000000000032" / "kmscale_checkpoint.json"
        ).read_text()
    )
    assert marker["samples_seen"] == 32
    assert load_autoencoder(out / "autoencoder").fingerprint()

    # A corrupt checkpoint is an error, never a silent restart.
    shutil.rmtree(out / "stage2" / "final")
    for f in (out / "stage2" / "checkpoints" / "checkpoint-000000000032").iterdir():
        if f.is_file() and f.suffix in (".safetensors", ".bin"):
            f.write_bytes(b"corrupt")
    with pytest.raises(CheckpointError):
        main(argv(targets, out))
