"""Field-space attention on the HEALPix sphere (Meuer, Witte et al. 2026): timm blocks + einops.

Tokens are ``(B, V, N, D)``: one D-vector per variable ``v`` and nested cell ``n``. A
:class:`FieldSpaceBlock` alternates

    x <- x + DropPath(CellAttention(LN(x)))      among the cells of a neighbourhood
    x <- x + DropPath(FieldAttention(LN(x)))     among the V variables of one cell
    x <- x + DropPath(Mlp(LN(x)))

Two neighbourhoods (``cell_attention``):

- ``"neighbours"``: every cell attends to itself and its 8 HEALPix neighbours (7 at the 24
  cells where three faces meet), a sliding neighbourhood: information crosses every cell
  and face edge, so stacked blocks have a growing receptive field and no window seams.
- ``"windows"``: the ``window`` contiguous nested children of one coarser cell attend to each
  other, so ``(N, D) -> (N / W, W, D)`` is a reshape; windows never exchange information
  (Swin's fixed windows without the shift, which HEALPix has no cheap analogue of).

Both add a relative-position bias computed from the cells' positions on the sphere
(continuous position bias, Liu et al. 2022, Swin V2): the offset of cell j from cell i in a
local east/north tangent plane, in cell sizes, log-spaced, through a small MLP to one bias
per head. HEALPix neighbourhoods are not translates of each other, so the bias is per
neighbourhood, not a shared table indexed by a flat offset.
"""

from __future__ import annotations

from functools import lru_cache

import healpy as hp
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Attention, DropPath, Mlp
from torch import nn

from kmscale.errors import ConfigError, describe
from kmscale.sphere import HealpixGrid

CELL_ATTENTION = ("neighbours", "windows")


def _unit_vectors(g: HealpixGrid) -> np.ndarray:
    lat, lon = np.radians(g.lat), np.radians(g.lon)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], -1)


def _tangent_offsets(centre: np.ndarray, diff: np.ndarray, cell_area: float) -> np.ndarray:
    """``diff (..., 3)`` in the east/north frame at unit vectors ``centre`` (broadcastable
    to ``diff[..., 0, :]``-shaped leading dims), in cell sizes: ``(..., 2)``."""
    up = np.array([0.0, 0.0, 1.0])
    east = np.cross(up, centre)
    polar = np.linalg.norm(east, axis=-1) < 1e-9
    east[polar] = [1.0, 0.0, 0.0]  # at the poles any east direction will do
    east /= np.linalg.norm(east, axis=-1, keepdims=True)
    north = np.cross(centre, east)
    shape = (diff.ndim - centre.ndim) * (None,)
    e, n = east[(..., *shape, slice(None))], north[(..., *shape, slice(None))]
    off = np.stack([(diff * e).sum(-1), (diff * n).sum(-1)], -1)
    return off / np.sqrt(cell_area)


@lru_cache(maxsize=16)
def window_offsets(nside: int, window: int) -> torch.Tensor:
    """Tangent-plane offsets ``(N / W, W, W, 2)`` (east, north; in cell sizes) of cell j
    from cell i for every window of ``window`` contiguous nested cells."""
    g = HealpixGrid(nside)
    xyz = _unit_vectors(g).reshape(-1, window, 3)
    centre = xyz.mean(1)
    centre /= np.linalg.norm(centre, axis=-1, keepdims=True)
    diff = xyz[:, None, :, :] - xyz[:, :, None, :]  # (nw, W, W, 3): j - i
    return torch.as_tensor(_tangent_offsets(centre, diff, g.cell_area), dtype=torch.float32)


@lru_cache(maxsize=16)
def neighbourhoods(nside: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every nested cell's neighbourhood: itself then its 8 neighbours.

    Returns:
        index ``(N, 9)`` int64 (a missing neighbour, where only 7 exist, repeats the cell),
        valid ``(N, 9)`` bool (False where repeated), offsets ``(N, 9, 2)`` of each
        neighbour from the cell in the cell's east/north tangent plane, in cell sizes.
    """
    g = HealpixGrid(nside)
    cells = np.arange(g.npix)
    # healpy's neighbour search (SW, W, NW, N, NE, E, SE, S; -1 where none) in nested order
    nb = hp.get_all_neighbours(nside, cells, nest=True).T
    index = np.concatenate([cells[:, None], nb], axis=1)
    valid = index >= 0
    index = np.where(valid, index, cells[:, None])
    xyz = _unit_vectors(g)
    off = _tangent_offsets(xyz, xyz[index] - xyz[:, None], g.cell_area)
    return (
        torch.as_tensor(index),
        torch.as_tensor(valid),
        torch.as_tensor(off, dtype=torch.float32),
    )


@lru_cache(maxsize=16)
def position_features(nside: int, frequencies: int = 4) -> torch.Tensor:
    """Where each nested cell is on the sphere, ``(N, 3 + 6 * frequencies)``: its unit vector
    and sines/cosines of it at ``pi * 2**k``, k < frequencies (Fourier features). The same
    function of position at every nside, so a model may run at another level."""
    xyz = _unit_vectors(HealpixGrid(nside))
    scaled = xyz[:, None, :] * (np.pi * 2.0 ** np.arange(frequencies))[:, None]  # (N, F, 3)
    feats = [xyz, np.sin(scaled).reshape(len(xyz), -1), np.cos(scaled).reshape(len(xyz), -1)]
    return torch.as_tensor(np.concatenate(feats, 1), dtype=torch.float32)


class SpherePosition(nn.Module):
    """Absolute position embedding ``(N, D)`` of the cells at ``nside`` (``forward(nside)``):
    :func:`position_features` through a Linear layer. Lets a decoder learn what is fixed in
    place (coasts, mountains: the climatology's fine structure a latent cannot carry)."""

    def __init__(self, dim: int, frequencies: int = 4):
        super().__init__()
        self.frequencies = frequencies
        self.proj = nn.Linear(3 + 6 * frequencies, dim)

    def forward(self, nside: int) -> torch.Tensor:
        feats = position_features(nside, self.frequencies).to(self.proj.weight.device)
        return self.proj(feats.to(self.proj.weight.dtype))


class NeighbourAttention(nn.Module):
    """Each cell's token attends to the tokens of its :func:`neighbourhoods`,
    ``(B, N, D) -> (B, N, D)``, with a per-head bias ``(heads, N, 9)``.

    Written here rather than with timm's ``Attention``: that attends within one sequence,
    while here every query has its own key set (gathered neighbours); the projections are
    the same (qkv Linear with bias, output Linear).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, index: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (t h e) -> t b h n e", t=3, h=self.heads)
        k, v = k[:, :, index], v[:, :, index]  # (B, h, N, 9, e)
        scores = torch.einsum("bhne,bhnke->bhnk", q, k) * q.shape[-1] ** -0.5
        attn = F.softmax(scores + bias, dim=-1)
        out = torch.einsum("bhnk,bhnke->bhne", attn, v)
        return self.proj(rearrange(out, "b h n e -> b n (h e)"))


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
    """Attention over cells, attention over variables, MLP; pre-norm residuals.

    Args:
        dim: token width D.
        heads: attention heads (``dim`` divisible by it).
        nside: resolution of the cells this block runs on.
        window: cells per window (a power of 4 dividing ``nside**2``; "windows" only).
        mlp_ratio: hidden width of the MLP / D.
        drop_path: stochastic-depth rate.
        cell_attention: "neighbours" or "windows" (module docstring).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        nside: int,
        window: int,
        mlp_ratio: float = 2.0,
        drop_path: float = 0.0,
        cell_attention: str = "neighbours",
    ):
        super().__init__()
        if cell_attention not in CELL_ATTENTION:
            raise ConfigError(
                describe(f"cell_attention in {CELL_ATTENTION}", repr(cell_attention), where="fsae")
            )
        self.nside, self.window, self.neighbours = nside, window, cell_attention == "neighbours"
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.cell_attn = (
            NeighbourAttention(dim, heads)
            if self.neighbours
            else Attention(dim, heads, qkv_bias=True)
        )
        self.field_attn = Attention(dim, heads, qkv_bias=True)
        self.bias = SpherePositionBias(heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, V, N, D) -> (B, V, N, D)``; ``N = 12 * nside**2``."""
        b, v = x.shape[:2]
        x = x + self.drop_path(rearrange(self._cells(self.norm1(x)), "(b v) n d -> b v n d", b=b))
        if v > 1:
            h = rearrange(self.norm2(x), "b v n d -> (b n) v d")
            h = self.field_attn(h)
            x = x + self.drop_path(rearrange(h, "(b n) v d -> b v n d", b=b))
        return x + self.drop_path(self.mlp(self.norm3(x)))

    def _cells(self, h: torch.Tensor) -> torch.Tensor:
        """Cell attention of normalized tokens ``(B, V, N, D) -> (B V, N, D)``."""
        b, v, n, _ = h.shape
        if self.neighbours:
            index, valid, offsets = (t.to(h.device) for t in neighbourhoods(self.nside))
            bias = self.bias(offsets[None])[0]  # (heads, N, 9)
            bias = bias.masked_fill(~valid, float("-inf")).to(h.dtype)
            return self.cell_attn(rearrange(h, "b v n d -> (b v) n d"), index, bias)
        nw = n // self.window
        bias = self.bias(window_offsets(self.nside, self.window).to(h.device))  # (nw, h, W, W)
        bias = bias[:nw].repeat(b * v, 1, 1, 1).to(h.dtype)
        h = rearrange(h, "b v (nw w) d -> (b v nw) w d", w=self.window)
        h = self.cell_attn(h, attn_mask=bias)
        return rearrange(h, "(bv nw) w d -> bv (nw w) d", nw=nw)


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
