"""Seam diagnostic of fields assembled from tiles (patch-wise sampling, tiled decode).

A field stitched from tiles without proper blending shows a step wherever one tile's
contribution starts or stops. The diagnostic compares the mean absolute finite difference
*across* those tile edges with the mean absolute finite difference everywhere else::

    seam_ratio = mean_{(i, j) in E} |Δx_ij| / mean_{(i, j) not in E} |Δx_ij|

where Δx are the first differences along rows (x[p] - x[p-1]) and along columns, and E
holds the differences that straddle an interior tile edge p (row edges for the row
differences, column edges for the column differences). A seamless field gives a ratio
close to 1; a visible seam gives a ratio well above 1 (a field with less variability at
the edges, e.g. over-smoothed overlaps, gives a ratio below 1). NaN (masked) points are
left out.

:class:`SeamStats` accumulates the sums field by field, so the diagnostic of an ensemble
store larger than memory is computed one (member, time) field at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from kmscale.data.patches import TileLayout
from kmscale.errors import GridError, describe


def tile_edges(layout: TileLayout, scale: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Interior tile edges of ``layout`` in pixels of a field ``scale`` times finer.

    An edge ``p`` lies between pixels ``p - 1`` and ``p``: every tile start > 0 and every
    tile stop < the field size. ``scale`` maps a latent layout onto the decoded field
    (``scale`` = the autoencoder's downsample factor).

    Returns:
        (row edges, column edges), sorted int arrays (empty for a single tile).
    """
    out = []
    for axis, starts in enumerate(layout.starts):
        n, t = layout.shape[axis], layout.tile[axis]
        edges = {s for s in starts if s > 0} | {s + t for s in starts if s + t < n}
        out.append(np.array(sorted(edges), dtype=np.int64) * int(scale))
    return out[0], out[1]


def _edge_mask(n: int, edges: Iterable[int]) -> np.ndarray:
    """(n - 1,) bool: True for the difference x[p] - x[p - 1] at each edge p in 1..n-1."""
    mask = np.zeros(max(n - 1, 0), dtype=bool)
    for p in edges:
        if 0 < int(p) < n:
            mask[int(p) - 1] = True
    return mask


@dataclass
class SeamStats:
    """Running sums of |Δx| across and away from tile edges, for :func:`seam_ratio`.

    Args:
        row_edges, col_edges: interior tile edges (see :func:`tile_edges`), pixels.
    """

    row_edges: np.ndarray
    col_edges: np.ndarray
    sums: np.ndarray = field(default_factory=lambda: np.zeros(4))  # edge sum, n, other sum, n

    def add(self, x: np.ndarray) -> None:
        """Add one field or a stack of fields (..., H, W); NaN points are skipped."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 2:
            raise GridError(describe("a field (..., H, W)", x.shape, where="SeamStats.add"))
        rows = _edge_mask(x.shape[-2], self.row_edges)
        cols = _edge_mask(x.shape[-1], self.col_edges)
        for axis, edge in ((-2, rows[:, None]), (-1, cols[None, :])):
            d = np.abs(np.diff(x, axis=axis))
            ok = np.isfinite(d)
            on, off = ok & edge, ok & ~edge
            self.sums += (np.sum(d, where=on), on.sum(), np.sum(d, where=off), off.sum())

    @property
    def ratio(self) -> float:
        """Mean |Δx| across the edges / mean |Δx| elsewhere; NaN without edges or variation."""
        edge_sum, n_edge, other_sum, n_other = self.sums
        if n_edge == 0 or n_other == 0 or other_sum == 0:
            return float("nan")
        return float((edge_sum / n_edge) / (other_sum / n_other))


def seam_ratio(x: np.ndarray, row_edges: Iterable[int], col_edges: Iterable[int]) -> float:
    """Seam ratio (module docstring) of fields ``x`` (..., H, W) with the given tile edges."""
    stats = SeamStats(np.asarray(list(row_edges)), np.asarray(list(col_edges)))
    stats.add(x)
    return stats.ratio
