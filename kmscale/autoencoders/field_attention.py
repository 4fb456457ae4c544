"""Field-space attention on the HEALPix sphere (Meuer, Witte et al. 2026): timm blocks + einops.

Tokens are ``(B, V, N, D)``: one D-vector per variable ``v`` and nested cell ``n``. A
:class:`FieldSpaceBlock` alternates

    x <- x + DropPath(WindowAttention(LN(x)))    among the 4**w cells of one window
    x <- x + DropPath(FieldAttention(LN(x)))     among the V variables of one cell
    x <- x + DropPath(Mlp(LN(x)))

Windows are the contiguous nested children of one coarser cell, so ``(N, D) -> (N / W, W, D)``
is a reshape. The window attention adds a relative-position bias computed from the cells'
positions on the sphere (continuous position bias, Liu et al. 2022, Swin V2): the offset of
cell j from cell i in the local east/north tangent plane of the window, in cell sizes,
log-spaced, through a small MLP to one bias per head. HEALPix windows are not translates of
each other, so the bias is per window, not a shared table indexed by a flat offset.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from einops import rearrange
from timm.layers import Attention, DropPath, Mlp
from torch import nn

from kmscale.sphere import HealpixGrid


@lru_cache(maxsize=16)
def window_offsets(nside: int, window: int) -> torch.Tensor:
    """Tangent-plane offsets ``(N / W, W, W, 2)`` (east, north; in cell sizes) of cell j
    from cell i for every window of ``window`` contiguous nested cells."""
    g = HealpixGrid(nside)
    lat, lon = np.radians(g.lat), np.radians(g.lon)
    xyz = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], -1)
    xyz = xyz.reshape(-1, window, 3)
    centre = xyz.mean(1)
    centre /= np.linalg.norm(centre, axis=-1, keepdims=True)
    # local frame at the window centre; at the poles any east direction will do
    up = np.array([0.0, 0.0, 1.0])
    east = np.cross(up, centre)
    polar = np.linalg.norm(east, axis=-1) < 1e-9
    east[polar] = [1.0, 0.0, 0.0]
    east /= np.linalg.norm(east, axis=-1, keepdims=True)
    north = np.cross(centre, east)
    diff = xyz[:, None, :, :] - xyz[:, :, None, :]  # (nw, W, W, 3): j - i
    off = np.stack(
        [(diff * east[:, None, None]).sum(-1), (diff * north[:, None, None]).sum(-1)], -1
    )
    return torch.as_tensor(off / np.sqrt(g.cell_area), dtype=torch.float32)


class SpherePositionBias(nn.Module):
    """Continuous relative-position bias.

    Offsets ``(nw, W, W, 2)`` -> bias ``(nw, heads, W, W)``."""

    def __init__(self, heads: int, hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.GELU(), nn.Linear(hidden, heads))

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:
        logd = torch.sign(offsets) * torch.log1p(offsets.abs())  # log-spaced (Swin V2, eq. 4)
        return rearrange(self.mlp(logd), "nw i j h -> nw h i j")


class FieldSpaceBlock(nn.Module):
    """Window attention over cells, attention over variables, MLP; pre-norm residuals.

    Args:
        dim: token width D.
        heads: attention heads (``dim`` divisible by it).
        nside: resolution of the cells this block runs on.
        window: cells per window (a power of 4 dividing ``nside**2``).
        mlp_ratio: hidden width of the MLP / D.
        drop_path: stochastic-depth rate.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        nside: int,
        window: int,
        mlp_ratio: float = 2.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.nside, self.window = nside, window
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.cell_attn = Attention(dim, heads, qkv_bias=True)
        self.field_attn = Attention(dim, heads, qkv_bias=True)
        self.bias = SpherePositionBias(heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, V, N, D) -> (B, V, N, D)``; ``N = 12 * nside**2`` (or a whole number of windows
        of a regional set of cells, with the offsets of the full-sphere windows)."""
        b, v, n, _ = x.shape
        offsets = window_offsets(self.nside, self.window).to(x.device)
        bias = self.bias(offsets)  # (nw, h, W, W)
        nw = n // self.window
        h = rearrange(self.norm1(x), "b v (nw w) d -> (b v nw) w d", w=self.window)
        bias = bias[:nw].repeat(b * v, 1, 1, 1).to(h.dtype)
        h = self.cell_attn(h, attn_mask=bias)
        x = x + self.drop_path(rearrange(h, "(b v nw) w d -> b v (nw w) d", b=b, v=v))
        if v > 1:
            h = rearrange(self.norm2(x), "b v n d -> (b n) v d")
            h = self.field_attn(h)
            x = x + self.drop_path(rearrange(h, "(b n) v d -> b v n d", b=b))
        return x + self.drop_path(self.mlp(self.norm3(x)))


class CellMerge(nn.Module):
    """Nested downsampling: the 4 children of each coarser cell -> one token,
    ``(B, V, N, D) -> (B, V, N / 4, D_out)`` (LayerNorm + Linear, as Swin's patch merging)."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.proj = nn.Linear(4 * dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(rearrange(x, "b v (n c) d -> b v n (c d)", c=4)))


class CellSplit(nn.Module):
    """Nested upsampling: one token -> its 4 children, ``(B, V, N, D) -> (B, V, 4 N, D_out)``."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim, 4 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(x), "b v n (c d) -> b v (n c) d", c=4)
