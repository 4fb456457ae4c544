"""Patch sampling for training and overlapping tiles for inference on large fields.

Tiled inference (fields too large to process whole):

    layout = TileLayout(shape=(H, W), tile=(256, 256), overlap=(32, 32))
    acc = TileAccumulator(layout, lead_shape=(C,), like=x)
    for i, (sy, sx) in enumerate(layout.slices):
        acc.add(i, model(x[..., sy, sx]))
    y = acc.result()                      # (C, H, W): weighted mean where tiles overlap

Each output pixel is the weighted mean ``sum_i w_i(p) y_i(p) / sum_i w_i(p)`` over the
tiles ``i`` covering it, with ``w`` the tile's :meth:`TileLayout.window`: a separable
window that is 1 in the tile's interior and tapers (sin^2 ramp) across the overlap, so
seams between tiles blend smoothly. Every weight is strictly positive, so a pixel
covered by one tile only (the field's edges) gets exactly that tile's value, and
``stitch_tiles(extract_tiles(x, layout), layout) == x`` up to rounding.

Training patches: :func:`random_patch` draws a window uniformly, or centred on a pixel
drawn with probability proportional to ``weights`` (e.g. more heavy-rain patches).

Everything works on numpy arrays and on torch tensors (any device), shaped
``(..., H, W)``; torch is never imported here unless a tensor is passed in.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kmscale.errors import GridError, describe

Slices = tuple[slice, slice]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    items = tuple(int(v) for v in value)
    if len(items) != 2:
        raise GridError(describe(f"{name} as an int or a pair (rows, cols)", value))
    return items  # type: ignore[return-value]


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: stride ``tile - overlap``, last tile flush with the edge."""
    stride = tile - overlap
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _ramp(n: int, overlap: int) -> np.ndarray:
    """1-D window of length ``n``: sin^2 ramp over ``overlap`` pixels at each end, 1 inside.

    Sampled at pixel centres, ``(k + 0.5) / overlap``, so the smallest weight is
    ``sin^2(pi / (4 overlap)) > 0``: no pixel is ever weighted zero.
    """
    w = np.ones(n, dtype=np.float64)
    if overlap > 0:
        ramp = np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / overlap) ** 2
        w[:overlap] = ramp
        w[n - overlap :] = np.minimum(w[n - overlap :], ramp[::-1])
    return w


@dataclass(frozen=True)
class TileLayout:
    """Overlapping tiles covering a field of ``shape`` pixels.

    Args:
        shape: field size (H, W) in pixels.
        tile: tile size (th, tw); an int means square tiles.
        overlap: nominal overlap (oh, ow) between neighbouring tiles, ``0 <= o < t``.
            The last tile of a row/column is placed flush with the field's edge, so its
            overlap with its neighbour can be larger than nominal.

    Raises:
        GridError: the field is smaller than one tile, or the overlap is not in [0, tile).
    """

    shape: tuple[int, int]
    tile: tuple[int, int]
    overlap: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        shape, tile, overlap = (
            _pair(self.shape, "shape"),
            _pair(self.tile, "tile"),
            _pair(self.overlap, "overlap"),
        )
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "tile", tile)
        object.__setattr__(self, "overlap", overlap)
        for axis in range(2):
            if tile[axis] <= 0:
                raise GridError(describe("positive tile sizes", tile, where="TileLayout"))
            if shape[axis] < tile[axis]:
                raise GridError(
                    describe(
                        f"a field at least one tile {tile} large",
                        f"a field of shape {shape}",
                        where="TileLayout",
                    )
                )
            if not 0 <= overlap[axis] < tile[axis]:
                raise GridError(
                    describe(
                        f"overlap in [0, tile) = [0, {tile[axis]})",
                        f"overlap {overlap}",
                        where="TileLayout",
                    )
                )

    @property
    def starts(self) -> tuple[list[int], list[int]]:
        """Tile origins along rows and along columns."""
        return (
            _starts(self.shape[0], self.tile[0], self.overlap[0]),
            _starts(self.shape[1], self.tile[1], self.overlap[1]),
        )

    @property
    def grid(self) -> tuple[int, int]:
        """Number of tiles along rows and along columns."""
        rows, cols = self.starts
        return len(rows), len(cols)

    @property
    def slices(self) -> list[Slices]:
        """``(row_slice, col_slice)`` of every tile, row-major; together they cover the field."""
        rows, cols = self.starts
        th, tw = self.tile
        return [(slice(r, r + th), slice(c, c + tw)) for r in rows for c in cols]

    def __len__(self) -> int:
        ny, nx = self.grid
        return ny * nx

    def window(self) -> np.ndarray:
        """Blending weights, float64 (th, tw): 1 inside, sin^2 taper across the overlaps, > 0."""
        wy = _ramp(self.tile[0], self.overlap[0])
        wx = _ramp(self.tile[1], self.overlap[1])
        return np.outer(wy, wx)

    def scaled(self, factor: int) -> TileLayout:
        """The same layout with every size divided by ``factor`` (pixel -> latent layout).

        The tiles of the scaled layout are exactly the original tiles divided by
        ``factor``, so latents tiled with it line up with pixel tiles.

        Raises:
            GridError: a size (shape, tile or overlap) is not divisible by ``factor``.
        """
        factor = int(factor)
        if factor <= 0:
            raise GridError(describe("a positive scale factor", factor, where="TileLayout.scaled"))
        sizes = {"shape": self.shape, "tile": self.tile, "overlap": self.overlap}
        for name, value in sizes.items():
            if value[0] % factor or value[1] % factor:
                raise GridError(
                    describe(
                        f"{name} divisible by the factor {factor}",
                        f"{name} {value}",
                        where="TileLayout.scaled",
                    )
                )
        return TileLayout(
            shape=(self.shape[0] // factor, self.shape[1] // factor),
            tile=(self.tile[0] // factor, self.tile[1] // factor),
            overlap=(self.overlap[0] // factor, self.overlap[1] // factor),
        )


# ----------------------------------------------------------------------------- arrays


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _check_field(x: Any, layout: TileLayout, what: str) -> None:
    if tuple(x.shape[-2:]) != layout.shape:
        raise GridError(
            describe(
                f"{what} ending in the layout's field shape {layout.shape}",
                f"shape {tuple(x.shape)}",
                where=what,
            )
        )


def extract_tiles(x: Any, layout: TileLayout) -> Any:
    """Cut a field into the layout's tiles.

    Args:
        x: numpy array or torch tensor (..., H, W) with (H, W) == ``layout.shape``.

    Returns:
        Same array type, (N, ..., th, tw) with N = ``len(layout)``, in ``layout.slices`` order
        (a copy, ready to batch through a network).
    """
    _check_field(x, layout, "extract_tiles input")
    tiles = [x[..., sy, sx] for sy, sx in layout.slices]
    if _is_torch(x):
        return sys.modules["torch"].stack(tiles)
    return np.stack(tiles)


class TileAccumulator:
    """Streaming weighted mean of tiles: add tiles one at a time, read the stitched field.

    Memory is one output field plus one (H, W) weight sum, so predictions of a very
    large field never have to be held as a stack of tiles.

    Args:
        layout: the tile layout.
        lead_shape: leading dims of each tile, e.g. (C,) for tiles (C, th, tw); () for 2-D.
        like: an array whose type (numpy/torch), device and floating dtype the result takes.
            Sums run in float64 for numpy and in at least float32 for torch.
    """

    def __init__(self, layout: TileLayout, lead_shape: Sequence[int] = (), like: Any = None):
        self.layout = layout
        self.lead_shape = tuple(int(n) for n in lead_shape)
        self._torch = _is_torch(like)
        self._added = np.zeros(len(layout), dtype=bool)
        window = layout.window()
        full = self.lead_shape + layout.shape
        if self._torch:
            torch = sys.modules["torch"]
            self._out_dtype = like.dtype if like.dtype.is_floating_point else torch.float32
            acc_dtype = torch.float64 if self._out_dtype == torch.float64 else torch.float32
            self._window = torch.as_tensor(window, dtype=acc_dtype, device=like.device)
            self._num = torch.zeros(full, dtype=acc_dtype, device=like.device)
            self._den = torch.zeros(layout.shape, dtype=acc_dtype, device=like.device)
        else:
            dtype = np.asarray(like).dtype if like is not None else np.dtype(np.float64)
            self._out_dtype = dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)
            self._window = window
            self._num = np.zeros(full, dtype=np.float64)
            self._den = np.zeros(layout.shape, dtype=np.float64)

    def add(self, index: int, tile: Any) -> None:
        """Add tile ``index`` (position in ``layout.slices``), shaped lead_shape + (th, tw)."""
        expected = self.lead_shape + self.layout.tile
        if tuple(tile.shape) != expected:
            raise GridError(
                describe(f"tile shape {expected}", tuple(tile.shape), where=f"tile {index}")
            )
        if not 0 <= index < len(self.layout):
            raise GridError(describe(f"a tile index in [0, {len(self.layout)})", index))
        sy, sx = self.layout.slices[index]
        if self._torch:
            tile = tile.to(device=self._num.device, dtype=self._num.dtype)
        else:
            tile = np.asarray(tile, dtype=np.float64)
        self._num[..., sy, sx] += self._window * tile
        self._den[sy, sx] += self._window
        self._added[index] = True

    def add_batch(self, indices: Sequence[int], tiles: Any) -> None:
        """Add several tiles at once: ``tiles`` (len(indices), *lead_shape, th, tw)."""
        if len(indices) != len(tiles):
            raise GridError(describe(f"{len(indices)} tiles", len(tiles), where="add_batch"))
        for index, tile in zip(indices, tiles, strict=True):
            self.add(int(index), tile)

    def result(self) -> Any:
        """Stitched field lead_shape + (H, W), in the type, device and dtype of ``like``.

        Raises:
            GridError: some tiles were never added (their pixels would have no value).
        """
        missing = np.flatnonzero(~self._added)
        if missing.size:
            raise GridError(
                describe(
                    f"all {len(self.layout)} tiles added before result()",
                    f"{missing.size} missing (first: {missing[:5].tolist()})",
                    where="TileAccumulator",
                )
            )
        out = self._num / self._den
        if self._torch:
            return out.to(self._out_dtype)
        return out.astype(self._out_dtype, copy=False)


def stitch_tiles(tiles: Any, layout: TileLayout) -> Any:
    """Blend tiles back into one field (weighted mean in the overlaps).

    Args:
        tiles: (N, ..., th, tw) array/tensor or a sequence of N tiles, in ``layout.slices`` order.

    Returns:
        (..., H, W) of the same type, device and floating dtype as the tiles.
    """
    if len(tiles) != len(layout):
        raise GridError(describe(f"{len(layout)} tiles for layout {layout}", len(tiles)))
    first = tiles[0]
    acc = TileAccumulator(layout, lead_shape=tuple(first.shape[:-2]), like=first)
    acc.add_batch(range(len(layout)), tiles)
    return acc.result()


# ----------------------------------------------------------------------------- sampling


def _cell_edges(size: int, cells: int, cell: int | None = None) -> np.ndarray:
    """Pixel edges of ``cells`` cells along ``size`` pixels: ``cell`` pixels each (the last
    one cut at the edge) when given, otherwise near-equal cells."""
    if cell is not None:
        return np.minimum(np.arange(cells + 1) * cell, size)
    return (np.arange(cells + 1) * size) // cells


def random_patch(
    shape: Sequence[int],
    patch: int | Sequence[int],
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
    cell: int | Sequence[int] | None = None,
) -> Slices:
    """Draw a random patch window inside a field.

    Args:
        shape: field size (H, W).
        patch: patch size (ph, pw) (an int means square).
        rng: numpy Generator (the caller owns the seed; workers pass their own).
        weights: optional non-negative sampling weights, either per pixel (H, W) or on a
            coarser (h, w) grid of cells splitting the field into near-equal blocks (cheap
            for very large fields, e.g. block sums of heavy-precipitation pixels). A cell
            is drawn with probability proportional to its weight, a pixel uniformly inside
            it, and the patch is centred on that pixel, shifted to stay inside the field.
            Mix in a constant (``weights + eps``) to keep every region reachable.
            Without weights the patch origin is uniform over all valid positions.
        cell: size (cy, cx) in pixels of the weight cells, the last row/column of cells
            cut at the field's edge (as ``xarray.coarsen(boundary="pad")`` makes them);
            ``ceil(H / cy)`` must equal h. None: near-equal cells.

    Returns:
        (row_slice, col_slice) of the patch.

    Raises:
        GridError: the patch is larger than the field, or the weights are unusable.
    """
    H, W = _pair(shape, "shape")
    ph, pw = _pair(patch, "patch")
    if ph > H or pw > W or ph <= 0 or pw <= 0:
        raise GridError(describe(f"a patch within the field {(H, W)}", f"patch {(ph, pw)}"))
    if weights is None:
        r0 = int(rng.integers(0, H - ph + 1))
        c0 = int(rng.integers(0, W - pw + 1))
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[0] > H or w.shape[1] > W:
            raise GridError(
                describe(
                    f"weights (h, w) with h <= {H}, w <= {W}",
                    f"shape {w.shape}",
                    where="random_patch",
                )
            )
        total = w.sum()
        if not np.isfinite(total) or total <= 0 or (w < 0).any():
            raise GridError(
                describe(
                    "finite non-negative weights with a positive sum",
                    f"sum {total}",
                    where="random_patch",
                )
            )
        cy, cx = (None, None) if cell is None else _pair(cell, "cell")
        if cell is not None and (-(-H // cy), -(-W // cx)) != w.shape:
            raise GridError(
                describe(
                    f"weights of shape (ceil(H / cy), ceil(W / cx)) = {(-(-H // cy), -(-W // cx))}",
                    f"shape {w.shape}",
                    where="random_patch",
                )
            )
        index = int(rng.choice(w.size, p=(w / total).ravel()))
        ci, cj = divmod(index, w.shape[1])
        ey, ex = _cell_edges(H, w.shape[0], cy), _cell_edges(W, w.shape[1], cx)
        y = int(rng.integers(ey[ci], ey[ci + 1]))
        x = int(rng.integers(ex[cj], ex[cj + 1]))
        r0 = min(max(y - ph // 2, 0), H - ph)
        c0 = min(max(x - pw // 2, 0), W - pw)
    return slice(r0, r0 + ph), slice(c0, c0 + pw)
