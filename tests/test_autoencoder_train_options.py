"""train_autoencoder on in-memory fields: one stage, level-shift augmentation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr

from kmscale.autoencoders import load_autoencoder
from kmscale.autoencoders.train import (
    AutoencoderConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    StageConfig,
    _shiftable,
    train_autoencoder,
)
from kmscale.training import TrainingSettings


def fields(n=12, shape=(16, 24)) -> xr.Dataset:
    rng = np.random.default_rng(0)
    return xr.Dataset(
        {
            "t2m": (
                ("time", "lat", "lon"),
                (280 + 3 * rng.standard_normal((n, *shape))).astype(np.float32),
            ),
            "tp": (("time", "lat", "lon"), rng.gamma(0.3, 1.0, (n, *shape)).astype(np.float32)),
        },
        coords={
            "time": pd.date_range("2019-03-01", periods=n, freq="h"),
            "lat": 50 + 0.25 * np.arange(shape[0]),
            "lon": -5 + 0.25 * np.arange(shape[1]),
        },
    )


def test_single_stage_in_memory_with_shift_augmentation(tmp_path):
    cfg = AutoencoderConfig(
        out_dir=str(tmp_path / "ae"),
        data=DataConfig(shift_augment=0.5),
        model=ModelConfig(block_out_channels=[8, 8], latent_channels=2, norm_num_groups=8),
        loss=LossConfig(kl_warmup_samples=8),
        stage1=StageConfig(patch=[16, 24], total_samples=16),
        stage2=StageConfig(total_samples=0),  # one stage only
        train=TrainingSettings(
            global_batch_size=8, checkpoint_every_samples=8, log_every_samples=8
        ),
    )
    ds = fields()
    model = train_autoencoder(cfg, ds)
    assert not (tmp_path / "ae" / "stage2").exists()
    loaded = load_autoencoder(tmp_path / "ae" / "autoencoder")
    assert list(loaded.variables) == ["t2m", "tp"]
    x = torch.from_numpy(np.stack([ds[v].values[:2] for v in ("t2m", "tp")], axis=1))
    assert loaded.decode(loaded.encode(x)).shape == x.shape
    # Precipitation (log1p transform) is never shifted; temperature is.
    assert model.config.input_stats["tp"]["transform"] == "log1p"
    assert _shiftable(model).tolist() == [1.0, 0.0]


def test_log_power_spectral_loss_sees_the_smallest_scales():
    import pytest
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from kmscale.autoencoders.losses import VAELoss

    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 24)
    post = DiagonalGaussianDistribution(torch.zeros(2, 4, 4, 6))
    smooth = torch.nn.functional.avg_pool2d(x, 2).repeat_interleave(2, -2).repeat_interleave(2, -1)
    amplitude = VAELoss(spectral_weight=1.0)
    power = VAELoss(spectral_weight=1.0, spectral_mode="log_power")
    assert float(power(x, x, post)["spectral"].max()) == 0.0
    # Removing the smallest scales costs far more in log power than in log amplitude.
    lp, la = (
        power(smooth, x, post)["spectral"].mean(),
        amplitude(smooth, x, post)["spectral"].mean(),
    )
    assert float(lp) > 10 * float(la) > 0
    with pytest.raises(ValueError, match="spectral_mode"):
        VAELoss(spectral_mode="power")


def test_mean_log_power_matches_the_batch_spectrum_not_each_line():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    from kmscale.autoencoders.losses import VAELoss, windowed_line_power

    torch.manual_seed(0)
    x = torch.randn(8, 2, 16, 24)
    post = DiagonalGaussianDistribution(torch.zeros(8, 4, 4, 6))
    loss = VAELoss(spectral_weight=1.0, spectral_mode="mean_log_power", spectral_floor=1e-6)
    assert float(loss(x, x, post)["spectral"].max()) < 1e-6
    # Other white noise of the same variance has (nearly) the same mean spectrum although
    # every line differs; a smoothed field lacks the small scales and is far off.
    other = loss(torch.randn(8, 2, 16, 24), x, post)["spectral"]
    smooth = torch.nn.functional.avg_pool2d(x, 2).repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert other.shape == (8,) and float(loss(smooth, x, post)["spectral"][0]) > 20 * float(
        other[0]
    )
    # The line spectrum is detrended: a plane has no power at all.
    plane = torch.arange(24.0).expand(1, 1, 16, 24) + torch.arange(16.0)[:, None]
    assert float(windowed_line_power(plane, -1).max()) < 1e-8
    assert float(windowed_line_power(plane, -2).max()) < 1e-8


def test_decoder_stage_trains_the_decoder_only(tmp_path):
    from kmscale.autoencoders.train import DecoderStageConfig

    cfg = AutoencoderConfig(
        out_dir=str(tmp_path / "ae"),
        model=ModelConfig(block_out_channels=[8, 8], latent_channels=2, norm_num_groups=8),
        loss=LossConfig(kl_warmup_samples=8),
        stage1=StageConfig(patch=[16, 24], total_samples=16),
        stage2=StageConfig(total_samples=0),
        decoder=DecoderStageConfig(patch=[16, 24], total_samples=16, lr=1e-2),
        train=TrainingSettings(
            global_batch_size=8, checkpoint_every_samples=8, log_every_samples=8
        ),
    )
    train_autoencoder(cfg, fields()[["t2m"]])
    before = load_autoencoder(tmp_path / "ae" / "stage1" / "final").state_dict()
    after = load_autoencoder(tmp_path / "ae" / "autoencoder").state_dict()
    assert (tmp_path / "ae" / "decoder" / "final" / "config.json").is_file()
    enc = [k for k in before if ".encoder." in k or "quant_conv" in k and "post_quant" not in k]
    dec = [k for k in before if ".decoder." in k]
    assert enc and dec
    assert all(torch.equal(before[k], after[k]) for k in enc)
    assert any(not torch.equal(before[k], after[k]) for k in dec)
    # Rerunning the same command finds every stage done and trains nothing.
    again = train_autoencoder(cfg, fields()[["t2m"]]).state_dict()
    assert all(torch.equal(after[k], again[k]) for k in dec)
