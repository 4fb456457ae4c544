"""The 12 HEALPix base faces as images, neighbour-correct padding, and face convolutions.

Face image layout: ``faces[..., f, x, y]`` holds nested cell ``healpy.xyf2pix(nside, x, y, f)``,
so axis -2 runs from a face's south corner towards its east corner (north-east on the
sphere) and axis -1 from the south corner towards the west corner (north-west). Image
neighbours are sphere neighbours, and the 2 x 2 block ``[2i:2i+2, 2j:2j+2]`` holds the four
nested children of cell ``(i, j)`` at ``nside / 2``: average pooling by 2 of a face image is
the face image of ``coarsen(x, 1)``, and pixel shuffle by 2 goes the other way.

Padding across face edges is a gather from index tables built once per ``(nside, width)``
with healpy's ``get_all_neighbours``: a padded cell is reached by walking straight out of
the face along its grid line (at each step the next cell is the neighbour opposite the
previous one, which keeps the line straight across edges whatever the rotation between the
faces). HEALPix has no library routine for padding face images, hence the tables.

Corners: where four faces meet at a face corner, the diagonal cell exists and both ways of
walking to it (along x then y, or y then x) reach it. At the eight vertices where only three
faces meet (latitude +-41.8 deg) there is no diagonal cell; the padded corner is the mean of
the two cells reached by the two walk orders (each a real neighbour-of-neighbour), which is
symmetric and continuous for smooth fields.
"""

from __future__ import annotations

from functools import lru_cache

import healpy as hp
import numpy as np
import torch
from einops import rearrange
from torch import nn

from kmscale.errors import SchemaError, describe
from kmscale.sphere.healpix import Array, check_nside, nside_from_npix


@lru_cache(maxsize=32)
def face_permutation(nside: int) -> np.ndarray:
    """Nested index of each face-image position, ``(12 * nside**2,)`` in ``(f, x, y)`` order."""
    nside = check_nside(nside)
    f, x, y = np.meshgrid(np.arange(12), np.arange(nside), np.arange(nside), indexing="ij")
    return hp.xyf2pix(nside, x.ravel(), y.ravel(), f.ravel(), nest=True).astype(np.int64)


@lru_cache(maxsize=32)
def _inverse_permutation(nside: int) -> np.ndarray:
    return np.argsort(face_permutation(nside))


def _take(x: Array, idx: np.ndarray) -> Array:
    if isinstance(x, torch.Tensor):
        return x[..., torch.as_tensor(idx, device=x.device)]
    return x[..., idx]


def to_faces(x: Array) -> Array:
    """``(..., 12 * nside**2)`` nested -> ``(..., 12, nside, nside)`` face images."""
    nside = nside_from_npix(x.shape[-1])
    return _take(x, face_permutation(nside)).reshape(*x.shape[:-1], 12, nside, nside)


def from_faces(x: Array) -> Array:
    """``(..., 12, nside, nside)`` face images -> ``(..., 12 * nside**2)`` nested.

    The inverse of :func:`to_faces`."""
    if x.ndim < 3 or x.shape[-3] != 12 or x.shape[-1] != x.shape[-2]:
        raise SchemaError(
            describe("face images (..., 12, nside, nside)", tuple(x.shape), where="from_faces")
        )
    nside = check_nside(x.shape[-1])
    flat = x.reshape(*x.shape[:-3], 12 * nside * nside)
    return _take(flat, _inverse_permutation(nside))


# ---- padding tables --------------------------------------------------------------------
_STEP = {(-1, 0): 0, (1, 0): 4, (0, 1): 2, (0, -1): 6}  # healpy order SW W NW N NE E SE S


def _walk(nside: int, prev: np.ndarray, cur: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Continue the straight grid lines ``prev -> cur`` (nested cells) by ``steps`` cells each."""
    prev, cur = prev.copy(), cur.copy()
    for k in range(int(steps.max(initial=0))):
        go = steps > k
        nb = hp.get_all_neighbours(nside, cur[go], nest=True)  # (8, m)
        back = np.argmax(nb == prev[go], axis=0)
        if not np.all(nb[back, np.arange(go.sum())] == prev[go]):
            raise RuntimeError("padding walk lost its grid line (nside too small for the width)")
        nxt = nb[(back + 4) % 8, np.arange(go.sum())]
        if np.any(nxt < 0):
            raise RuntimeError("padding walk reached a vertex with no cell ahead")
        prev[go], cur[go] = cur[go], nxt
    return cur


@lru_cache(maxsize=32)
def padding_tables(nside: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Two gather tables ``(12, n + 2w, n + 2w)`` of face-image flat indices (``f*n*n + x*n + y``).

    Padded value = mean of the two gathered cells; they differ only in the corners at the
    three-face vertices (see the module docstring).
    """
    n = check_nside(nside)
    if not 0 <= width <= n:
        raise SchemaError(describe(f"a padding width in 0..{n}", width, where="pad_faces"))
    if n == 1 and width == 1:
        return _base_ring()
    m = n + 2 * width
    f, a, b = np.meshgrid(
        np.arange(12), np.arange(-width, n + width), np.arange(-width, n + width), indexing="ij"
    )
    f, a, b = f.ravel(), a.ravel(), b.ravel()
    ca, cb = np.clip(a, 0, n - 1), np.clip(b, 0, n - 1)
    da, db = a - ca, b - cb  # signed distance outside the face along x and y

    def cell(fx, x, y):
        return hp.xyf2pix(n, x, y, fx, nest=True)

    # Walk along x out of the face (edge cells on the +-x sides, first leg of corners).
    sa = np.sign(da)
    pa = _walk(n, cell(f, ca - sa, cb), cell(f, ca, cb), np.abs(da))
    sb = np.sign(db)
    pb = _walk(n, cell(f, ca, cb - sb), cell(f, ca, cb), np.abs(db))
    first = np.where(da != 0, pa, pb)
    out_a, out_b = first.copy(), first.copy()
    corner = (da != 0) & (db != 0)
    if corner.any():
        c = np.flatnonzero(corner)
        # x then y: continue the padded column (a, cb - sb) -> (a, cb) by |db| cells.
        prev = _walk(
            n,
            cell(f[c], ca[c] - sa[c], cb[c] - sb[c]),
            cell(f[c], ca[c], cb[c] - sb[c]),
            np.abs(da[c]),
        )
        out_a[c] = _walk(n, prev, pa[c], np.abs(db[c]))
        prev = _walk(
            n,
            cell(f[c], ca[c] - sa[c], cb[c] - sb[c]),
            cell(f[c], ca[c] - sa[c], cb[c]),
            np.abs(db[c]),
        )
        out_b[c] = _walk(n, prev, pb[c], np.abs(da[c]))
    inv = _inverse_permutation(n)
    shape = (12, m, m)
    return inv[out_a].reshape(shape), inv[out_b].reshape(shape)


@lru_cache(maxsize=1)
def _base_ring() -> tuple[np.ndarray, np.ndarray]:
    """Width-1 tables at nside 1 (single-cell faces, no line to walk along): the 8
    neighbours from healpy; a missing corner takes its two adjacent edge neighbours."""
    ta = np.zeros((12, 3, 3), np.int64)
    offsets = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]
    for f in range(12):
        ta[f, 1, 1] = f
        nb = hp.get_all_neighbours(1, f, nest=True)
        for d, (dx, dy) in enumerate(offsets):
            ta[f, 1 + dx, 1 + dy] = nb[d]
    tb = ta.copy()
    for f in range(12):
        for cx, cy in ((0, 0), (0, 2), (2, 0), (2, 2)):
            if ta[f, cx, cy] < 0:
                ta[f, cx, cy], tb[f, cx, cy] = ta[f, cx, 1], ta[f, 1, cy]
    return ta, tb


def pad_faces(x: torch.Tensor, width: int) -> torch.Tensor:
    """Neighbour-correct padding: ``(B, C, 12, n, n) -> (B, C, 12, n + 2w, n + 2w)``."""
    if x.ndim != 5 or x.shape[2] != 12 or x.shape[-1] != x.shape[-2]:
        raise SchemaError(
            describe("face images (B, C, 12, nside, nside)", tuple(x.shape), where="pad_faces")
        )
    if width == 0:
        return x
    ta, tb = padding_tables(x.shape[-1], width)
    flat = x.flatten(2)
    ia = torch.as_tensor(ta, device=x.device)
    ib = torch.as_tensor(tb, device=x.device)
    return 0.5 * (flat[..., ia] + flat[..., ib])


class FacePad(nn.Module):
    """``pad_faces`` as a module: ``(B, C, 12, n, n) -> (B, C, 12, n + 2w, n + 2w)``."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_faces(x, self.width)


class FaceConv2d(nn.Module):
    """An ordinary Conv2d run on every face after neighbour-correct padding (no seams).

    ``(B, C, 12, n, n) -> (B, C', 12, n / stride, n / stride)``; padding ``(k - 1) // 2``
    (``k`` odd keeps the size at stride 1; ``k = stride`` is a non-overlapping downsample).
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, bias: bool = True
    ):
        super().__init__()
        self.pad = FacePad((kernel_size - 1) // 2)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        y = self.conv(rearrange(self.pad(x), "b c f h w -> (b f) c h w"))
        return rearrange(y, "(b f) c h w -> b c f h w", b=b)


class FaceUpsample(nn.Module):
    """Learned upsampling by ``factor`` (a power of two): face conv to ``out_ch * factor**2``
    channels, then pixel shuffle, so each coarse cell emits its nested children.

    ``(B, C, 12, n, n) -> (B, C', 12, n * factor, n * factor)``.
    """

    def __init__(self, in_ch: int, out_ch: int, factor: int = 2, kernel_size: int = 3):
        super().__init__()
        self.conv = FaceConv2d(in_ch, out_ch * factor**2, kernel_size)
        self.shuffle = nn.PixelShuffle(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        y = self.shuffle(rearrange(self.conv(x), "b c f h w -> (b f) c h w"))
        return rearrange(y, "(b f) c h w -> b c f h w", b=b)
