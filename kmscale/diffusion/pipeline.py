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
        ▼ (tiled decode, kmscale.autoencoders.tiling, for fields over 1024 px a side)
    ensemble store (time, member, lat, lon) per variable, CF attributes, provenance,
    written member by member as each is decoded (kmscale.diffusion.ensemble_store) inside
    time chunks of kmscale.data.store.StoreWriter (resumable; the final name appears
    only when every chunk is in place), with the seam diagnostic of patch-wise sampling

Memory: the conditioning, ẑ and the members' latents of one valid time (small: the
latent grid), plus one member's physical fields (C, H, W) and the decoder activations of
a few tiles. Nothing of size (members, C, H, W) is held, so a 4384 x 6880 grid samples
in a few GiB.

Seeds: member ``m`` at valid time ``t`` draws its noise from
``seed(t, m) = member_seeds[m] * 1_000_003 + hours_since_1970(t)``, so a member is
reproducible whatever the chunking, batching or restart, and different times get
independent noise. Both the member seeds and the rule are recorded in the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from kmscale.conditioning.dataset import DownscalingDataset
from kmscale.diffusion import ensemble_store, residual
from kmscale.diffusion.bundle import ModelBundle, build_denoiser
from kmscale.diffusion.ensemble import default_seeds, sample_ensemble
from kmscale.diffusion.ensemble_store import SEAM_KEY, SEED_RULE
from kmscale.diffusion.regression import predict_mean
from kmscale.diffusion.settings import SamplerSettings
from kmscale.errors import ConfigError

__all__ = ["SEAM_KEY", "SEED_RULE", "DownscalingPipeline", "SamplerSettings", "time_seeds"]


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

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(h, w) of the latent grid the diffusion model samples on."""
        b = self.bundle
        return (b.lat.size // b.spec.factor, b.lon.size // b.spec.factor)

    def _patch(self, settings: SamplerSettings) -> list[int] | None:
        b = self.bundle
        return settings.patch or (b.edm.train_patch if b.edm.context_size else None)

    def _denoiser_for(self, settings: SamplerSettings):
        patch = self._patch(settings)
        if patch is None:
            return self.denoiser
        return patched_denoiser(
            self.denoiser, self.latent_shape, patch, settings.overlap, self.bundle.edm.context_size
        )

    def decode_tiling(
        self, settings: SamplerSettings
    ) -> tuple[tuple[int, int] | None, tuple[int, int]]:
        """Pixel (tile, overlap) of the decode: the settings', else ``auto_tiling``'s.

        The default overlap is :class:`~kmscale.autoencoders.tiling.Tiling`'s (320 px,
        at most half a tile): enough for the default VAEs to tile exactly.
        """
        from kmscale.autoencoders.tiling import Tiling, auto_tiling, padded_shape

        f = self.autoencoder.downsample_factor
        shape = padded_shape((self.bundle.lat.size, self.bundle.lon.size), f)
        if settings.decode_tile is None:
            return auto_tiling(shape, f)
        tile = tuple(min(int(t), n) for t, n in zip(settings.decode_tile, shape, strict=True))
        if settings.decode_overlap is not None:
            return tile, tuple(int(o) for o in settings.decode_overlap)  # type: ignore[return-value]
        overlap = tuple(
            min(Tiling.overlap, t // 2) // f * f if t < n else 0
            for t, n in zip(tile, shape, strict=True)
        )
        return tile, overlap  # type: ignore[return-value]

    def tile_edges(self, settings: SamplerSettings) -> tuple[np.ndarray, np.ndarray]:
        """Pixel positions of every patch edge (latent patches and decode tiles)."""
        from kmscale.data.patches import TileLayout
        from kmscale.evaluation.seams import tile_edges

        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        denoiser = self._denoiser_for(settings) if self.denoiser is not None else None
        if denoiser is not None and denoiser is not self.denoiser:
            r, c = tile_edges(denoiser.layout, self.bundle.spec.factor)
            rows.append(r)
            cols.append(c)
        tile, overlap = self.decode_tiling(settings)
        if tile is not None:
            from kmscale.autoencoders.tiling import padded_shape

            shape = padded_shape(
                (self.bundle.lat.size, self.bundle.lon.size), self.autoencoder.downsample_factor
            )
            r, c = tile_edges(TileLayout(shape=shape, tile=tile, overlap=overlap))
            rows.append(r)
            cols.append(c)
        cat = lambda e: np.unique(np.concatenate(e)) if e else np.zeros(0, np.int64)  # noqa: E731
        return cat(rows), cat(cols)

    @torch.no_grad()
    def sample_latents(
        self,
        item: Mapping[str, torch.Tensor],
        z_mean: torch.Tensor,
        seeds: list[int],
        settings: SamplerSettings,
        denoiser=None,
    ) -> torch.Tensor:
        """Latents of the members at one valid time: (M, C_z, h, w), z = ẑ + scale · r_m.

        Without a diffusion model (regression-only bundle) every member is ẑ.
        """
        z_mean = z_mean.to(self.device)
        if self.denoiser is None:
            return z_mean.expand(len(seeds), *z_mean.shape)
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
        scale = torch.tensor(self.bundle.edm.residual_scale, device=self.device).reshape(-1, 1, 1)
        return residual.compose(z_mean.expand_as(r), r, scale)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, settings: SamplerSettings) -> torch.Tensor:
        """Physical fields (C, H, W) of one member's latents z (C_z, h, w), tiled if large."""
        from kmscale.autoencoders.tiling import tiled_decode

        tile, overlap = self.decode_tiling(settings)
        shape = (self.bundle.lat.size, self.bundle.lon.size)
        return tiled_decode(self.autoencoder, z.float(), shape=shape, tile=tile, overlap=overlap)

    @torch.no_grad()
    def sample_time(
        self,
        item: Mapping[str, torch.Tensor],
        z_mean: torch.Tensor,
        seeds: list[int],
        settings: SamplerSettings,
        denoiser=None,
    ) -> torch.Tensor:
        """Members at one valid time in memory: (M, C, H, W) physical fields.

        :meth:`run` decodes and writes one member at a time instead (bounded memory).
        """
        z = self.sample_latents(item, z_mean, seeds, settings, denoiser)
        return torch.stack([self.decode(zm, settings) for zm in z])

    # ---- the store ------------------------------------------------------------------
    def template(self, dataset: DownscalingDataset, members: int, lead: np.ndarray | None):
        """Full-size lazy template of the ensemble store (dims time, member, lat, lon)."""
        b = self.bundle
        return ensemble_store.template(b.variables, dataset.time, members, b.lat, b.lon, lead)

    def _check(self, settings: SamplerSettings) -> None:
        if settings.members < 1:
            raise ConfigError(f"members: expected >= 1, found {settings.members}")
        if self.denoiser is None and settings.members != 1:
            raise ConfigError(
                f"members: this bundle has no diffusion model (regression only), so expected 1, "
                f"found {settings.members}"
            )

    def _writer(self, template, out, settings, member_seeds, resolved_config, overwrite):
        from kmscale.data.store import StoreWriter

        b = self.bundle
        return StoreWriter(
            out,
            template,
            kind="ensemble",
            fingerprint=ensemble_store.fingerprint(b, settings, template["time"].values),
            dim="time",
            chunk=settings.time_chunk,
            attrs=ensemble_store.provenance(b, settings, member_seeds, resolved_config),
            encoding=ensemble_store.encoding(b.variables, b.lat.size, b.lon.size),
            overwrite=overwrite,
        )

    def _chunk_fn(self, dataset, writer, template, settings, member_seeds):
        """``compute(index, time slice)`` of :func:`kmscale.data.distributed.run_chunks`.

        It samples the chunk's valid times and writes each member to the store as soon as
        it is decoded; the dataset it returns holds only the chunk's coordinates, which
        ``run_chunks`` writes last before recording the chunk as done.
        """
        denoiser = self._denoiser_for(settings) if self.denoiser is not None else None
        partial, variables = str(writer.partial), self.bundle.variables

        def compute(index: int, sl: slice) -> xr.Dataset:
            part = dataset.subset(np.arange(sl.start, sl.stop))
            z_mean = predict_mean(self.regression, part, progress=False)
            for j in range(len(part)):
                seeds = time_seeds(member_seeds, part.time[j])
                z = self.sample_latents(part[j], z_mean[j], seeds, settings, denoiser)
                for m in range(len(seeds)):
                    x = self.decode(z[m], settings).numpy()
                    ensemble_store.write_member(partial, variables, sl.start + j, m, x)
            return template.isel(time=sl).drop_vars(variables)

        return compute

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
            The path of the complete store, or None if stopped early. Its attribute
            ``kmscale_seam_ratio`` holds the seam diagnostic per variable
            (:mod:`kmscale.evaluation.seams`; null without patches or decode tiles).
        """
        from kmscale.conditioning.embeddings import lead_times_of
        from kmscale.data.distributed import run_chunks

        self._check(settings)
        dataset = self.conditioning(predictors)
        member_seeds = default_seeds(settings.members, settings.seed)
        template = self.template(dataset, settings.members, lead_times_of(predictors))
        writer = self._writer(template, out, settings, member_seeds, resolved_config, overwrite)
        pending = writer.pending()[:max_chunks] if max_chunks is not None else writer.pending()
        per_chunk = settings.time_chunk * settings.members
        bar = tqdm(
            total=len(dataset) * settings.members,
            unit="member",
            desc="sample",
            disable=not progress,
            initial=(writer.n_chunks - len(writer.pending())) * per_chunk,
        )
        compute = self._chunk_fn(dataset, writer, template, settings, member_seeds)

        def done(index: int) -> None:
            sl = writer.chunk_slice(index)
            bar.update((sl.stop - sl.start) * settings.members)

        run_chunks(writer, compute, scheduler=scheduler, pending=pending, on_done=done)
        bar.close()
        if writer.pending():
            return None
        seams = ensemble_store.seam_diagnostic(
            writer.partial, self.bundle.variables, self.tile_edges(settings)
        )
        writer.update_attrs({SEAM_KEY: seams})
        return writer.finalize()
