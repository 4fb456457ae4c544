"""Training examples streamed from a latent store: memory independent of the period's length.

:func:`~kmscale.conditioning.dataset.build_dataset` holds every example of a period in
memory (latents and predictors on the latent grid: T x C x h x w floats), which a year
of hourly latents of a km-scale grid does not fit. :class:`StreamingExamples` holds
only what is per period and small (the store's time index, the (T, E) embeddings, the
static channels and the lazily opened stores) and reads each example when the
DataLoader asks for it: the latents of one time (lazy zarr read of the chunk holding
it, optionally only a random patch of it) and the coarse predictors of that time,
interpolated onto the latent grid. In DataLoader worker processes
(``train.num_workers``) the reads overlap with the training step.

Example ``j`` is time ``j mod T``, patch draw ``j div T``: with ``patches_per_time``
draws per time, an epoch visits every time that many times, each at its own random
window. The window of example ``j`` is drawn by a generator seeded with ``(seed, j)``, so
it does not depend on the worker that reads it or on resumption.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch.utils.data import Dataset

from kmscale.autoencoders.latent_store import read_latents
from kmscale.conditioning.dataset import ConditioningSpec, latent_grid, pair_times
from kmscale.data.patches import random_patch
from kmscale.errors import AlignmentError, GridError


class StreamingExamples(Dataset):
    """Regression examples read time by time from a latent store.

    Args:
        spec: conditioning spec (predictor and static channels, embeddings).
        latents: the latent store, opened lazily (``open_latents``).
        predictors: predictor dataset (time, lat_c, lon_c), lazy; paired with the store's
            times by valid time.
        static: static fields on the target grid, or None.
        lat, lon: 1-D target grid.
        times: (T,) valid times of the targets to train on: each must be in the store; those
            the predictors lack are left out (as ``build_dataset`` pairs them).
        patch: (th, tw) latent pixels of a random window per example; None: whole field.
        patches_per_time: examples per time (windows drawn per epoch and time).
        seed: base seed of the windows.
        path: the store's path (error messages).

    Items, as :class:`~kmscale.conditioning.dataset.DownscalingDataset`'s: ``cond``
    (C_p + C_s, th, tw) float32, ``emb`` (E,), ``z`` (C_z, th, tw) normalized latents,
    ``index`` the example's index.
    """

    def __init__(
        self,
        spec: ConditioningSpec,
        latents: xr.Dataset,
        predictors: xr.Dataset,
        static: xr.Dataset | None,
        lat: np.ndarray,
        lon: np.ndarray,
        times: np.ndarray,
        *,
        patch: Sequence[int] | None = None,
        patches_per_time: int = 1,
        seed: int = 0,
        path: str | Path = "latent store",
    ):
        iz = store_indices(latents, times, path)
        it, ip = pair_times(np.asarray(times), predictors["time"].values)
        self.spec, self.path = spec, str(path)
        self.latents = latents.isel(time=iz[it])
        self.predictors = predictors.isel(time=ip)
        self.time = self.predictors["time"].values
        self.llat, self.llon = latent_grid(lat, lon, spec.factor)
        self.static = spec.static_tensor(static, lat, lon)  # (C_s, h, w): shared, small
        self.emb = spec.embedding(self.predictors)  # (T, E)
        shape = (self.llat.size, self.llon.size)
        if tuple(latents.sizes[d] for d in ("latent_y", "latent_x")) != shape:
            raise GridError(
                f"{self.path}: expected latents on the latent grid {shape}, found "
                f"{(latents.sizes['latent_y'], latents.sizes['latent_x'])}"
            )
        self.patch = None if patch is None else (int(patch[0]), int(patch[1]))
        if self.patch is not None and (self.patch[0] > shape[0] or self.patch[1] > shape[1]):
            raise GridError(
                f"data.stream_patch: expected a window within the latent grid {shape}, found "
                f"{self.patch}"
            )
        self.shape, self.per_time, self.seed = shape, int(patches_per_time), int(seed)

    def __len__(self) -> int:
        return self.time.size * self.per_time

    def window(self, j: int) -> tuple[int, slice, slice]:
        """(time index, latent rows, latent cols) of example ``j``."""
        t = j % self.time.size
        if self.patch is None:
            return t, slice(0, self.shape[0]), slice(0, self.shape[1])
        sy, sx = random_patch(self.shape, self.patch, np.random.default_rng([self.seed, j]))
        return t, sy, sx

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        t, sy, sx = self.window(int(j))
        # In this thread: a forked DataLoader worker inherits dask's thread pool without
        # its threads, and a lazy read through it would wait forever.
        with dask.config.set(scheduler="synchronous"):
            # only the window is read (``read_latents`` loads what the lazy selection holds)
            window = self.latents.isel(latent_y=sy, latent_x=sx)
            z = read_latents(window, slice(t, t + 1), self.path)[0]
            pred = self.spec.predictors.stack(
                self.predictors.isel(time=[t]),
                self.llat[sy],
                self.llon[sx],
                self.spec.interpolation,
            )[0]
        return {
            "cond": torch.cat([pred, self.static[:, sy, sx]], dim=0),
            "emb": self.emb[t],
            "z": torch.from_numpy(z),
            "index": torch.tensor(int(j)),
        }


def store_indices(latents: xr.Dataset, times: np.ndarray, path: str | Path) -> np.ndarray:
    """Indices into the latent store of the valid times ``times``.

    Raises:
        AlignmentError: a time the store does not hold.
    """
    index = pd.Index(latents["time"].values).get_indexer(np.asarray(times))
    if (index < 0).any():
        missing = np.asarray(times)[index < 0]
        raise AlignmentError(
            f"{path}: expected latents at every target valid time, found {len(missing)} missing "
            f"(first {np.datetime_as_string(missing[0], unit='h')}); re-run `kmscale encode` "
            "over the period"
        )
    return index
