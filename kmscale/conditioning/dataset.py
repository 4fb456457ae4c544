"""The training/inference examples: targets (or their latents) paired with conditioning.

One example ``i`` is a dict of tensors::

    "z"      (C_z, h, w)    normalized latents of the target at valid time t_i
                            (absent at inference)
    "cond"   (C_c, h, w)    predictors interpolated to the latent grid, then static
                            channels: C_c = C_p + C_s
    "emb"    (E,)           lead-time / calendar embedding (embeddings.py)
    "z_mean" (C_z, h, w)    regression prediction (only for the diffusion stage)
    "index"  ()             position in the paired time axis

Channel counts, grid shapes and variable lists are read from the data and recorded in
:class:`ConditioningSpec`, which the model bundle stores so that inference builds
exactly the same conditioning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from kmscale.conditioning.embeddings import (
    DEFAULT_MAX_LEAD_HOURS,
    EMBEDDING_DIM,
    lead_times_of,
    time_embedding,
)
from kmscale.conditioning.predictors import PredictorSpec
from kmscale.conditioning.static import (
    STATIC_ENCODINGS,
    fit_static_stats,
    static_fields,
    static_stack,
)
from kmscale.errors import AlignmentError, GridError, SchemaError


def latent_grid(lat: np.ndarray, lon: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the latent pixels: block means of the target coordinates."""
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    if factor == 1:
        return lat, lon
    if lat.size % factor or lon.size % factor:
        raise GridError(
            f"latent grid: expected sizes divisible by {factor}, found {lat.size} x {lon.size}"
        )
    return lat.reshape(-1, factor).mean(1), lon.reshape(-1, factor).mean(1)


def pair_times(
    target_time: np.ndarray, predictor_time: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into targets, into predictors) of the valid times both hold, ascending.

    Raises:
        AlignmentError: duplicated valid times, or no time in common.
    """
    for name, t in (("targets", target_time), ("predictors", predictor_time)):
        if len(np.unique(t)) != len(t):
            raise AlignmentError(
                f"{name}: expected unique valid times, found "
                f"{len(t) - len(np.unique(t))} duplicates"
            )
    common, it, ip = np.intersect1d(
        np.asarray(target_time), np.asarray(predictor_time), return_indices=True
    )
    if common.size == 0:
        raise AlignmentError(
            f"pairing: expected valid times shared by targets "
            f"({target_time[0]}..{target_time[-1]}) and "
            f"predictors ({predictor_time[0]}..{predictor_time[-1]}), found none"
        )
    return it, ip


@dataclass
class ConditioningSpec:
    """Everything needed to rebuild the conditioning at inference (stored in bundle.json)."""

    predictors: PredictorSpec
    static_variables: list[str] = field(default_factory=list)  # physical static fields
    static_stats: dict[str, dict] = field(default_factory=dict)  # incl. position encodings
    factor: int = 1  # autoencoder downsample factor: conditioning lives on the latent grid
    max_lead_hours: float = DEFAULT_MAX_LEAD_HOURS
    interpolation: str = "bilinear"

    @classmethod
    def from_data(
        cls,
        predictors: xr.Dataset,
        static: xr.Dataset | None,
        lat: np.ndarray,
        lon: np.ndarray,
        factor: int,
        predictor_variables: Sequence[str] | None = None,
        static_variables: Sequence[str] | None = None,
        max_lead_hours: float = DEFAULT_MAX_LEAD_HOURS,
        interpolation: str = "bilinear",
        transform_scales: Mapping[str, float] | None = None,
    ) -> ConditioningSpec:
        """Read variables, units and statistics from the (training) data; predictors take
        the value-transform ``transform_scales`` given per variable (e.g. the targets')."""
        fields = static_fields(static, lat, lon, static_variables)
        phys = [n for n in fields.data_vars if n not in STATIC_ENCODINGS]
        return cls(
            predictors=PredictorSpec.from_data(predictors, predictor_variables, transform_scales),
            static_variables=phys,
            static_stats=fit_static_stats(fields),
            factor=int(factor),
            max_lead_hours=float(max_lead_hours),
            interpolation=interpolation,
        )

    @property
    def static_channels(self) -> list[str]:
        return list(self.static_stats)

    @property
    def cond_channels(self) -> int:
        return len(self.predictors.variables) + len(self.static_stats)

    @property
    def emb_dim(self) -> int:
        return EMBEDDING_DIM

    def to_dict(self) -> dict:
        return {
            "predictors": self.predictors.to_dict(),
            "static_variables": list(self.static_variables),
            "static_stats": dict(self.static_stats),
            "factor": self.factor,
            "max_lead_hours": self.max_lead_hours,
            "interpolation": self.interpolation,
            "cond_channels": self.cond_channels,
            "emb_dim": self.emb_dim,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ConditioningSpec:
        return cls(
            predictors=PredictorSpec.from_dict(d["predictors"]),
            static_variables=list(d["static_variables"]),
            static_stats=dict(d["static_stats"]),
            factor=int(d["factor"]),
            max_lead_hours=float(d["max_lead_hours"]),
            interpolation=str(d.get("interpolation", "bilinear")),
        )

    # ---- building tensors ------------------------------------------------------------
    def static_tensor(
        self, static: xr.Dataset | None, lat: np.ndarray, lon: np.ndarray
    ) -> torch.Tensor:
        """(C_s, h, w) standardized static channels on the latent grid."""
        fields = static_fields(static, lat, lon, self.static_variables)
        return torch.from_numpy(static_stack(fields, self.static_stats, self.factor))

    def predictor_tensor(
        self, predictors: xr.Dataset, lat: np.ndarray, lon: np.ndarray
    ) -> torch.Tensor:
        """(T, C_p, h, w) standardized predictors on the latent grid."""
        llat, llon = latent_grid(lat, lon, self.factor)
        return self.predictors.stack(predictors, llat, llon, mode=self.interpolation)

    def embedding(self, predictors: xr.Dataset) -> torch.Tensor:
        """(T, E) embeddings from the predictors' valid times and lead times."""
        return torch.from_numpy(
            time_embedding(
                predictors["time"].values, lead_times_of(predictors), self.max_lead_hours
            )
        )


def physical_targets(targets: xr.Dataset, variables: Sequence[str]) -> torch.Tensor:
    """(T, C, H, W) float32 physical fields of ``variables`` (channel order)."""
    arr = (
        targets[list(variables)]
        .to_dataarray("variable")
        .transpose("time", "variable", "lat", "lon")
    )
    return torch.from_numpy(np.asarray(arr.values, np.float32))


@torch.no_grad()
def encode_targets(
    autoencoder, targets: xr.Dataset, batch_size: int = 16, progress: bool = True
) -> torch.Tensor:
    """Encode physical targets to normalized latents with ``autoencoder``.

    Args:
        targets: dataset with the autoencoder's variables, dims (time, lat, lon).
    Returns:
        (T, C_z, h, w) float32 latents.
    """
    names = list(autoencoder.variables)
    missing = [n for n in names if n not in targets]
    if missing:
        raise SchemaError(
            f"targets: expected variables {names} (the autoencoder's), missing {missing}"
        )
    arr = targets[names].to_dataarray("variable").transpose("time", "variable", "lat", "lon")
    out = []
    n = arr.sizes["time"]
    for start in tqdm(range(0, n, batch_size), desc="encode", disable=not progress, leave=False):
        x = torch.from_numpy(
            np.asarray(arr.isel(time=slice(start, start + batch_size)).values, np.float32)
        )
        out.append(autoencoder.encode(x).float())
    return torch.cat(out)


class DownscalingDataset(Dataset):
    """In-memory examples (latent-grid tensors are small: C x h x w per time).

    Args:
        predictors: (N, C_p, h, w) standardized predictors on the latent grid.
        static: (C_s, h, w) static channels on the latent grid (shared by all times).
        emb: (N, E) embeddings.
        z: (N, C_z, h, w) latents of the targets, or None at inference.
        z_mean: (N, C_z, h, w) regression predictions (diffusion stage), or None.
        time: (N,) valid times (datetime64), kept for provenance.
        x: (N, C, H, W) physical targets (validation sets: scores against the truth
            itself, not its autoencoder reconstruction), or None.
    """

    def __init__(
        self,
        predictors: torch.Tensor,
        static: torch.Tensor,
        emb: torch.Tensor,
        z: torch.Tensor | None = None,
        z_mean: torch.Tensor | None = None,
        time: np.ndarray | None = None,
        x: torch.Tensor | None = None,
    ):
        n = predictors.shape[0]
        for name, t in (("emb", emb), ("z", z), ("z_mean", z_mean), ("x", x)):
            if t is not None and t.shape[0] != n:
                raise AlignmentError(
                    f"dataset: expected {n} {name} rows (one per time), found {t.shape[0]}"
                )
        grid = tuple(predictors.shape[-2:])
        for name, t in (("static", static), ("z", z), ("z_mean", z_mean)):
            if t is not None and tuple(t.shape[-2:]) != grid:
                raise SchemaError(
                    f"dataset: expected {name} on the latent grid {grid}, "
                    f"found {tuple(t.shape[-2:])}"
                )
        self.predictors, self.static, self.emb = predictors, static, emb
        self.z, self.z_mean, self.time, self.x = z, z_mean, time, x

    def __len__(self) -> int:
        return self.predictors.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {
            "cond": torch.cat([self.predictors[i], self.static], dim=0),
            "emb": self.emb[i],
            "index": torch.tensor(i),
        }
        if self.z is not None:
            item["z"] = self.z[i]
        if self.z_mean is not None:
            item["z_mean"] = self.z_mean[i]
        if self.x is not None:
            item["x"] = self.x[i]
        return item

    def with_z_mean(self, z_mean: torch.Tensor) -> DownscalingDataset:
        """The same examples with regression predictions attached (diffusion stage)."""
        return DownscalingDataset(
            self.predictors, self.static, self.emb, self.z, z_mean, self.time, self.x
        )

    def subset(self, index: np.ndarray | slice) -> DownscalingDataset:
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return DownscalingDataset(
            self.predictors[index],
            self.static,
            self.emb[index],
            pick(self.z),
            pick(self.z_mean),
            None if self.time is None else self.time[index],
            pick(self.x),
        )


def build_dataset(
    spec: ConditioningSpec,
    predictors: xr.Dataset,
    static: xr.Dataset | None,
    lat: np.ndarray,
    lon: np.ndarray,
    latents: torch.Tensor | None = None,
    latent_time: np.ndarray | None = None,
    physical: torch.Tensor | None = None,
) -> DownscalingDataset:
    """Pair latents (if given) with predictors by valid time and build the examples.

    Args:
        spec: conditioning spec (from the training data or a bundle).
        predictors: predictor dataset (time, lat_c, lon_c).
        static: static fields on the target grid (lat, lon) or None.
        lat, lon: 1-D target grid.
        latents: (T, C_z, h, w) normalized latents of the targets, or None (inference).
        latent_time: (T,) valid times of ``latents``.
        physical: (T, C, H, W) physical targets at ``latent_time`` (validation), or None.
    """
    if latents is not None:
        if latent_time is None or len(latent_time) != latents.shape[0]:
            raise AlignmentError(
                f"latents: expected {latents.shape[0]} valid times, found "
                f"{None if latent_time is None else len(latent_time)}"
            )
        it, ip = pair_times(np.asarray(latent_time), predictors["time"].values)
        predictors = predictors.isel(time=ip)
        latents = latents[torch.as_tensor(it)]
        physical = None if physical is None else physical[torch.as_tensor(it)]
    return DownscalingDataset(
        predictors=spec.predictor_tensor(predictors, lat, lon),
        static=spec.static_tensor(static, lat, lon),
        emb=spec.embedding(predictors),
        z=latents,
        time=predictors["time"].values,
        x=physical,
    )
