"""Regional HEALPix: the cells at a high nside that cover a limited-area (km-scale) domain.

A regional field is ``(..., ncell)`` over ``RegionalHealpix.cells``, the sorted nested
indices of the covered cells, so the nested hierarchy still holds inside the region (a cell's
children are the cells ``4 * c .. 4 * c + 3`` at the next level). A 1 km domain of
4384 x 6880 points sits at nside 8192 (cells of about 0.78 km); mappings are computed in
chunks of points so that the full domain fits in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import healpy as hp
import numpy as np

from kmscale.errors import SchemaError, describe
from kmscale.sphere.healpix import HealpixGrid

CHUNK = 2**20  # points per healpy call: bounds the temporary memory to tens of MB


def _points(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if lat.ndim == 1 and lon.ndim == 1:
        return lat, lon, (lat.size, lon.size)
    if lat.ndim == 2 and lat.shape == lon.shape:
        return lat, lon, lat.shape
    raise SchemaError(
        describe(
            "1-D lat and lon, or 2-D lat/lon of one shape",
            f"{lat.shape}, {lon.shape}",
            where="RegionalHealpix",
        )
    )


@dataclass(eq=False)
class RegionalHealpix:
    """The HEALPix cells covering the points of a lat/lon grid, with both mappings.

    Args:
        nside: resolution (power of two); its cells should be no smaller than the grid
            spacing, or some covered cells receive no point.
        lat, lon: 1-D coordinates of a regular grid, or 2-D arrays (a projected grid), deg.
    """

    nside: int
    lat: np.ndarray
    lon: np.ndarray
    cells: np.ndarray = field(init=False)  # (ncell,) sorted nested indices
    point_cell: np.ndarray = field(init=False)  # (npoint,) position of each point's cell
    shape: tuple = field(init=False)

    def __post_init__(self) -> None:
        self.grid = HealpixGrid(self.nside)
        self.lat, self.lon, self.shape = _points(self.lat, self.lon)
        pix = np.empty(int(np.prod(self.shape)), np.int64)
        for start, la, lo in self._chunks():
            pix[start : start + la.size] = hp.ang2pix(self.nside, lo, la, nest=True, lonlat=True)
        self.cells, inverse = np.unique(pix, return_inverse=True)
        self.point_cell = inverse.astype(np.int32 if self.cells.size < 2**31 else np.int64)
        self._count = np.bincount(self.point_cell, minlength=self.cells.size)

    def _chunks(self):
        """Yield ``(start, lat, lon)`` of the flattened points, ``CHUNK`` at a time."""
        n = int(np.prod(self.shape))
        for start in range(0, n, CHUNK):
            flat = np.arange(start, min(n, start + CHUNK))
            if self.lat.ndim == 1:
                i, j = np.divmod(flat, self.shape[1])
                yield start, self.lat[i], self.lon[j]
            else:
                yield start, self.lat.ravel()[flat], self.lon.ravel()[flat]

    @property
    def ncell(self) -> int:
        return int(self.cells.size)

    def to_cells(self, values: np.ndarray) -> np.ndarray:
        """Grid fields ``(..., *shape)`` -> cell means ``(..., ncell)`` (NaN points skipped)."""
        values = np.asarray(values, float)
        if values.shape[-len(self.shape) :] != self.shape:
            raise SchemaError(
                describe(
                    f"fields (..., {self.shape})", values.shape, where="RegionalHealpix.to_cells"
                )
            )
        flat = values.reshape(-1, int(np.prod(self.shape)))
        out = np.empty((flat.shape[0], self.ncell))
        for k, row in enumerate(flat):
            ok = np.isfinite(row)
            s = np.bincount(self.point_cell[ok], row[ok], minlength=self.ncell)
            c = np.bincount(self.point_cell[ok], minlength=self.ncell)
            with np.errstate(invalid="ignore"):
                out[k] = s / c
        return out.reshape(*values.shape[: -len(self.shape)], self.ncell)

    def to_grid(self, values: np.ndarray) -> np.ndarray:
        """Cell fields ``(..., ncell)`` -> grid ``(..., *shape)``, healpy bilinear weights;
        stencil cells outside the region drop out and the others are renormalised."""
        values = np.asarray(values, float)
        if values.shape[-1] != self.ncell:
            raise SchemaError(
                describe(
                    f"{self.ncell} regional cells", values.shape, where="RegionalHealpix.to_grid"
                )
            )
        flat = values.reshape(-1, self.ncell)
        out = np.empty((flat.shape[0], int(np.prod(self.shape))))
        for start, la, lo in self._chunks():
            idx, w = hp.get_interp_weights(self.nside, lo, la, nest=True, lonlat=True)
            pos = np.clip(np.searchsorted(self.cells, idx), 0, self.ncell - 1)
            w = np.where(self.cells[pos] == idx, w, 0.0)
            w = w / w.sum(0, keepdims=True)
            out[:, start : start + la.size] = (flat[:, pos] * w).sum(-2)
        return out.reshape(*values.shape[:-1], *self.shape)

    def to_global(self, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """Regional ``(..., ncell)`` -> full sphere ``(..., npix)`` with ``fill`` elsewhere."""
        values = np.asarray(values)
        out = np.full(
            (*values.shape[:-1], self.grid.npix), fill, dtype=np.result_type(values, fill)
        )
        out[..., self.cells] = values
        return out
