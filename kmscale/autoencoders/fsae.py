"""Field-space autoencoder on the HEALPix sphere (FS-AE; Meuer, Witte et al. 2026).

Multi-scale residual decomposition of a nested field at level L (``nside = 2**L``)::

    x_L = refine(x_{L-N}, N) + sum_{l = L-N+1}^{L} refine(r_l, L - l),
    x_{l-1} = coarsen(x_l, 1),   r_l = x_l - refine(x_{l-1}, 1)

    encoder: per variable and cell, the features [refine(x_{L-N}), r_{L-N+1}, ..., r_L,
             mask flags] -> Linear -> tokens (B, V, npix, D) + variable embedding
             -> [FieldSpaceBlock x depth -> CellMerge] x N -> FieldSpaceBlock x depth
             -> Linear(V D -> latent_channels): z (B, latent_channels, npix / 4**N)
    decoder: z -> Linear -> tokens at level L-N -> blocks -> head: x_hat_{L-N}
             -> [CellSplit -> blocks -> head: r_hat_l; x_hat_l = refine(x_hat_{l-1}) + r_hat_l]
                x N  -> x_hat_L (B, V, npix)

so every decoder level outputs a complete field, and the compression is ``4**N`` cells per
latent cell (``V * 4**N / latent_channels`` values per latent value).

Zero-shot super-resolution: the finest ``k <= max_masked_levels`` residuals of the input can
be masked (zeroed and flagged). Training masks them on a random ``mask_prob`` of the samples
and still asks for the full field, so :meth:`FieldSpaceAutoencoder.super_resolve` applied
to a field at level L - k (refined to level L, its k finest residuals masked) returns a field
at level L with the fine scales filled in, without retraining.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from einops import rearrange
from torch import nn

from kmscale.autoencoders.base import Autoencoder, AutoencoderOutput
from kmscale.autoencoders.field_attention import (
    CellMerge,
    CellSplit,
    FieldSpaceBlock,
    SpherePosition,
)
from kmscale.autoencoders.healpix_model import HealpixAutoencoder
from kmscale.autoencoders.registration import register
from kmscale.errors import ConfigError, SchemaError, describe
from kmscale.sphere import check_nside, coarsen, refine


def residual_features(x: torch.Tensor, levels: int, masked: torch.Tensor) -> torch.Tensor:
    """The multi-scale decomposition as features: ``(B, V, npix) -> (B, V, npix, 2 N + 1)``.

    ``masked``: ``(B,)`` number of finest residual levels to mask per sample (0 = none).
    Features: the coarse field refined to the input level, the ``N`` residuals (coarse to
    fine, each refined to the input level; masked ones zero) and ``N`` mask flags.
    """
    fields = [x]
    for _ in range(levels):
        fields.append(coarsen(fields[-1], 1))
    feats = [refine(fields[levels], levels)]
    flags = []
    for i, lev in enumerate(range(levels, 0, -1)):  # residual of level L - lev + 1
        r = fields[lev - 1] - refine(fields[lev], 1)
        fine_rank = levels - i  # 1 for the finest residual
        off = (masked >= fine_rank).to(x.dtype)[:, None, None]
        feats.append(refine(r, lev - 1) * (1 - off))
        flags.append(off.expand_as(x))
    return torch.stack(feats + flags, dim=-1)


@register("fsae")
class FieldSpaceAutoencoder(HealpixAutoencoder):
    """Field-space attention autoencoder on nested HEALPix fields ``(B, V, 12 nside**2)``."""

    @register_to_config
    def __init__(
        self,
        variables: Sequence[str] = ("t2m",),  # physical variables, in channel order
        input_stats: dict | None = None,  # per-variable transform/mean/std (kmscale.data.stats)
        latent_mean: list[float] | None = None,  # per-channel latent normalization
        latent_std: list[float] | None = None,
        nside: int = 16,  # input resolution (level L = log2 nside)
        levels: int = 2,  # N: the latent lives at nside / 2**N (4**N cells per latent cell)
        latent_channels: int = 1,
        dim: int = 32,  # token width D
        heads: int = 4,
        depth: int = 1,  # field-space blocks per level
        window: int = 16,  # cells per attention window (a power of 4; cell_attention "windows")
        mlp_ratio: float = 2.0,
        drop_path: float = 0.0,
        max_masked_levels: int = 1,  # finest residual levels super_resolve may mask
        mask_prob: float = 0.25,  # training samples whose finest residuals are masked
        cell_attention: str = "neighbours",  # or "windows" (kmscale.autoencoders.field_attention)
        absolute_position: bool = True,  # add each cell's position on the sphere to its tokens
        position_frequencies: int = 4,  # Fourier features of the position: pi * 2**k, k < this
    ):
        super().__init__()
        check_nside(nside)
        if not 1 <= 2**levels <= nside:
            raise ConfigError(
                describe(f"1 <= 2**levels <= nside ({nside})", levels, where="fsae.levels")
            )
        if not 0 <= max_masked_levels <= levels:
            raise ConfigError(
                describe(
                    f"0 <= max_masked_levels <= levels ({levels})",
                    max_masked_levels,
                    where="fsae.max_masked_levels",
                )
            )
        if window < 1 or window & (window - 1) or window.bit_length() % 2 == 0:
            raise ConfigError(
                describe("a window that is a power of 4", window, where="fsae.window")
            )
        v = len(variables)
        sides = [nside >> i for i in range(levels + 1)]  # fine -> coarse
        rates = torch.linspace(0, drop_path, 2 * (levels + 1) * depth).tolist()

        def stage(side: int, k: int) -> nn.Sequential:
            w = min(window, side * side)
            return nn.Sequential(
                *[
                    FieldSpaceBlock(
                        dim, heads, side, w, mlp_ratio, rates[k * depth + j], cell_attention
                    )
                    for j in range(depth)
                ]
            )

        self.var_embed = nn.Parameter(torch.zeros(v, dim))
        self.embed = nn.Linear(2 * levels + 1, dim)
        self.enc_blocks = nn.ModuleList([stage(s, i) for i, s in enumerate(sides)])
        self.merges = nn.ModuleList([CellMerge(dim, dim) for _ in range(levels)])
        self.to_latent = nn.Linear(v * dim, latent_channels)
        self.from_latent = nn.Linear(latent_channels, v * dim)
        self.dec_var_embed = nn.Parameter(torch.zeros(v, dim))
        self.enc_position = SpherePosition(dim, position_frequencies) if absolute_position else None
        self.dec_position = SpherePosition(dim, position_frequencies) if absolute_position else None
        self.dec_blocks = nn.ModuleList(
            [stage(s, levels + 1 + i) for i, s in enumerate(sides[::-1])]
        )
        self.splits = nn.ModuleList([CellSplit(dim, dim) for _ in range(levels)])
        self.out_heads = nn.ModuleList(
            [nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1)) for _ in range(levels + 1)]
        )
        nn.init.normal_(self.var_embed, std=0.02)
        nn.init.normal_(self.dec_var_embed, std=0.02)
        for head in self.out_heads[1:]:  # residual heads start at 0: an untrained decoder
            nn.init.zeros_(head[1].weight)  # gives the smooth coarse field, not white noise
            nn.init.zeros_(head[1].bias)

    # ---- the contract ---------------------------------------------------------------
    def encode_features(self, x: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Standardized ``(B, V, npix)`` + ``(B,)`` masked levels -> raw latent."""
        n = self.config.levels
        t = self.embed(residual_features(x, n, masked)) + self.var_embed[:, None]
        t = t + self._position(self.enc_position, self.config.nside)
        for i in range(n):
            t = self.merges[i](self.enc_blocks[i](t))
        t = self.enc_blocks[n](t)
        z = self.to_latent(rearrange(t, "b v n d -> b n (v d)"))
        return rearrange(z, "b n c -> b c n")

    def _encode_normalized(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_features(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))

    @staticmethod
    def _position(embedding: SpherePosition | None, nside: int) -> torch.Tensor | float:
        """``(N, D)`` position tokens at ``nside`` (broadcast over batch and variables)."""
        return 0.0 if embedding is None else embedding(nside)

    def _decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        self._check_cells(z.shape[-1], self.npix // 4**self.config.levels, "latent")
        v = self.in_channels
        t = rearrange(self.from_latent(rearrange(z, "b c n -> b n c")), "b n (v d) -> b v n d", v=v)
        side = self.config.nside >> self.config.levels
        t = self.dec_blocks[0](
            t + self.dec_var_embed[:, None] + self._position(self.dec_position, side)
        )
        x_hat = self.out_heads[0](t)[..., 0]
        for i in range(self.config.levels):
            side *= 2
            t = self.dec_blocks[i + 1](self.splits[i](t) + self._position(self.dec_position, side))
            x_hat = refine(x_hat, 1) + self.out_heads[i + 1](t)[..., 0]
        return x_hat

    def forward(
        self,
        x: torch.Tensor,
        sample_posterior: bool = False,
        generator: torch.Generator | None = None,
        quant_step: float = 0.0,
        masked: torch.Tensor | None = None,
    ) -> AutoencoderOutput:
        """Training pass on standardized ``x (B, V, npix)`` -> ``AutoencoderOutput(x_hat, post)``.

        The posterior is deterministic (KL 0): the FS-AE is a plain autoencoder.
        ``masked`` ``(B,)`` levels to mask; None draws them (``mask_prob``) in training mode.
        ``quant_step`` > 0 adds uniform noise of that step (normalized latent units) to z.
        """
        if masked is None:
            masked = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            if self.training and self.config.max_masked_levels > 0:
                draw = torch.rand(x.shape[0], generator=generator, device=x.device)
                k = torch.randint(
                    1,
                    self.config.max_masked_levels + 1,
                    (x.shape[0],),
                    generator=generator,
                    device=x.device,
                )
                masked = torch.where(draw < self.config.mask_prob, k, masked)
        z = self.encode_features(x, masked)
        if quant_step > 0:
            scale = z.detach().std(dim=(0, 2), keepdim=True)
            z = (
                z
                + (torch.rand(z.shape, generator=generator, device=z.device) - 0.5)
                * quant_step
                * scale
            )
        post = DiagonalGaussianDistribution(
            torch.cat([z, torch.zeros_like(z)], 1), deterministic=True
        )
        return AutoencoderOutput(self._decode_normalized(z), post)

    def decoder_modules(self) -> list[nn.Module]:
        return [
            self.from_latent,
            self.dec_blocks,
            self.splits,
            self.out_heads,
            self.dec_var_embed,
            *([self.dec_position] if self.dec_position is not None else []),
        ]

    def train_decoder_only(self) -> None:
        """Freeze every parameter but the decoder's."""
        self.requires_grad_(False)
        for m in self.decoder_modules():
            m.requires_grad_(True)

    # ---- zero-shot super-resolution ------------------------------------------------
    @torch.no_grad()
    def super_resolve(self, x: torch.Tensor) -> torch.Tensor:
        """Physical fields at a coarser level ``(B, V, npix / 4**k)``, ``1 <= k <=
        max_masked_levels`` -> physical fields at the model's level ``(B, V, npix)``."""
        Autoencoder.check_input(self, x)  # rank and variables; the coarser cell count below
        k = 0
        while k <= self.config.max_masked_levels and x.shape[-1] * 4**k < self.npix:
            k += 1
        if not 1 <= k <= self.config.max_masked_levels or x.shape[-1] * 4**k != self.npix:
            coarser = [self.npix // 4**j for j in range(1, self.config.max_masked_levels + 1)]
            raise SchemaError(
                describe(
                    f"a coarser input with one of {coarser} cells (nside "
                    f"{self.config.nside} model, up to "
                    f"{self.config.max_masked_levels} masked levels)",
                    f"{x.shape[-1]} cells",
                    where="fsae.super_resolve",
                )
            )
        xs = refine(self.normalize_input(x), k)
        masked = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
        return self.denormalize_output(self._decode_normalized(self.encode_features(xs, masked)))
