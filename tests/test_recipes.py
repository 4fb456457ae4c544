"""Two-step runs of the regression and LDM recipes with checkpoint and resume (EMA
included), a corrupt checkpoint, and a two-process CPU launch with the same schedule."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _downscaling_data import write_files  # noqa: E402

from kmscale.errors import CheckpointError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = {
    "unet": {"block_out_channels": [8, 16], "norm_num_groups": 4, "layers_per_block": 1},
    "train": {
        "global_batch_size": 4,
        "checkpoint_every_samples": 4,
        "log_every_samples": 4,
        "lr": 1e-3,
        "ema_decay": 0.9,
        "mixed_precision": "no",
    },
}


def _config(tmp: Path, files: dict, **extra) -> Path:
    cfg = {
        "data": {
            "targets": str(files["targets"]),
            "predictors": str(files["predictors"]),
            "static": str(files["static"]),
            "train_period": ["2019-03-01T00", "2019-03-01T23"],
            "val_period": ["2019-03-02T00", "2019-03-02T05"],
        },
        **json.loads(json.dumps(TINY)),
    }
    for key, value in extra.items():
        cfg.setdefault(key, {}) if isinstance(value, dict) else None
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path = tmp / f"cfg_{len(list(tmp.glob('cfg_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_files(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def regression_bundle(files, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reg")
    cfg = _config(tmp, files, out_dir=str(tmp / "run"), train={"total_samples": 8})
    assert _recipe("train_regression").main(["--config", str(cfg)]) == 0
    return tmp / "run" / "bundle"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next(path.glob("*.safetensors")))


def test_dry_run_prints_resolved_config(files, tmp_path, capsys):
    cfg = _config(tmp_path, files, out_dir=str(tmp_path / "run"))
    assert (
        _recipe("train_regression").main(["--config", str(cfg), "--dry-run", "train.lr=0.5"]) == 0
    )
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["train"]["lr"] == 0.5 and out["data"]["targets"] == str(files["targets"])
    assert not (tmp_path / "run").exists()


def test_regression_two_steps_then_resume_matches_uninterrupted(files, tmp_path):
    recipe = _recipe("train_regression")
    straight = _config(tmp_path, files, out_dir=str(tmp_path / "a"), train={"total_samples": 8})
    assert recipe.main(["--config", str(straight)]) == 0
    # Same run, stopped after one step (checkpoint), then resumed to two steps.
    first = _config(tmp_path, files, out_dir=str(tmp_path / "b"), train={"total_samples": 4})
    assert recipe.main(["--config", str(first)]) == 0
    assert (tmp_path / "b" / "checkpoints" / "checkpoint-000000000004").is_dir()
    assert recipe.main(["--config", str(first), "train.total_samples=8"]) == 0
    metrics = [
        json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(m["samples_seen"] for m in metrics) == 8
    a, b = _weights(tmp_path / "a" / "final"), _weights(tmp_path / "b" / "final")  # EMA weights
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    bundle = json.loads((tmp_path / "b" / "bundle" / "bundle.json").read_text())
    assert bundle["predictors"] == ["t2m"] and bundle["static_fields"] == [
        "orography",
        "land_sea_mask",
    ]
    assert (
        bundle["conditioning"]["cond_channels"] == 1 + 2 + 4
    )  # t2m, 2 static, 4 position encodings


def test_ldm_two_steps_resume_and_bundle(files, tmp_path, regression_bundle):
    recipe = _recipe("train_ldm")
    small_val = {"members": 2, "steps": 2, "max_times": 2}
    straight = _config(
        tmp_path,
        files,
        out_dir=str(tmp_path / "a"),
        regression_bundle=str(regression_bundle),
        train={"total_samples": 8},
        validation=small_val,
    )
    assert recipe.main(["--config", str(straight)]) == 0
    first = _config(
        tmp_path,
        files,
        out_dir=str(tmp_path / "b"),
        regression_bundle=str(regression_bundle),
        train={"total_samples": 4},
        validation=small_val,
    )
    assert recipe.main(["--config", str(first)]) == 0
    assert recipe.main(["--config", str(first), "train.total_samples=8"]) == 0
    a, b = _weights(tmp_path / "a" / "final"), _weights(tmp_path / "b" / "final")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    records = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert (
        any("val/crps" in r for r in records) and (tmp_path / "b" / "best" / "best.json").is_file()
    )
    from kmscale.diffusion.bundle import ModelBundle

    bundle = ModelBundle.load(tmp_path / "b" / "bundle")
    assert bundle.diffusion is not None and len(bundle.edm.residual_scale) == 1


def test_corrupt_checkpoint_is_an_error_not_a_restart(files, tmp_path):
    recipe = _recipe("train_regression")
    cfg = _config(tmp_path, files, out_dir=str(tmp_path / "c"), train={"total_samples": 4})
    assert recipe.main(["--config", str(cfg)]) == 0
    ckpt = tmp_path / "c" / "checkpoints" / "checkpoint-000000000004"
    for f in ckpt.glob("*.safetensors"):
        f.write_bytes(b"garbage")
    for f in ckpt.glob("*.bin"):
        f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        recipe.main(["--config", str(cfg), "train.total_samples=8"])


@pytest.mark.slow
def test_two_process_cpu_launch_follows_the_same_schedule(files, tmp_path):
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    one = _config(
        tmp_path, files, out_dir=str(tmp_path / "one"), train={"total_samples": 8, "ema_decay": 0.0}
    )
    assert _recipe("train_regression").main(["--config", str(one)]) == 0
    two = _config(
        tmp_path, files, out_dir=str(tmp_path / "two"), train={"total_samples": 8, "ema_decay": 0.0}
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            accelerate,
            "launch",
            "--num_processes",
            "2",
            "--cpu",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "29517",
            str(ROOT / "recipes" / "train_regression.py"),
            "--config",
            str(two),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    def rec(p):
        lines = (p / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x) for x in lines if '"loss"' in x]

    r1, r2 = rec(tmp_path / "one"), rec(tmp_path / "two")
    assert [r["samples_seen"] for r in r1] == [r["samples_seen"] for r in r2]
    a, b = _weights(tmp_path / "one" / "final"), _weights(tmp_path / "two" / "final")
    for name in a:  # same global batches; only the floating-point order of the reduction differs
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4)


def test_ldm_on_patches_with_global_context_samples_patchwise(files, tmp_path, regression_bundle):
    from kmscale.data.readers import open_dataset
    from kmscale.data.store import open_store
    from kmscale.diffusion.bundle import ModelBundle
    from kmscale.diffusion.pipeline import DownscalingPipeline, SamplerSettings

    cfg = _config(
        tmp_path,
        files,
        out_dir=str(tmp_path / "p"),
        regression_bundle=str(regression_bundle),
        train={"total_samples": 8},
        validation={"members": 2, "steps": 2, "max_times": 1},
        patch=[8, 8],
        context_size=[2, 3],
    )
    assert _recipe("train_ldm").main(["--config", str(cfg)]) == 0
    bundle = ModelBundle.load(tmp_path / "p" / "bundle")
    assert bundle.edm.train_patch == [8, 8] and bundle.edm.context_size == [2, 3]
    pred = open_dataset(files["predictors"]).isel(time=slice(30, 31))
    out = DownscalingPipeline(bundle).run(
        pred, tmp_path / "e.zarr", SamplerSettings(members=2, steps=2), progress=False
    )
    assert open_store(out)["t2m"].shape == (1, 2, 16, 24)


def test_ldm_with_cross_attention_backbone(files, tmp_path, regression_bundle):
    from kmscale.diffusion.bundle import ModelBundle
    from kmscale.diffusion.networks import CrossAttentionUNet

    cfg = _config(
        tmp_path,
        files,
        out_dir=str(tmp_path / "x"),
        regression_bundle=str(regression_bundle),
        train={"total_samples": 4},
        validation={"members": 2, "steps": 2, "max_times": 1},
        cross_attention=True,
        unet={"block_out_channels": [8, 16], "norm_num_groups": 4},
    )
    assert _recipe("train_ldm").main(["--config", str(cfg)]) == 0
    assert isinstance(ModelBundle.load(tmp_path / "x" / "bundle").diffusion, CrossAttentionUNet)


def test_ldm_with_cross_fitted_residuals(files, tmp_path, regression_bundle):
    """residual_folds=2: two fold regressions, each predicting the block it did not see."""
    import numpy as np

    from kmscale.diffusion.bundle import ModelBundle

    cfg = _config(
        tmp_path,
        files,
        out_dir=str(tmp_path / "f"),
        regression_bundle=str(regression_bundle),
        train={"total_samples": 4},
        validation={"members": 2, "steps": 2, "max_times": 1},
        residual_folds=2,
    )
    assert _recipe("train_ldm").main(["--config", str(cfg)]) == 0
    folds = tmp_path / "f" / "folds"
    base = ModelBundle.load(regression_bundle)
    for k in range(2):
        fold = ModelBundle.load(folds / f"fold{k}" / "bundle")
        # Same autoencoder (and pixel statistics) as the bundle; half of the training times.
        assert fold.autoencoder.fingerprint() == base.autoencoder.fingerprint()
        assert fold.extra["regression"]["config"]["train"]["total_samples"] == 4  # 8 * (K-1)/K
    scale = ModelBundle.load(tmp_path / "f" / "bundle").edm.residual_scale
    assert np.all(np.isfinite(scale)) and min(scale) > 0


def test_ldm_decoder_refinement_resumes_and_keeps_the_encoder(files, tmp_path, regression_bundle):
    """decoder_refinement: the bundle's decoder is fine-tuned on generated latents (two steps,
    interrupted and resumed = uninterrupted); the encoder, and so every latent, is unchanged."""
    from kmscale.autoencoders.vae import VAEAutoencoder
    from kmscale.diffusion.bundle import ModelBundle
    from kmscale.errors import ConfigError

    torch.manual_seed(0)
    vae = VAEAutoencoder(
        variables=["t2m"],
        input_stats={"t2m": {"mean": 280.0, "std": 3.0}},
        block_out_channels=(8, 8),
        norm_num_groups=4,
        latent_channels=2,
    )
    vae.set_latent_stats([0.0, 0.0], [1.0, 1.0])
    vae.save_pretrained(tmp_path / "vae")
    reg = _config(
        tmp_path,
        files,
        out_dir=str(tmp_path / "reg"),
        autoencoder=str(tmp_path / "vae"),
        train={"total_samples": 4},
    )
    assert _recipe("train_regression").main(["--config", str(reg)]) == 0
    recipe = _recipe("train_ldm")
    refine = {"total_samples": 8, "generated_members": 2, "steps": 2, "max_times": 6}
    common = {
        "regression_bundle": str(tmp_path / "reg" / "bundle"),
        "train": {"total_samples": 4},
        "validation": {"members": 2, "steps": 2, "max_times": 2},
    }
    straight = _config(
        tmp_path, files, out_dir=str(tmp_path / "a"), decoder_refinement=refine, **common
    )
    assert recipe.main(["--config", str(straight)]) == 0
    first = _config(
        tmp_path,
        files,
        out_dir=str(tmp_path / "b"),
        decoder_refinement={**refine, "total_samples": 4},
        **common,
    )
    assert recipe.main(["--config", str(first)]) == 0
    assert recipe.main(["--config", str(first), "decoder_refinement.total_samples=8"]) == 0
    a, b = (_weights(tmp_path / r / "decoder_refinement" / "final") for r in ("a", "b"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    base, bundle = (
        ModelBundle.load(tmp_path / "reg" / "bundle"),
        ModelBundle.load(tmp_path / "b" / "bundle"),
    )
    assert bundle.autoencoder.fingerprint() != base.autoencoder.fingerprint()
    assert bundle.autoencoder.encoder_fingerprint() == base.autoencoder.encoder_fingerprint()
    record = bundle.extra["ldm"]["decoder_refinement"]
    assert (
        record["samples_seen"] == 8
        and record["autoencoder_after"] == bundle.autoencoder.fingerprint()
    )
    assert (
        record["validation_before"]["val/crps"] > 0
        and "val/power_ratio_1" in record["validation_after"]
    )
    # Generated latents of another setting are not silently reused.
    with pytest.raises(ConfigError, match="generated latents"):
        recipe.main(
            [
                "--config",
                str(first),
                "decoder_refinement.total_samples=12",
                "decoder_refinement.generated_members=3",
            ]
        )
    with pytest.raises(ConfigError, match="regression_mean"):
        recipe.main(["--config", str(first), "decoder_refinement.regression_mean=oof"])
    # Pixel space has no decoder to refine.
    pixel = _config(
        tmp_path,
        files,
        out_dir=str(tmp_path / "p"),
        decoder_refinement=refine,
        **{**common, "regression_bundle": str(regression_bundle)},
    )
    with pytest.raises(ConfigError, match="trainable decoder"):
        recipe.main(["--config", str(pixel)])
