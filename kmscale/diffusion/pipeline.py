"""Predictors in, a downscaled ensemble store out.

::

    predictors (time, lat_c, lon_c) ──bundle.validate──► conditioning on the latent grid
        │                                                  (spec from the bundle)
        ▼
    regression U-Net ──► ẑ (T, C_z, h, w)
        │
        ▼ for each time: M members, member m from seed(t, m)
    EDM sampler on D(r; σ, [ẑ, cond], emb)  (PatchedDenoiser for large domains)
        │
        ▼
    z_m = residual.compose(ẑ, r_m, scale) ──autoencoder.decode──► x_m (C, H, W) physical
        │
        ▼
    ensemble store (time, member, lat, lon) per variable, CF attributes, provenance,
    written time chunk by time chunk with kmscale.data.store.StoreWriter (resumable;
    the final name appears only when every chunk is in place)

Seeds: member ``m`` at valid time ``t`` draws its noise from
``seed(t, m) = member_seeds[m] * 1_000_003 + hours_since_1970(t)``, so a member is
reproducible whatever the chunking, batching or restart, and different times get
independent noise. Both the member seeds and the rule are recorded in the store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from kmscale.conditioning.dataset import DownscalingDataset
from kmscale.diffusion import residual
from kmscale.diffusion.bundle import ModelBundle, build_denoiser
from kmscale.diffusion.ensemble import default_seeds, sample_ensemble
from kmscale.diffusion.regression import predict_mean
from kmscale.diffusion.settings import SamplerSettings
from kmscale.errors import ConfigError

SEED_RULE = "seed(t, m) = member_seeds[m] * 1000003 + hours_since_1970(t)"


def time_seeds(member_seeds: list[int], valid_time: np.datetime64) -> list[int]:
    """Per-member seeds at one valid time (see :data:`SEED_RULE`)."""
    hours = int(np.datetime64(valid_time, "h").astype(np.int64))
    return [(int(s) * 1_000_003 + hours) % (2**63 - 1) for s in member_seeds]


def patched_denoiser(
    denoiser,
    shape: tuple[int, int],
    patch: list[int],
    overlap: list[int] | None = None,
    context_size: list[int] | None = None,
):
    """``denoiser`` applied tile by tile on a latent field of ``shape`` (blended every step).

    A model trained on patches with global context (``context_size``) gets the same
    context channels here; the default overlap is a quarter of the tile.
    """
    from kmscale.data.patches import TileLayout
    from kmscale.diffusion.patching import PatchedDenoiser

    tile = tuple(min(int(v), n) for v, n in zip(patch, shape, strict=True))
    overlap = tuple(
        int(v)
        for v in (overlap or [t // 4 if t < n else 0 for t, n in zip(tile, shape, strict=True)])
    )
    layout = TileLayout(shape=tuple(shape), tile=tile, overlap=overlap)
    return PatchedDenoiser(
        denoiser, layout, context_size=tuple(context_size) if context_size else None
    )


class DownscalingPipeline:
    """Apply a :class:`~kmscale.diffusion.bundle.ModelBundle` to predictors.

    Args:
        bundle: the trained models and metadata.
        device: torch device for the networks.
    """

    def __init__(self, bundle: ModelBundle, device: str | torch.device = "cpu"):
        self.bundle = bundle
        self.device = torch.device(device)
        self.autoencoder = bundle.autoencoder.to(self.device).eval()
        self.regression = bundle.regression.to(self.device).eval()
        self.denoiser = None
        if bundle.diffusion is not None:
            self.denoiser = build_denoiser(
                bundle.diffusion.to(self.device).eval(), bundle.edm
            ).eval()

    # ---- stages --------------------------------------------------------------------
    def conditioning(self, predictors: xr.Dataset) -> DownscalingDataset:
        """Validate ``predictors`` against the bundle and build the examples (no targets)."""
        from kmscale.conditioning.dataset import build_dataset

        b = self.bundle
        b.validate(predictors)
        static = b.grid if b.spec.static_variables else None
        return build_dataset(b.spec, predictors, static, b.lat, b.lon)

    def _denoiser_for(self, settings: SamplerSettings):
        b = self.bundle
        patch = settings.patch or (b.edm.train_patch if b.edm.context_size else None)
        if patch is None:
            return self.denoiser
        shape = (b.lat.size // b.spec.factor, b.lon.size // b.spec.factor)
        return patched_denoiser(self.denoiser, shape, patch, settings.overlap, b.edm.context_size)

    @torch.no_grad()
    def sample_time(
        self,
        item: Mapping[str, torch.Tensor],
        z_mean: torch.Tensor,
        seeds: list[int],
        settings: SamplerSettings,
        denoiser=None,
    ) -> torch.Tensor:
        """Members at one valid time: (M, C, H, W) physical fields.

        Without a diffusion model (regression-only bundle) every member is the decoded ẑ.
        """
        z_mean = z_mean.to(self.device)
        if self.denoiser is None:
            z = z_mean.expand(len(seeds), *z_mean.shape)
        else:
            denoiser = denoiser or self._denoiser_for(settings)
            cond = torch.cat([z_mean, item["cond"].to(self.device)], dim=0)
            r = sample_ensemble(
                denoiser,
                cond,
                item["emb"].to(self.device),
                len(seeds),
                seeds,
                settings.sampler_kwargs(),
                batch_size=settings.member_batch,
                latent_shape=tuple(z_mean.shape),
                device=self.device,
            )
            if settings.center_residuals:
                r = residual.center_members(r)
            scale = torch.tensor(self.bundle.edm.residual_scale, device=self.device).reshape(
                -1, 1, 1
            )
            z = residual.compose(z_mean.expand_as(r), r, scale)
        return self.autoencoder.decode(z.float()).cpu()

    # ---- the store ------------------------------------------------------------------
    def template(
        self,
        dataset: DownscalingDataset,
        members: int,
        lead: np.ndarray | None,
        time_chunk: int = 1,
    ) -> xr.Dataset:
        """Full-size lazy template of the ensemble store (dims time, member, lat, lon)."""
        import dask.array as da

        from kmscale.data.variables import lookup
        from kmscale.errors import SchemaError

        b = self.bundle
        T, H, W = len(dataset), b.lat.size, b.lon.size
        coords = {
            "time": ("time", dataset.time, {"standard_name": "time", "long_name": "valid time"}),
            "member": (
                "member",
                np.arange(members, dtype=np.int32),
                {"long_name": "ensemble member"},
            ),
            "lat": ("lat", b.lat, {"units": "degrees_north", "standard_name": "latitude"}),
            "lon": ("lon", b.lon, {"units": "degrees_east", "standard_name": "longitude"}),
        }
        if lead is not None:
            coords["lead_time"] = (
                "time",
                lead.astype(np.float32),
                {"units": "hours", "long_name": "forecast lead time"},
            )
        data_vars = {}
        for name in b.variables:
            try:
                attrs = lookup(name).cf_attrs()
            except SchemaError:
                attrs = {"long_name": name}
            data_vars[name] = (
                ("time", "member", "lat", "lon"),
                da.zeros((T, members, H, W), dtype=np.float32, chunks=(time_chunk, members, H, W)),
                attrs,
            )
        return xr.Dataset(data_vars, coords=coords)

    def run(
        self,
        predictors: xr.Dataset,
        out: str | Path,
        settings: SamplerSettings,
        *,
        overwrite: bool = False,
        progress: bool = True,
        resolved_config: Mapping | None = None,
        max_chunks: int | None = None,
        scheduler: str | None = None,
    ) -> Path | None:
        """Sample an ensemble for every valid time of ``predictors`` into ``out``.

        Args:
            predictors: canonical predictor dataset (time, lat, lon) per variable.
            out: ensemble store path (``.zarr``).
            settings: sampler settings.
            overwrite: replace a complete store at ``out``.
            resolved_config: the command's resolved settings, stored as provenance.
            max_chunks: stop after writing this many chunks (tests of resume); the store
                then stays ``.partial`` and None is returned.
            scheduler: dask.distributed workers for the time chunks (``local:N`` or an
                address; see :mod:`kmscale.data.distributed`); None: this process.
        Returns:
            The path of the complete store, or None if stopped early.
        """
        from kmscale.conditioning.embeddings import lead_times_of
        from kmscale.data.distributed import run_chunks
        from kmscale.data.store import StoreWriter

        if settings.members < 1:
            raise ConfigError(f"members: expected >= 1, found {settings.members}")
        if self.denoiser is None and settings.members != 1:
            raise ConfigError(
                f"members: this bundle has no diffusion model (regression only), so expected 1, "
                f"found {settings.members}"
            )
        dataset = self.conditioning(predictors)
        lead = lead_times_of(predictors)
        member_seeds = default_seeds(settings.members, settings.seed)
        b = self.bundle
        provenance = {
            "Conventions": "CF-1.10",
            "title": "kmscale downscaled ensemble",
            "kmscale_bundle_fingerprint": b.fingerprint(),
            "kmscale_bundle_data_fingerprint": b.data_fingerprint,
            "kmscale_autoencoder": type(b.autoencoder).registry_name,
            "kmscale_sampler": json.dumps(asdict(settings)),
            "kmscale_member_seeds": member_seeds,
            "kmscale_seed_rule": SEED_RULE,
            "kmscale_config": json.dumps(dict(resolved_config or {}), default=str),
        }
        fp = hashlib.sha256(
            json.dumps(
                [
                    b.fingerprint(),
                    asdict(settings),
                    str(dataset.time[0]),
                    str(dataset.time[-1]),
                    len(dataset),
                ],
                default=str,
            ).encode()
        ).hexdigest()[:16]
        template = self.template(dataset, settings.members, lead, settings.time_chunk)
        writer = StoreWriter(
            out,
            template,
            kind="ensemble",
            fingerprint=fp,
            dim="time",
            chunk=settings.time_chunk,
            attrs=provenance,
            overwrite=overwrite,
        )
        pending = writer.pending()
        if max_chunks is not None:
            pending = pending[:max_chunks]
        denoiser = self._denoiser_for(settings) if self.denoiser is not None else None
        bar = tqdm(
            total=len(dataset) * settings.members,
            unit="member",
            desc="sample",
            disable=not progress,
            initial=(writer.n_chunks - len(writer.pending()))
            * settings.time_chunk
            * settings.members,
        )

        def compute(index: int, sl: slice) -> xr.Dataset:
            part = dataset.subset(np.arange(sl.start, sl.stop))
            z_mean = predict_mean(self.regression, part, progress=False)
            fields = [
                self.sample_time(
                    part[j], z_mean[j], time_seeds(member_seeds, part.time[j]), settings, denoiser
                )
                for j in range(len(part))
            ]
            arr = torch.stack(fields).numpy()  # (t, M, C, H, W)
            chunk = template.isel(time=sl).copy()
            for c, name in enumerate(b.variables):
                chunk[name] = (("time", "member", "lat", "lon"), arr[:, :, c], template[name].attrs)
            return chunk

        def done(index: int) -> None:
            sl = writer.chunk_slice(index)
            bar.update((sl.stop - sl.start) * settings.members)

        run_chunks(writer, compute, scheduler=scheduler, pending=pending, on_done=done)
        bar.close()
        if writer.pending():
            return None
        return writer.finalize()
