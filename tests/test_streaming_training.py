"""Streaming training examples (kmscale.diffusion.streaming): the same examples as the
in-memory dataset, windows that are crops of them, and a regression run that streams."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _downscaling_data import synthetic  # noqa: E402

from kmscale.autoencoders.latent_store import encode_to_store, open_latents  # noqa: E402
from kmscale.autoencoders.vae import VAEAutoencoder  # noqa: E402
from kmscale.conditioning.dataset import ConditioningSpec, build_dataset  # noqa: E402
from kmscale.diffusion.streaming import StreamingExamples  # noqa: E402
from kmscale.errors import AlignmentError, ConfigError, GridError  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """12 hourly 16 x 24 targets, their latents (8 x 12, factor 2) in a store, a spec."""
    tmp = tmp_path_factory.mktemp("stream")
    targets, coarse, static = synthetic(n=12)
    torch.manual_seed(0)
    ae = VAEAutoencoder(
        variables=["t2m"],
        input_stats={"t2m": {"mean": 280.0, "std": 5.0}},
        block_out_channels=(8, 16),
        norm_num_groups=8,
        latent_channels=2,
    ).eval()
    ae.save_pretrained(tmp / "ae")
    store = encode_to_store(ae, targets, tmp / "lat.zarr", chunk=4, progress=False)
    lat, lon = targets["lat"].values, targets["lon"].values
    spec = ConditioningSpec.from_data(coarse, static, lat, lon, ae.downsample_factor)
    return {
        "targets": targets, "coarse": coarse, "static": static, "ae": ae, "tmp": tmp,
        "store": store, "spec": spec, "lat": lat, "lon": lon,
    }  # fmt: skip


def _both(s, **kwargs):
    from kmscale.diffusion.train import target_latents

    times = s["targets"]["time"].values[2:10]
    part = s["targets"].isel(time=slice(2, 10))
    z = target_latents(s["ae"], part, str(s["store"]))
    args = (s["spec"], s["coarse"], s["static"], s["lat"], s["lon"])
    memory = build_dataset(*args, z, times)
    streamed = StreamingExamples(
        s["spec"], open_latents(s["store"], s["ae"]), *args[1:], times, path=s["store"], **kwargs
    )
    return memory, streamed


def test_streamed_examples_are_the_in_memory_ones(setup):
    memory, streamed = _both(setup)
    assert len(streamed) == len(memory) == 8
    np.testing.assert_array_equal(streamed.time, memory.time)
    for i in range(len(memory)):
        a, b = memory[i], streamed[i]
        for key in ("cond", "emb", "z"):
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


def test_windows_are_seeded_crops_of_the_examples(setup):
    memory, streamed = _both(setup, patch=(4, 6), patches_per_time=3, seed=5)
    assert len(streamed) == 3 * len(memory)
    windows = {(w[1].start, w[2].start) for w in map(streamed.window, range(len(streamed)))}
    assert len(windows) > 1  # not one fixed window
    for j in (0, 9, 23):
        t, sy, sx = streamed.window(j)
        assert (t, sy, sx) == streamed.window(j) and t == j % len(memory)
        item = streamed[j]
        assert item["z"].shape == (2, 4, 6)
        torch.testing.assert_close(item["z"], memory[t]["z"][:, sy, sx], rtol=0, atol=0)
        torch.testing.assert_close(item["cond"], memory[t]["cond"][:, sy, sx], rtol=0, atol=1e-6)


def test_bad_streaming_inputs(setup):
    s = setup
    later = s["targets"]["time"].values + np.timedelta64(30, "D")
    with pytest.raises(AlignmentError, match="expected latents at every target valid time"):
        StreamingExamples(
            s["spec"], open_latents(s["store"]), s["coarse"], None, s["lat"], s["lon"], later
        )
    with pytest.raises(GridError, match="window within the latent grid"):
        _both(s, patch=(9, 4))


def _tiny(s, workers: int = 0, **data) -> dict:
    """The data, U-Net and training settings shared by the tiny regression and LDM runs."""
    from kmscale.diffusion.networks import UNetSettings
    from kmscale.diffusion.train import DataSettings
    from kmscale.training import TrainingSettings

    return {
        "data": DataSettings(
            **{"latents": str(s["store"]), "train_period": ["2019-03-01T00", "2019-03-01T07"]}
            | data
        ),
        "unet": UNetSettings(block_out_channels=[8, 16], norm_num_groups=4, layers_per_block=1),
        "train": TrainingSettings(
            global_batch_size=4, total_samples=8, checkpoint_every_samples=8,
            log_every_samples=8, lr=1e-3, mixed_precision="no", num_workers=workers,
        ),
    }  # fmt: skip


def _final_weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(next((out / "final").glob("*.safetensors")))


def _train(s, out: Path, workers: int = 0, **data):
    from kmscale.diffusion.train import RegressionConfig, TrainingData, train_regression

    cfg = RegressionConfig(
        out_dir=str(out), autoencoder=str(s["tmp"] / "ae"), **_tiny(s, workers, **data)
    )
    train_regression(cfg, TrainingData(s["targets"], s["coarse"], s["static"]))
    return _final_weights(out)


@pytest.mark.slow
def test_streamed_regression_trains_like_the_in_memory_one(setup, tmp_path):
    memory = _train(setup, tmp_path / "memory")
    streamed = _train(setup, tmp_path / "streamed", stream=True)
    for k in memory:
        torch.testing.assert_close(streamed[k], memory[k], rtol=0, atol=0, msg=k)
    _train(  # DataLoader worker processes read the store
        setup, tmp_path / "patches", workers=2, stream=True, stream_patch=[4, 8],
        patches_per_time=2,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="data.stream: expected data.latents"):
        _train(setup, tmp_path / "none", stream=True, latents=None)


def _train_ldm(s, regression_bundle: Path, out: Path, **data):
    from kmscale.diffusion.train import LDMConfig, TrainingData, train_ldm

    cfg = LDMConfig(out_dir=str(out), regression_bundle=str(regression_bundle), **_tiny(s, **data))
    train_ldm(cfg, TrainingData(s["targets"], s["coarse"], s["static"]))
    return _final_weights(out)


@pytest.mark.slow
def test_streamed_diffusion_trains_like_the_in_memory_one(setup, tmp_path):
    """The LDM stage streams too: ẑ comes from the regression batch by batch, so the
    weights match the in-memory run's (up to the regression's batch-size rounding)."""
    _train(setup, tmp_path / "reg")
    bundle = tmp_path / "reg" / "bundle"
    memory = _train_ldm(setup, bundle, tmp_path / "memory")
    streamed = _train_ldm(setup, bundle, tmp_path / "streamed", stream=True)
    for k in memory:
        torch.testing.assert_close(streamed[k], memory[k], rtol=1e-4, atol=1e-5, msg=k)
    with pytest.raises(ConfigError, match="residual_folds 0 or 1"):
        from kmscale.diffusion.train import DataSettings, LDMConfig, TrainingData, train_ldm

        train_ldm(
            LDMConfig(
                out_dir=str(tmp_path / "folds"),
                regression_bundle=str(bundle),
                data=DataSettings(latents=str(setup["store"]), stream=True,
                                  train_period=["2019-03-01T00", "2019-03-01T07"]),
                residual_folds=2,
            ),
            TrainingData(setup["targets"], setup["coarse"], setup["static"]),
        )  # fmt: skip
