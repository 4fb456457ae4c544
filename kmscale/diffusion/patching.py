"""Patch-wise denoising for domains too large for one pass of the network.

:class:`PatchedDenoiser` wraps a denoiser ``D(x, sigma, cond, emb)`` (an
:class:`~kmscale.diffusion.edm.EDMPrecond`) and has the same call signature, so the
sampler is unaware of it. Each call

1. cuts ``x`` and ``cond`` into the overlapping tiles of a
   :class:`~kmscale.data.patches.TileLayout`,
2. appends to each tile's conditioning the coarse *global context* (below),
3. denoises all tiles (in batches of ``tile_batch_size``),
4. blends them back with the layout's tapered window (weighted mean in the overlaps).

Because the sampler calls the denoiser at every step, the overlaps are averaged at
every denoising step: neighbouring tiles agree on the shared pixels before the next
step, so no seams form (as in MultiDiffusion / CorrDiff's patch-based sampling).

Global context (our choice, documented here once): a tile alone cannot see weather
systems larger than itself, so every tile also gets

* the whole ``cond`` field, area-averaged (``adaptive_avg_pool2d``) to ``context_size``
  pixels and bilinearly resized to the tile size: C_cond channels, identical for every
  tile, and
* one "where am I" channel: the indicator of the tile's footprint in the field,
  area-averaged and resized in the same way, so the network knows which part of the
  coarse picture its tile is.

So the backbone is built with ``C_x + C_cond + context_channels(C_cond)`` input
channels (see :func:`context_channels`). The context is computed from ``cond`` only
(never from the noisy ``x``, which would need c_in scaling and a full noisy field at
training time). Training on random patches uses :func:`training_patches` (which calls
:func:`with_context`), so training and sampling see identical inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F_nn
from torch import nn

from kmscale.data.patches import TileLayout, extract_tiles, random_patch, stitch_tiles
from kmscale.errors import ConfigError, GridError, describe

Slices = tuple[slice, slice]


def context_channels(cond_channels: int, context_size: tuple[int, int] | int | None) -> int:
    """Extra input channels the global context adds: C_cond + 1, or 0 without context."""
    return 0 if context_size is None else int(cond_channels) + 1


def _size_pair(size: tuple[int, int] | int) -> tuple[int, int]:
    pair = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ConfigError(
            describe("context_size as a positive int or pair", size, where="PatchedDenoiser")
        )
    return pair  # type: ignore[return-value]


def global_context(cond: torch.Tensor, context_size: tuple[int, int] | int) -> torch.Tensor:
    """Area-averaged ``cond`` (B, C_cond, H, W) -> (B, C_cond, ch, cw)."""
    return F_nn.adaptive_avg_pool2d(cond.to(torch.float32), _size_pair(context_size))


def footprint(
    shape: tuple[int, int],
    slices: Slices,
    context_size: tuple[int, int] | int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Fraction of each context cell covered by the tile ``slices``: (1, 1, ch, cw)."""
    mask = torch.zeros((1, 1, *shape), dtype=torch.float32, device=device)
    mask[..., slices[0], slices[1]] = 1.0
    return F_nn.adaptive_avg_pool2d(mask, _size_pair(context_size))


def with_context(
    cond: torch.Tensor,
    slices: Slices,
    context_size: tuple[int, int] | int | None,
    pooled: torch.Tensor | None = None,
    where: torch.Tensor | None = None,
) -> torch.Tensor:
    """Conditioning of one tile: the tile of ``cond`` plus the global context channels.

    Args:
        cond: the whole field's conditioning (B, C_cond, H, W).
        slices: the tile's (row slice, col slice) in the field.
        context_size: (ch, cw) of the coarse context, or None for no context.
        pooled: ``global_context(cond, context_size)`` when already computed (saves work
            when many tiles share one field).
        where: ``footprint(field shape, slices, context_size)`` when already computed.

    Returns:
        (B, C_cond + context_channels(C_cond, context_size), th, tw).
    """
    tile = cond[..., slices[0], slices[1]]
    if context_size is None:
        return tile
    th, tw = tile.shape[-2:]
    if pooled is None:
        pooled = global_context(cond, context_size)
    if where is None:
        where = footprint(tuple(cond.shape[-2:]), slices, context_size, cond.device)
    where = where.to(pooled.device).expand(cond.shape[0], -1, -1, -1)
    ctx = F_nn.interpolate(
        torch.cat([pooled, where], dim=1), size=(th, tw), mode="bilinear", align_corners=False
    )
    return torch.cat([tile, ctx.to(tile.dtype)], dim=1)


def training_patches(
    y: torch.Tensor,
    cond: torch.Tensor | None,
    patch: tuple[int, int] | int,
    context_size: tuple[int, int] | int | None,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random training patches with the same conditioning a :class:`PatchedDenoiser` gives.

    Args:
        y: whole-field training targets (B, C, H, W) (residuals).
        cond: whole-field conditioning (B, C_cond, H, W) or None.
        patch: patch size (ph, pw).
        context_size: as given to :class:`PatchedDenoiser` (None: no context channels).
        rng: numpy Generator drawing the patch positions (one per example).
        weights: optional sampling weights, see :func:`kmscale.data.patches.random_patch`.

    Returns:
        y patches (B, C, ph, pw) and cond patches (B, C_cond + context_channels, ph, pw) or None.
    """
    ys, conds = [], []
    for b in range(y.shape[0]):
        sl = random_patch(tuple(y.shape[-2:]), patch, rng, weights)
        ys.append(y[b, :, sl[0], sl[1]])
        if cond is not None:
            conds.append(with_context(cond[b : b + 1], sl, context_size)[0])
        elif context_size is not None:
            raise GridError(
                describe(
                    "cond (the global context is computed from it)", None, where="training_patches"
                )
            )
    return torch.stack(ys), (torch.stack(conds) if cond is not None else None)


class PatchedDenoiser(nn.Module):
    """Denoise a large field tile by tile, blending overlaps at every call.

    Args:
        net: denoiser ``D(x (b, C, th, tw), sigma (b,), cond (b, C_cond', th, tw), emb (b, E))``
            for one tile, where C_cond' = C_cond + context_channels(C_cond, context_size).
        layout: tiling of the field ``x`` is defined on (latent grid for latent diffusion;
            use ``pixel_layout.scaled(autoencoder.downsample_factor)``).
        context_size: size (ch, cw) of the coarse global context, or None for none.
        tile_batch_size: how many tiles go through ``net`` at once (memory bound).
    """

    def __init__(
        self,
        net: Callable[..., torch.Tensor],
        layout: TileLayout,
        context_size: tuple[int, int] | int | None = None,
        tile_batch_size: int = 16,
    ) -> None:
        super().__init__()
        if tile_batch_size < 1:
            raise ConfigError(
                describe("tile_batch_size >= 1", tile_batch_size, where="PatchedDenoiser")
            )
        self.net = net
        self.layout = layout
        self.context_size = None if context_size is None else _size_pair(context_size)
        self.tile_batch_size = int(tile_batch_size)
        self._footprints: list[torch.Tensor] | None = None  # per tile, computed on first use
        # The sampler clamps its schedule to the wrapped model's supported range.
        self.sigma_min = getattr(net, "sigma_min", 0.0)
        self.sigma_max = getattr(net, "sigma_max", float("inf"))

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        cond: torch.Tensor | None = None,
        emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``D(x; σ)`` of the whole field.

        Args:
            x: (B, C, H, W) with (H, W) == layout.shape.
            sigma: scalar or (B,) (or (B, 1, 1, 1)) noise levels.
            cond: (B, C_cond, H, W) or None (then no context either).
            emb: (B, E) or None.

        Returns:
            (B, C, H, W), weighted mean of the tiles' denoised values.
        """
        if x.ndim != 4 or tuple(x.shape[-2:]) != self.layout.shape:
            raise GridError(
                describe(
                    f"x (B, C, {self.layout.shape[0]}, {self.layout.shape[1]})",
                    tuple(x.shape),
                    where="PatchedDenoiser",
                )
            )
        B = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(B)
        if cond is not None and tuple(cond.shape[-2:]) != self.layout.shape:
            raise GridError(
                describe(
                    f"cond on the field grid {self.layout.shape}",
                    tuple(cond.shape),
                    where="PatchedDenoiser",
                )
            )
        if cond is None and self.context_size is not None:
            raise GridError(
                describe(
                    "cond (the global context is computed from it)", None, where="PatchedDenoiser"
                )
            )
        pooled = None
        if self.context_size is not None:
            pooled = global_context(cond, self.context_size)
            if self._footprints is None or self._footprints[0].device != cond.device:
                # Depends on the layout only: computed once, not at every step.
                self._footprints = [
                    footprint(self.layout.shape, sl, self.context_size, cond.device)
                    for sl in self.layout.slices
                ]
        slices = self.layout.slices
        x_tiles = extract_tiles(x, self.layout)  # (N, B, C, th, tw)
        out_tiles = torch.empty_like(x_tiles)
        # Flatten (tile, batch) and go through the network tile_batch_size rows at a time.
        pairs = [(n, b) for n in range(len(slices)) for b in range(B)]
        for start in range(0, len(pairs), self.tile_batch_size):
            chunk = pairs[start : start + self.tile_batch_size]
            tiles = torch.stack([x_tiles[n, b] for n, b in chunk])
            tile_cond = None
            if cond is not None:
                tile_cond = torch.cat(
                    [
                        with_context(
                            cond[b : b + 1],
                            slices[n],
                            self.context_size,
                            None if pooled is None else pooled[b : b + 1],
                            None if pooled is None else self._footprints[n],
                        )
                        for n, b in chunk
                    ]
                )
            tile_emb = None if emb is None else emb[[b for _, b in chunk]]
            out = self.net(tiles, sigma[[b for _, b in chunk]], tile_cond, tile_emb)
            for (n, b), tile in zip(chunk, out, strict=True):
                out_tiles[n, b] = tile
        return stitch_tiles(out_tiles, self.layout)
