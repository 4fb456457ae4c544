"""Synthetic tp + companion fields for the pseudo-precipitation tests.

The companion c is a smooth random field; tp = 4 max(c - 0.3, 0)^1.5 mm h-1, so rain is
a monotone function of c where c > 0.3 and zero elsewhere: a per-pixel encoder can
represent it exactly, and training a few hundred samples gets close.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage


def synthetic_fields(
    n_times: int = 24, shape: tuple[int, int] = (16, 16), seed: int = 0
) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    c = ndimage.gaussian_filter(
        rng.standard_normal((n_times, *shape)), sigma=(0, 2, 2), mode="wrap"
    )
    c = (c / c.std()).astype(np.float32)
    tp = (4.0 * np.maximum(c - 0.3, 0.0) ** 1.5).astype(np.float32)
    time = pd.date_range("2024-01-01", periods=n_times, freq="h")
    dims = ("time", "lat", "lon")
    coords = {
        "time": time,
        "lat": np.linspace(10, 10 + 0.25 * (shape[0] - 1), shape[0]),
        "lon": np.linspace(70, 70 + 0.25 * (shape[1] - 1), shape[1]),
    }
    return xr.Dataset({"tp": (dims, tp, {"units": "mm h-1"}), "cmp": (dims, c)}, coords=coords)


def train_small(tmp_path, fields: xr.Dataset | None = None, total_samples: int = 800, **model):
    """A briefly trained PseudoPrecipMLP on the synthetic fields (and its scores)."""
    from kmscale.autoencoders.pseudo_precip_train import (
        PPDataConfig,
        PPModelConfig,
        PseudoPrecipConfig,
        train_pseudo_precip,
    )
    from kmscale.training import TrainingSettings

    fields = synthetic_fields() if fields is None else fields
    cfg = PseudoPrecipConfig(
        out_dir=str(tmp_path / "pp"),
        data=PPDataConfig(
            companions=["cmp"],
            train_period=["2024-01-01T00", "2024-01-01T15"],
            val_period=["2024-01-01T16", "2024-01-01T23"],
        ),
        model=PPModelConfig(**{"hidden_width": 16, **model}),
        train=TrainingSettings(
            total_samples=total_samples,
            global_batch_size=8,
            lr=1e-2,
            ema_decay=0.9,
            checkpoint_every_samples=total_samples,
            log_every_samples=total_samples,
            validate_every_samples=total_samples // 2,
            resume="never",
        ),
    )
    return train_pseudo_precip(cfg, fields)
