"""The model bundle: everything ``kmscale sample`` needs, in one directory.

::

    bundle/
      bundle.json      variables + units, target grid, conditioning spec (predictor
                       list, units, statistics; static fields and their statistics;
                       downsample factor), EDM settings (σ_data, residual scale),
                       lead times trained on, training-data fingerprint, version
      grid.zarr        target grid coordinates (lat, lon) and the physical static
                       fields on it (orography, land-sea mask, ...)
      autoencoder/     Autoencoder.save_pretrained
      regression/      ConditionalUNet.save_pretrained (the regression U-Net)
      diffusion/       the EDM backbone's save_pretrained (ConditionalUNet, or
                       CrossAttentionUNet); absent in a regression-only bundle

:meth:`ModelBundle.validate` checks predictors (and optionally a target grid) against
the bundle and raises :class:`~kmscale.errors.BundleError` naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from kmscale import __version__
from kmscale.autoencoders.latent_store import group_layout
from kmscale.autoencoders.registry import load_autoencoder
from kmscale.conditioning.dataset import ConditioningSpec, latent_grid
from kmscale.conditioning.embeddings import lead_times_of
from kmscale.conditioning.predictors import fractional_index
from kmscale.conditioning.static import grid_coords
from kmscale.data.store import consolidate
from kmscale.data.variables import lookup
from kmscale.diffusion.edm import EDMPrecond
from kmscale.diffusion.regression import load_backbone
from kmscale.diffusion.settings import EDMLossSettings, NoiseSchedule
from kmscale.errors import BundleError, CheckpointError, GridError, SchemaError, UnitsError

BUNDLE_FILE = "bundle.json"
GRID_STORE = "grid.zarr"
BUNDLE_FORMAT = 1


@dataclass
class EDMSettings:
    """What the sampler must know about how the diffusion model was trained."""

    sigma_data: float = EDMLossSettings.sigma_data  # σ_data of EDMPrecond
    residual_scale: list[float] = field(default_factory=lambda: [1.0])  # per latent channel
    sigma_min: float = NoiseSchedule.sigma_min
    sigma_max: float = NoiseSchedule.sigma_max
    context_size: list[int] | None = (
        None  # coarse global context of patch training (PatchedDenoiser)
    )
    train_patch: list[int] | None = None  # latent patch size trained on; None: whole field


def build_denoiser(backbone, edm: EDMSettings) -> EDMPrecond:
    """The EDM denoiser D(x; σ) around a diffusion backbone trained with ``edm``."""
    return EDMPrecond(backbone, sigma_data=edm.sigma_data)


@dataclass
class ModelBundle:
    """Autoencoder + regression U-Net + (optional) diffusion backbone + metadata.

    Attributes:
        autoencoder: a kmscale Autoencoder.
        regression: ConditionalUNet predicting the normalized latent mean.
        diffusion: ConditionalUNet backbone of the EDM denoiser, or None.
        spec: the conditioning spec (predictors, static fields, factor).
        grid: Dataset with the target grid (lat, lon) and physical static fields.
        edm: EDM settings (σ_data, residual scale).
        lead_times: lead times (hours) seen in training, sorted unique.
        data_fingerprint: identity of the training data.
        extra: free-form provenance (training configs, scores).
    """

    autoencoder: Any
    regression: Any
    diffusion: Any | None
    spec: ConditioningSpec
    grid: xr.Dataset
    edm: EDMSettings = field(default_factory=EDMSettings)
    lead_times: list[float] = field(default_factory=lambda: [0.0])
    data_fingerprint: str = ""
    extra: dict = field(default_factory=dict)

    # ---- description -------------------------------------------------------------
    @property
    def variables(self) -> list[str]:
        return list(self.autoencoder.variables)

    @property
    def lat(self) -> np.ndarray:
        return grid_coords(self.grid)[0]

    @property
    def lon(self) -> np.ndarray:
        return grid_coords(self.grid)[1]

    def units(self) -> dict[str, str]:
        out = {}
        for name in self.variables:
            try:
                out[name] = lookup(name).units
            except SchemaError:
                out[name] = ""
        return out

    def description(self) -> dict:
        """The content of bundle.json."""
        lat, lon = self.lat, self.lon
        return {
            "format": BUNDLE_FORMAT,
            "kmscale_version": __version__,
            "variables": [{"name": n, "units": u} for n, u in self.units().items()],
            "target_grid": {
                "dims": ["lat", "lon"],
                "shape": [int(lat.size), int(lon.size)],
                "lat": [float(lat[0]), float(lat[-1])],
                "lon": [float(lon[0]), float(lon[-1])],
            },
            "latent_grid": {
                "shape": [int(lat.size) // self.spec.factor, int(lon.size) // self.spec.factor],
                "channels": int(self.autoencoder.latent_channels),
            },
            "autoencoder": {
                "name": type(self.autoencoder).registry_name,
                "fingerprint": self.autoencoder.fingerprint(),
                "groups": group_layout(self.autoencoder),
            },
            "conditioning": self.spec.to_dict(),
            "static_fields": list(self.spec.static_variables),
            "predictors": list(self.spec.predictors.variables),
            "edm": vars(self.edm) | {"enabled": self.diffusion is not None},
            "lead_times": [float(x) for x in self.lead_times],
            "data_fingerprint": self.data_fingerprint,
            "extra": self.extra,
        }

    def fingerprint(self) -> str:
        """SHA-256 (16 hex) over the description and every model's weights."""
        h = hashlib.sha256(json.dumps(self.description(), sort_keys=True, default=str).encode())
        for model in (self.regression, self.diffusion):
            if model is None:
                continue
            for name, tensor in sorted(model.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    # ---- save / load ---------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the bundle directory (atomically: under a temporary name, then renamed)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.autoencoder.save_pretrained(tmp / "autoencoder")
        self.regression.save_pretrained(tmp / "regression")
        if self.diffusion is not None:
            self.diffusion.save_pretrained(tmp / "diffusion")
        self.grid.to_zarr(tmp / GRID_STORE, mode="w", zarr_format=3, consolidated=False)
        consolidate(tmp / GRID_STORE)
        desc = self.description()
        desc["fingerprint"] = self.fingerprint()
        (tmp / BUNDLE_FILE).write_text(json.dumps(desc, indent=2, default=str))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelBundle:
        """Read a bundle directory, checking that its parts agree with bundle.json.

        Raises:
            BundleError: missing/corrupt bundle.json, a missing part, or weights that
                differ from the recorded autoencoder fingerprint.
        """
        path = Path(path)
        meta_file = path / BUNDLE_FILE
        if not meta_file.is_file():
            raise BundleError(f"{path}: expected a model bundle with {BUNDLE_FILE}, found none")
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as err:
            raise BundleError(f"{meta_file}: expected JSON, found a corrupt file ({err})") from err
        if meta.get("format") != BUNDLE_FORMAT:
            raise BundleError(
                f"{meta_file}: expected bundle format {BUNDLE_FORMAT}, found {meta.get('format')!r}"
            )
        for part in ("autoencoder", "regression", GRID_STORE) + (
            ("diffusion",) if meta["edm"]["enabled"] else ()
        ):
            if not (path / part).exists():
                raise BundleError(f"{path}: expected the bundle part {part!r}, found nothing")
        try:
            autoencoder = load_autoencoder(path / "autoencoder", expect=meta["autoencoder"]["name"])
            regression = load_backbone(path / "regression")
            diffusion = load_backbone(path / "diffusion") if meta["edm"]["enabled"] else None
        except (CheckpointError, OSError, RuntimeError, ValueError) as err:
            raise BundleError(f"{path}: could not load the bundle's models: {err}") from err
        if autoencoder.fingerprint() != meta["autoencoder"]["fingerprint"]:
            raise BundleError(
                f"{path}/autoencoder: expected fingerprint {meta['autoencoder']['fingerprint']}, "
                f"found {autoencoder.fingerprint()} (the autoencoder was replaced)"
            )
        grid = xr.open_zarr(path / GRID_STORE, zarr_format=3, consolidated=False).load()
        edm = {k: v for k, v in meta["edm"].items() if k != "enabled"}
        bundle = cls(
            autoencoder=autoencoder.eval(),
            regression=regression.eval(),
            diffusion=None if diffusion is None else diffusion.eval(),
            spec=ConditioningSpec.from_dict(meta["conditioning"]),
            grid=grid,
            edm=EDMSettings(**edm),
            lead_times=list(meta["lead_times"]),
            data_fingerprint=meta.get("data_fingerprint", ""),
            extra=dict(meta.get("extra", {})),
        )
        recorded = meta.get("fingerprint")
        if recorded and bundle.fingerprint() != recorded:
            raise BundleError(
                f"{path}: expected models matching the recorded fingerprint {recorded}, found "
                f"{bundle.fingerprint()} (weights or bundle.json were modified)"
            )
        return bundle

    # ---- validation against data ---------------------------------------------------
    def validate(
        self,
        predictors: xr.Dataset,
        target_grid: xr.Dataset | tuple[np.ndarray, np.ndarray] | None = None,
        lead_tolerance_hours: float = 0.5,
    ) -> None:
        """Check that ``predictors`` (and ``target_grid``) are what the bundle was built for.

        Raises:
            BundleError: a predictor variable is missing or in other units; the
                predictor grid does not cover the target grid; lead times outside the
                trained range; a target grid other than the bundle's.
        """
        try:
            self.spec.predictors.check(predictors, where="predictors")
        except (SchemaError, UnitsError) as err:
            raise BundleError(f"bundle/predictors mismatch: {err}") from err
        try:
            p_lat, p_lon = grid_coords(predictors)
            llat, llon = latent_grid(self.lat, self.lon, self.spec.factor)
            fractional_index(p_lat, llat, "latitude")
            fractional_index(p_lon, llon, "longitude")
        except GridError as err:
            raise BundleError(f"bundle/predictors mismatch: {err}") from err
        lead = lead_times_of(predictors)
        lead = np.zeros(predictors.sizes["time"]) if lead is None else lead
        lo, hi = min(self.lead_times), max(self.lead_times)
        bad = lead[(lead < lo - lead_tolerance_hours) | (lead > hi + lead_tolerance_hours)]
        if bad.size:
            raise BundleError(
                f"bundle/predictors mismatch: expected lead times within the trained range "
                f"{lo:g}..{hi:g} h, found {np.unique(bad)[:10].tolist()} h"
            )
        if target_grid is not None:
            lat, lon = (
                grid_coords(target_grid)
                if isinstance(target_grid, (xr.Dataset, xr.DataArray))
                else target_grid
            )
            lat, lon = np.asarray(lat), np.asarray(lon)
            if (
                lat.shape != self.lat.shape
                or lon.shape != self.lon.shape
                or not (
                    np.allclose(lat, self.lat, atol=1e-4) and np.allclose(lon, self.lon, atol=1e-4)
                )
            ):
                raise BundleError(
                    f"bundle/target grid mismatch: expected {self.lat.size} x {self.lon.size} (lat "
                    f"{self.lat[0]:.4f}..{self.lat[-1]:.4f}, lon "
                    f"{self.lon[0]:.4f}..{self.lon[-1]:.4f}), found {lat.size} x {lon.size} (lat "
                    f"{lat[0]:.4f}..{lat[-1]:.4f}, lon {lon[0]:.4f}..{lon[-1]:.4f})"
                )


def grid_dataset(
    lat: np.ndarray, lon: np.ndarray, static: xr.Dataset | None, variables: list[str]
) -> xr.Dataset:
    """The bundle's grid.zarr content: target coordinates plus the physical static fields."""
    ds = xr.Dataset(coords={"lat": ("lat", np.asarray(lat)), "lon": ("lon", np.asarray(lon))})
    for name in variables:
        if static is None or name not in static:
            raise BundleError(f"bundle grid: expected the static field {name!r}, found none")
        ds[name] = (
            ("lat", "lon"),
            np.asarray(static[name].transpose("lat", "lon").values, np.float32),
            dict(static[name].attrs),
        )
    return ds


def data_fingerprint(*datasets: xr.Dataset | None, extra: Mapping | None = None) -> str:
    """A cheap identity of training data: variables, shapes, time range and summary sums."""
    h = hashlib.sha256()
    for ds in datasets:
        if ds is None:
            continue
        for name in sorted(ds.data_vars):
            var = ds[name]
            h.update(f"{name}{dict(var.sizes)}{var.attrs.get('units', '')}".encode())
            # a reduction (streamed chunk by chunk for lazy data): never the period in memory
            h.update(np.float64(var.astype(np.float64).sum(skipna=True).values).tobytes())
        if "time" in ds.coords:
            h.update(str(ds["time"].values[[0, -1]]).encode())
    if extra:
        h.update(json.dumps(dict(extra), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]
