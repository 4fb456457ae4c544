"""Tiled encode/decode: fields far larger than memory allows in one network pass.

A field (C, H, W) is cut into overlapping pixel tiles (:class:`kmscale.data.patches.
TileLayout`); each tile goes through the autoencoder alone, and the per-tile results are
blended with tapering weights (:func:`blend_weights`), so no seam is
visible. The latent layout is the pixel layout divided by the downsample factor f,
so latent tiles line up exactly with pixel tiles::

    x (C, H, W) ──pad to multiples of f──► pixel tiles (C, th, tw) ──encode──►
        latent tiles (Cz, th/f, tw/f) ──blend──► z (Cz, H'/f, W'/f)
    z ──latent tiles──decode──► pixel tiles ──blend──► x_hat ──crop to (H, W), mask──►

Memory is one input field, one output field plus the activations of ``batch_size``
tiles: the network never sees the whole field.

Exactness. A network without per-sample statistics (the identity, the VAE with
``norm_type="pixel"``) is local: an output depends only on inputs within its receptive
radius R, so a tile's output is exact except within R of a tile edge that is not a field
edge (where the tile saw zero padding instead of its neighbours). The blending weights
(:func:`blend_weights`) are therefore zero over the outer 3/8 of each interior overlap,
taper (sin^2) over the middle quarter, and the tiled result equals the untiled one
(to float rounding) whenever ``3/8 overlap >= R``. Measured R (gradient support of one
output, random weights, ``layers_per_block=1``): encoder 81 px, decoder 14 latent px =
112 px for 8x models (widths (32, 64, 128, 128) or (16, 32, 32, 32)); 39 px and 13 latent
px = 52 px for the 4x (32, 64, 64). Hence the default overlap of :func:`auto_tiling`,
320 px (3/8 of it: 120 px). A GroupNorm VAE (``norm_type="group"``) never tiles exactly:
each tile is normalized with its own statistics (see the Compression section of
benchmarks/BENCHMARKS.md).

NaN (masked) input points are filled by the autoencoder's standardization (0 in
standardized units); :func:`tiled_decode` puts NaN back wherever ``mask`` is False.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kmscale.autoencoders.base import Autoencoder
from kmscale.data.patches import TileLayout, _pair
from kmscale.errors import GridError, SchemaError


def padded_shape(shape: Sequence[int], factor: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of ``factor``."""
    return tuple(-(-int(s) // factor) * factor for s in shape)  # type: ignore[return-value]


def _layout(
    shape: tuple[int, int],
    tile: int | Sequence[int] | None,
    overlap: int | Sequence[int],
    factor: int,
) -> TileLayout:
    """Pixel layout on the padded field; ``tile=None`` means one tile covering everything."""
    if tile is None:
        return TileLayout(shape=shape, tile=shape, overlap=(0, 0))
    th, tw = _pair(tile, "tile")
    oh, ow = _pair(overlap, "overlap")
    for name, value in (("tile", (th, tw)), ("overlap", (oh, ow))):
        if value[0] % factor or value[1] % factor:
            raise GridError(
                f"tiling: expected {name} divisible by the downsample factor {factor}, found "
                f"{value}"
            )
    return TileLayout(shape=shape, tile=(th, tw), overlap=(oh, ow))


def _as_numpy_field(x: Any) -> np.ndarray:
    """One (C, H, W) field from numpy / dask / xarray / torch, as float32 numpy."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _pad(field: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    ph, pw = target[0] - field.shape[-2], target[1] - field.shape[-1]
    if ph == 0 and pw == 0:
        return field
    # Reflection keeps the padded strip statistically like the field (no artificial edge).
    mode = "reflect" if ph < field.shape[-2] and pw < field.shape[-1] else "edge"
    pad = [(0, 0)] * (field.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(field, pad, mode=mode)


def _ramp_1d(n: int, start: int, stop: int, overlap: int, size: int) -> np.ndarray:
    """Weights along one axis of a tile covering [start, stop) of a field of ``size``."""
    w = np.ones(n, dtype=np.float64)
    margin = (3 * overlap) // 8
    ramp = max(overlap - 2 * margin, 1)
    taper = np.sin(0.5 * np.pi * (np.arange(ramp) + 0.5) / ramp) ** 2
    lo = np.concatenate([np.zeros(margin), taper])[:n]
    if start > 0:  # interior edge: discard what the padding reached, then taper in
        w[: len(lo)] = np.minimum(w[: len(lo)], lo)
    if stop < size:
        w[n - len(lo) :] = np.minimum(w[n - len(lo) :], lo[::-1])
    return w


def blend_weights(layout: TileLayout, index: int) -> torch.Tensor:
    """Blending weights (th, tw) of tile ``index``: zero over the outer 3/8 of each
    interior overlap (where zero padding reached), sin^2 over the middle quarter, 1
    elsewhere and up to the field's own edges. Every pixel keeps a positive total weight
    because the zero margins of two neighbours (3/8 + 3/8) never cover their overlap."""
    sy, sx = layout.slices[index]
    wy = _ramp_1d(layout.tile[0], sy.start, sy.stop, layout.overlap[0], layout.shape[0])
    wx = _ramp_1d(layout.tile[1], sx.start, sx.stop, layout.overlap[1], layout.shape[1])
    return torch.from_numpy(np.outer(wy, wx).astype(np.float32))


class _Blend:
    """Weighted mean of tiles (C, th, tw) into one field (C, H, W), one tile at a time."""

    def __init__(self, layout: TileLayout, channels: int):
        self.layout = layout
        self.num = torch.zeros((channels, *layout.shape))
        self.den = torch.zeros(layout.shape)

    def add(self, index: int, tile: torch.Tensor) -> None:
        sy, sx = self.layout.slices[index]
        w = blend_weights(self.layout, index)
        self.num[:, sy, sx] += tile * w
        self.den[sy, sx] += w

    def result(self) -> torch.Tensor:
        if not bool((self.den > 0).all()):
            raise GridError(
                f"tiling: expected every pixel covered by a tile with positive weight, found gaps "
                f"(layout {self.layout.tile} tiles, overlap {self.layout.overlap})"
            )
        return self.num / self.den


def _batched(a: Any, channels: int, expected: str) -> tuple[np.ndarray, bool]:
    """``a`` as a (B, channels, H, W) array and whether it came without the batch axis;
    a SchemaError that starts with ``expected`` on another shape."""
    x = _as_numpy_field(a)
    shape = tuple(x.shape)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != channels:
        raise SchemaError(f"{expected}, found shape {shape}")
    return x, single


@torch.inference_mode()
def tiled_encode(
    autoencoder: Autoencoder,
    field: Any,
    tile: int | Sequence[int] | None = None,
    overlap: int | Sequence[int] = 0,
    batch_size: int = 4,
) -> torch.Tensor:
    """Encode physical fields ([B,] C, H, W) to normalized latents ([B,] Cz, ceil(H/f), ceil(W/f)).

    Args:
        autoencoder: any grid autoencoder (``spatial_dims == 2``).
        field: ([B,] C, H, W) array-like in physical units (numpy, dask, torch); NaN = masked.
        tile: pixel tile (th, tw), multiples of f; None encodes the whole field at once.
        overlap: pixel overlap between tiles, a multiple of f; exact for a local
            model when 3/8 of it covers the receptive radius (module docstring).
        batch_size: tiles per network call.
    Raises:
        SchemaError: wrong number of channels. GridError: field smaller than a tile,
            or tile/overlap not divisible by f.
    """
    x, single = _batched(
        field,
        autoencoder.in_channels,
        f"tiled_encode for variables {list(autoencoder.variables)}: expected a field ([B,] "
        f"{autoencoder.in_channels}, H, W)",
    )
    f = autoencoder.downsample_factor
    full = padded_shape(x.shape[-2:], f)
    if tile is not None:
        th, tw = _pair(tile, "tile")
        if x.shape[-2] < th or x.shape[-1] < tw:
            raise GridError(
                f"tiled_encode: expected a field at least one tile {(th, tw)} large, "
                f"found a field of shape {tuple(x.shape[-2:])}"
            )
    layout = _layout(full, tile, overlap, f)
    latent_layout = layout.scaled(f)
    x = _pad(x, full)
    param = next(autoencoder.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    accs = [_Blend(latent_layout, autoencoder.latent_channels) for _ in range(x.shape[0])]
    slices = layout.slices
    # (field, tile) pairs batched together: whole small fields, or tiles of one huge field.
    jobs = [(b, i) for b in range(x.shape[0]) for i in range(len(slices))]
    for start in range(0, len(jobs), batch_size):
        part = jobs[start : start + batch_size]
        batch = torch.from_numpy(np.stack([x[b, :, slices[i][0], slices[i][1]] for b, i in part]))
        z = autoencoder.encode(batch.to(device)).float().cpu()
        for (b, i), zi in zip(part, z, strict=True):
            accs[b].add(i, zi)
    out = torch.stack([acc.result() for acc in accs])
    return out[0] if single else out


@torch.inference_mode()
def tiled_decode(
    autoencoder: Autoencoder,
    latents: Any,
    shape: Sequence[int] | None = None,
    tile: int | Sequence[int] | None = None,
    overlap: int | Sequence[int] = 0,
    mask: np.ndarray | None = None,
    batch_size: int = 4,
) -> torch.Tensor:
    """Decode normalized latents ([B,] Cz, h, w) to physical fields ([B,] C, H, W).

    Args:
        latents: ([B,] Cz, h, w) array-like.
        shape: output (H, W) before padding (crops the reflection padding of
            :func:`tiled_encode`); default (h f, w f).
        tile, overlap: pixel tiling as in :func:`tiled_encode` (need not be the same).
        mask: optional bool (H, W) or (C, H, W), True where valid; False -> NaN.
    """
    z, single = _batched(
        latents,
        autoencoder.latent_channels,
        f"tiled_decode: expected latents ([B,] {autoencoder.latent_channels}, h, w)",
    )
    f = autoencoder.downsample_factor
    full = (z.shape[-2] * f, z.shape[-1] * f)
    shape = full if shape is None else (int(shape[0]), int(shape[1]))
    if shape[0] > full[0] or shape[1] > full[1] or full != padded_shape(shape, f):
        raise GridError(
            f"tiled_decode: expected an output shape that pads to {full}, found {shape}"
        )
    if tile is not None:
        th, tw = _pair(tile, "tile")
        if full[0] < th or full[1] < tw:
            raise GridError(
                f"tiled_decode: expected a field at least one tile {(th, tw)} large, "
                f"found a field of shape {full}"
            )
    layout = _layout(full, tile, overlap, f)
    latent_slices = layout.scaled(f).slices
    param = next(autoencoder.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    accs = [_Blend(layout, autoencoder.in_channels) for _ in range(z.shape[0])]
    jobs = [(b, i) for b in range(z.shape[0]) for i in range(len(latent_slices))]
    for start in range(0, len(jobs), batch_size):
        part = jobs[start : start + batch_size]
        batch = torch.from_numpy(
            np.stack([z[b, :, latent_slices[i][0], latent_slices[i][1]] for b, i in part])
        )
        x = autoencoder.decode(batch.to(device)).float().cpu()
        for (b, i), xi in zip(part, x, strict=True):
            accs[b].add(i, xi)
    out = torch.stack([acc.result() for acc in accs])[..., : shape[0], : shape[1]]
    if mask is not None:
        valid = torch.as_tensor(np.asarray(mask, dtype=bool))
        if tuple(valid.shape[-2:]) != tuple(shape):
            raise GridError(
                f"tiled_decode: expected a mask of shape {tuple(shape)}, found {tuple(valid.shape)}"
            )
        out = torch.where(valid.expand_as(out), out, torch.tensor(float("nan")))
    return out[0] if single else out


@dataclass(frozen=True)
class Tiling:
    """Default tiling of :func:`auto_tiling` (``kmscale encode/decode --tile auto``), pixels.

    The overlap, 320 px, discards 120 px (3/8) at interior tile edges: more than the
    receptive radius of the default VAEs (encoder 81 px, decoder 112 px, see the module
    docstring), so a ``norm_type="pixel"`` VAE tiles exactly.
    """

    tile: int = 1024  # fields up to this edge are coded in one pass
    overlap: int = 320


def auto_tiling(
    shape: Sequence[int], factor: int, tile: int = Tiling.tile, overlap: int = Tiling.overlap
) -> tuple[tuple[int, int] | None, tuple[int, int]]:
    """Tiling for a field of ``shape``: None (whole field) when it fits in one ``tile``,
    else tiles of at most ``tile`` px (multiples of ``factor``) with ``overlap`` (see
    :class:`Tiling`)."""
    full = padded_shape(shape, factor)
    if full[0] <= tile and full[1] <= tile:
        return None, (0, 0)
    t = tuple(min(tile, s) // factor * factor for s in full)
    o = tuple(min(overlap, ti // 2) // factor * factor for ti in t)
    return t, o  # type: ignore[return-value]
