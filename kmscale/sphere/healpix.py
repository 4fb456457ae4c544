"""HEALPix grids in nested ordering and the nested hierarchy (coarsen, refine, upsample).

A field on a HEALPix grid is an array ``(..., npix)`` with ``npix = 12 * nside**2`` in
*nested* ordering (Górski et al. 2005): the ``4**k`` children of a cell at ``nside / 2**k``
are contiguous, so coarsening by ``4**k`` is a reshape and a mean, and refinement a repeat.
Pixel geometry and interpolation weights come from healpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import healpy as hp
import numpy as np
import torch

from kmscale.errors import SchemaError, describe

Array = np.ndarray | torch.Tensor


def check_nside(nside: int) -> int:
    """Return ``nside`` as an int if it is a positive power of two, else raise SchemaError."""
    if isinstance(nside, bool) or not isinstance(nside, (int, np.integer)):
        raise SchemaError(describe("an integer HEALPix nside", repr(nside), where="nside"))
    nside = int(nside)
    if nside < 1 or nside & (nside - 1):
        raise SchemaError(
            describe("a HEALPix nside that is a power of two (1, 2, 4, ...)", nside, where="nside")
        )
    return nside


def nside_from_npix(npix: int) -> int:
    """The nside of a full-sphere nested grid with ``npix`` cells (SchemaError otherwise)."""
    nside = int(round(np.sqrt(npix / 12)))
    if 12 * nside * nside != npix:
        raise SchemaError(describe("a cell count 12 * nside**2", npix, where="HEALPix field"))
    return check_nside(nside)


@dataclass(frozen=True)
class HealpixGrid:
    """A full-sphere HEALPix grid in nested ordering.

    Args:
        nside: cells per base-face side, a power of two; ``npix = 12 * nside**2``.
    """

    nside: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "nside", check_nside(self.nside))

    @property
    def npix(self) -> int:
        return 12 * self.nside**2

    @property
    def level(self) -> int:
        """Refinement level ``log2(nside)`` (level 0 = the 12 base cells)."""
        return self.nside.bit_length() - 1

    @cached_property
    def _lonlat(self) -> tuple[np.ndarray, np.ndarray]:
        return hp.pix2ang(self.nside, np.arange(self.npix), nest=True, lonlat=True)

    @property
    def lat(self) -> np.ndarray:
        """Cell-centre latitudes ``(npix,)``, degrees north."""
        return self._lonlat[1]

    @property
    def lon(self) -> np.ndarray:
        """Cell-centre longitudes ``(npix,)``, degrees east in [0, 360)."""
        return self._lonlat[0]

    @property
    def cell_area(self) -> float:
        """Area of every cell in steradians (HEALPix cells are equal-area): 4 pi / npix."""
        return hp.nside2pixarea(self.nside)

    @property
    def resolution_deg(self) -> float:
        """Square root of the cell area, degrees."""
        return float(np.degrees(np.sqrt(self.cell_area)))

    def attrs(self) -> dict:
        """CF-style grid attributes for a store or DataArray with a ``cell`` dim."""
        return {
            "grid_mapping_name": "healpix",
            "healpix_nside": self.nside,
            "healpix_order": "nested",
            "refinement_level": self.level,
        }

    def check(self, x: Array, *, where: str = "field") -> None:
        """Raise SchemaError unless the last axis of ``x`` has ``npix`` cells."""
        if x.shape[-1] != self.npix:
            raise SchemaError(
                describe(
                    f"{self.npix} cells on the last axis (nside {self.nside})",
                    f"shape {tuple(x.shape)}",
                    where=where,
                )
            )


def _cells(x: Array, where: str) -> int:
    npix = x.shape[-1]
    nside_from_npix(npix)
    return npix


def coarsen(x: Array, levels: int = 1) -> Array:
    """Mean over the ``4**levels`` contiguous nested children.

    ``(..., npix) -> (..., npix/4**levels)``.

    Equal-area cells make the plain mean the area mean, so the global mean is preserved exactly.
    """
    npix = _cells(x, "coarsen")
    k = 4**levels
    if levels < 0 or npix // k < 12:
        raise SchemaError(
            describe(f"0 <= levels <= log2(nside) ({npix} cells)", levels, where="coarsen")
        )
    shape = (*x.shape[:-1], npix // k, k)
    return x.reshape(shape).mean(-1)


def refine(x: Array, levels: int = 1) -> Array:
    """Piecewise-constant refinement (each cell repeated for its ``4**levels`` children)."""
    _cells(x, "refine")
    if levels < 0:
        raise SchemaError(describe("levels >= 0", levels, where="refine"))
    k = 4**levels
    if isinstance(x, torch.Tensor):
        return x.repeat_interleave(k, dim=-1)
    return np.repeat(x, k, axis=-1)


def upsample(x: Array, levels: int = 1) -> Array:
    """Bilinear refinement by healpy's interpolation (``get_interp_weights``) at the fine centres.

    ``(..., npix) -> (..., npix * 4**levels)``; NaN in any of the four source cells of a
    fine cell makes it NaN.
    """
    npix = _cells(x, "upsample")
    nside = nside_from_npix(npix)
    fine = HealpixGrid(nside * 2**levels)
    idx, w = _interp_weights(nside, fine.lon, fine.lat)
    return apply_weights(x, idx, w)


def _interp_weights(nside: int, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """healpy's 4-point bilinear weights ``(4, n)`` in nested ordering at ``lon, lat`` (deg)."""
    idx, w = hp.get_interp_weights(nside, lon, lat, nest=True, lonlat=True)
    return idx, w


def apply_weights(x: Array, idx: np.ndarray, w: np.ndarray) -> Array:
    """``sum_k w[k] * x[..., idx[k]]`` for weights ``(K, n)``; numpy or torch."""
    if isinstance(x, torch.Tensor):
        i = torch.as_tensor(idx, device=x.device)
        ww = torch.as_tensor(w, dtype=x.dtype, device=x.device)
        return (x[..., i] * ww).sum(-2)
    return (x[..., idx] * w).sum(-2).astype(np.result_type(x.dtype, np.float32), copy=False)
