"""Random training patches from a zarr store or an xarray Dataset, for torch DataLoaders.

    ds = PatchDataset("targets.zarr", ["t2m", "u10", "v10", "tp"], patch=(256, 256),
                      samples_per_epoch=10_000, seed=0, weight_var="tp")
    loader = DataLoader(ds, batch_size=8, num_workers=2, persistent_workers=True)
    for batch in loader:
        x = batch["x"]            # float32 (B, C, 256, 256), physical units
        rows = batch["rows"]      # int64 (B, 2): [start, stop) of each patch along lat / y

Each sample ``i`` of epoch ``e`` is drawn by its own generator seeded with
``(seed, e, i)``, so the patches do not depend on how samples are spread over workers
or on their order; call :meth:`PatchDataset.set_epoch` between epochs for new patches.

Only the patch is read: from a zarr store the dataset opens the arrays itself (once
per process, after the DataLoader forked or spawned its workers) and slices them, which
decompresses only the chunks the patch touches; an in-memory or dask-backed
``xr.Dataset`` is sliced with ``isel``.

Weighting toward rare values (``weight_var``): one pass over that variable counts, in
cells of ``weight_cell`` x ``weight_cell`` pixels and per time, the fraction of pixels
above ``weight_threshold``; a patch is then drawn at time t and around a cell with
probability proportional to ``weight_floor + fraction`` (see :func:`random_patch`), so
e.g. heavy-rain patches are over-represented while dry regions stay reachable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
import zarr

from kmscale.data.patches import _pair, random_patch
from kmscale.errors import GridError, MissingValueError, SchemaError


class PatchDataset(torch.utils.data.Dataset):
    """Random (C, ph, pw) float32 patches of ``variables`` from a (time, y, x) dataset.

    Args:
        ds: path of a zarr store (read directly, patch by patch) or an ``xr.Dataset``
            whose variables are (time, <y>, <x>) with the same dims; a dataset without
            ``time`` is treated as one time step.
        variables: the channels, in order.
        patch: patch size (ph, pw) in pixels.
        samples_per_epoch: length of the dataset.
        seed: base seed of the patch positions.
        weight_var: variable whose rare large values attract patches (None: uniform).
        weight_threshold: value above which a pixel of ``weight_var`` counts as rare
            (in its units, e.g. 1 mm h-1 for ``tp``).
        weight_floor: weight of a cell without any rare pixel.
        weight_cell: cell size (px) of the weight map (cells from the origin, the last
            ones cut at the field's edge).
        allow_nan: return patches containing NaN (masked data) instead of raising.

    Each item is a dict: ``x`` float32 (C, ph, pw); ``time`` int64 index; ``rows`` and
    ``cols`` int64 (2,) [start, stop) of the patch. :meth:`patch_coords` turns them into
    lat/lon (or y/x) coordinates.

    Raises:
        SchemaError: a variable is missing or has other dims than the first one.
        GridError: the patch is larger than the field.
    """

    def __init__(
        self,
        ds: str | Path | xr.Dataset,
        variables: Sequence[str],
        patch: int | Sequence[int] = (256, 256),
        samples_per_epoch: int = 1024,
        seed: int = 0,
        weight_var: str | None = None,
        *,
        weight_threshold: float = 1.0,
        weight_floor: float = 0.05,
        weight_cell: int = 64,
        allow_nan: bool = False,
    ):
        self.variables = list(variables)
        self.patch = _pair(patch, "patch")
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.epoch = 0
        self.allow_nan = allow_nan
        if isinstance(ds, (str, Path)):
            self.path: Path | None = Path(ds)
            from kmscale.data.store import open_store

            meta = open_store(self.path)  # refuses incomplete or foreign stores
        else:
            self.path = None
            meta = ds
        self._xr = None if self.path is not None else ds
        self._where = str(self.path) if self.path is not None else "dataset"
        missing = [v for v in self.variables if v not in meta.data_vars]
        if missing:
            raise SchemaError(
                f"{self._where}: expected variables {self.variables}, missing {missing} "
                f"(found {sorted(meta.data_vars)})"
            )
        dims = meta[self.variables[0]].dims
        for v in self.variables:
            if meta[v].dims != dims:
                raise SchemaError(
                    f"{self._where}: variable {v!r} expected dims {dims}, found {meta[v].dims}"
                )
        if len(dims) not in (2, 3) or (len(dims) == 3 and dims[0] != "time"):
            raise SchemaError(f"{self._where}: expected dims (time, y, x) or (y, x), found {dims}")
        self.has_time = len(dims) == 3
        self.dims = dims
        self.n_times = meta.sizes["time"] if self.has_time else 1
        self.shape = (meta.sizes[dims[-2]], meta.sizes[dims[-1]])
        if self.patch[0] > self.shape[0] or self.patch[1] > self.shape[1]:
            raise GridError(
                f"{self._where}: expected a patch within the field {self.shape}, "
                f"found patch {self.patch}"
            )
        self._coords = {d: meta[d].values for d in dims[-2:] if d in meta.coords}
        self._weights = None
        self._cell = int(weight_cell)
        if weight_var is not None:
            self._weights = self._weight_map(
                meta, weight_var, weight_threshold, weight_floor, weight_cell
            )
        self._arrays: dict[str, Any] | None = None
        self._pid: int | None = None

    # ------------------------------------------------------------------ set-up
    def _weight_map(
        self, meta: xr.Dataset, name: str, threshold: float, floor: float, cell: int
    ) -> np.ndarray:
        """(n_times, h, w) sampling weights: floor + fraction of pixels above threshold per cell."""
        if name not in meta.data_vars:
            raise SchemaError(
                f"{self._where}: weight_var expected among {sorted(meta.data_vars)}, found {name!r}"
            )
        var = meta[name]
        if not self.has_time:
            var = var.expand_dims("time")
        ydim, xdim = var.dims[-2:]
        above = (var > threshold).astype(np.float32)
        # cells of weight_cell px from the origin, the last ones cut at the edge; one
        # streaming pass over the variable (dask)
        frac = (
            above.coarsen({ydim: cell, xdim: cell}, boundary="pad").mean().values
        )  # NaN pads skipped
        return floor + np.nan_to_num(frac, nan=0.0)

    def _open(self) -> dict[str, Any]:
        """Per-process handles: zarr arrays for a store, DataArrays otherwise."""
        if self._arrays is None or self._pid != os.getpid():
            if self.path is not None:
                group = zarr.open_group(str(self.path), mode="r")
                self._arrays = {v: group[v] for v in self.variables}
            else:
                self._arrays = {v: self._xr[v] for v in self.variables}
            self._pid = os.getpid()
        return self._arrays

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None  # reopened in the worker
        return state

    # ------------------------------------------------------------------ sampling
    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of patches (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def patch_slices(self, index: int) -> tuple[int, slice, slice]:
        """(time index, row slice, col slice) of sample ``index`` in the current epoch."""
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(f"sample {index} outside 0..{self.samples_per_epoch - 1}")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self._weights is None:
            t = int(rng.integers(self.n_times))
            sy, sx = random_patch(self.shape, self.patch, rng)
        else:
            totals = self._weights.sum(axis=(1, 2))
            t = int(rng.choice(self.n_times, p=totals / totals.sum()))
            sy, sx = random_patch(
                self.shape, self.patch, rng, weights=self._weights[t], cell=self._cell
            )
        return t, sy, sx

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        t, sy, sx = self.patch_slices(index)
        arrays = self._open()
        channels = []
        for name in self.variables:
            arr = arrays[name]
            if self.path is not None:
                data = arr[t, sy, sx] if self.has_time else arr[sy, sx]
            else:
                sel = {self.dims[-2]: sy, self.dims[-1]: sx}
                if self.has_time:
                    sel["time"] = t
                data = arr.isel(sel).values
            channels.append(np.asarray(data, dtype=np.float32))
        x = np.stack(channels)
        if not self.allow_nan and np.isnan(x).any():
            bad = [v for v, c in zip(self.variables, channels, strict=True) if np.isnan(c).any()]
            raise MissingValueError(
                f"{self._where}: expected no NaN in patch (time {t}, "
                f"rows {sy.start}:{sy.stop}, cols "
                f"{sx.start}:{sx.stop}), found NaN in {bad} (pass allow_nan=True for masked data)"
            )
        return {
            "x": torch.from_numpy(x),
            "time": torch.tensor(t, dtype=torch.int64),
            "rows": torch.tensor([sy.start, sy.stop], dtype=torch.int64),
            "cols": torch.tensor([sx.start, sx.stop], dtype=torch.int64),
        }

    def patch_coords(self, rows: Sequence[int], cols: Sequence[int]) -> dict[str, np.ndarray]:
        """Coordinate values ({dim: (n,)}) of a patch given its [start, stop) rows and cols."""
        ydim, xdim = self.dims[-2:]
        out = {}
        if ydim in self._coords:
            out[ydim] = self._coords[ydim][int(rows[0]) : int(rows[1])]
        if xdim in self._coords:
            out[xdim] = self._coords[xdim][int(cols[0]) : int(cols[1])]
        return out
