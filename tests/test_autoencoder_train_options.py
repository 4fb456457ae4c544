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
        {"t2m": (("time", "lat", "lon"), (280 + 3 * rng.standard_normal((n, *shape))).astype(np.float32)),
         "tp": (("time", "lat", "lon"), rng.gamma(0.3, 1.0, (n, *shape)).astype(np.float32))},
        coords={"time": pd.date_range("2019-03-01", periods=n, freq="h"),
                "lat": 50 + 0.25 * np.arange(shape[0]), "lon": -5 + 0.25 * np.arange(shape[1])},
    )


def test_single_stage_in_memory_with_shift_augmentation(tmp_path):
    cfg = AutoencoderConfig(
        out_dir=str(tmp_path / "ae"),
        data=DataConfig(shift_augment=0.5),
        model=ModelConfig(block_out_channels=[8, 8], latent_channels=2, norm_num_groups=8),
        loss=LossConfig(kl_warmup_samples=8),
        stage1=StageConfig(patch=[16, 24], total_samples=16),
        stage2=StageConfig(total_samples=0),  # one stage only
        train=TrainingSettings(global_batch_size=8, checkpoint_every_samples=8, log_every_samples=8),
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
    lp, la = power(smooth, x, post)["spectral"].mean(), amplitude(smooth, x, post)["spectral"].mean()
    assert float(lp) > 10 * float(la) > 0
    with pytest.raises(ValueError, match="spectral_mode"):
        VAELoss(spectral_mode="power")
