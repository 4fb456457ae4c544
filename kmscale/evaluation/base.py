"""Shared pieces of the metrics: the ``Metric`` base class, input checks, spatial means.

Conventions (all metrics follow them):

- Fields are ``xr.DataArray`` with spatial dims ``(lat, lon)`` (regular lat-lon, 1-D
  ascending coordinates) or ``(y, x)`` (projected km grids, 2-D ``lat``/``lon``
  coordinates allowed). Ensembles carry a ``member`` dim.
- A point is *valid* when the truth, every member and the optional mask allow it.
  Invalid points give NaN in point-wise scores and are left out of spatial means.
  A spatial mean over no valid point is NaN (documented, never a silent 0).
- Spatial means are weighted by ``cos(lat)`` on regular lat-lon grids when
  ``area_weighted`` is set (cells shrink towards the poles); projected grids are
  treated as equal-area (their cells are, to the projection's accuracy).

The style follows weatherbench2's ``metrics.py``: each metric is a small dataclass with
one compute method over named dimensions, composites are built from parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr

from kmscale.errors import AlignmentError, GridError, SchemaError, UnitsError

MEMBER_DIM = "member"
LATLON_DIMS = ("lat", "lon")
PROJECTED_DIMS = ("y", "x")


def spatial_dims(da: xr.DataArray | xr.Dataset, *, where: str = "") -> tuple[str, str]:
    """The two spatial dims of ``da``: ``("lat", "lon")`` or ``("y", "x")``."""
    for dims in (LATLON_DIMS, PROJECTED_DIMS):
        if all(d in da.dims for d in dims):
            return dims
    raise SchemaError(
        f"{where + ': ' if where else ''}expected spatial dims (lat, lon) or (y, x), "
        f"found dims {tuple(da.dims)}"
    )


def require_member_dim(forecast: xr.DataArray, *, where: str = "forecast") -> int:
    """Check the ensemble has a ``member`` dim and return its size M."""
    if MEMBER_DIM not in forecast.dims:
        raise SchemaError(
            f"{where}: expected an ensemble with a {MEMBER_DIM!r} dim, found dims "
            f"{tuple(forecast.dims)} (a deterministic forecast needs member=1)"
        )
    return int(forecast.sizes[MEMBER_DIM])


def check_units(da: xr.DataArray, *, where: str) -> str:
    """Return the ``units`` attribute, raising UnitsError when it is missing."""
    units = da.attrs.get("units")
    if units is None or str(units).strip() == "":
        raise UnitsError(f"{where}: expected a 'units' attribute, found none")
    return str(units)


def check_aligned(
    forecast: xr.DataArray | xr.Dataset,
    truth: xr.DataArray | xr.Dataset,
    *,
    where: str = "",
    rtol: float = 1e-6,
) -> None:
    """Refuse forecast/truth pairs on different grids or times.

    Coordinates of every dim the two share (and the 2-D lat/lon of projected grids)
    must be equal; a forecast with a dim the truth lacks is fine only for ``member``.

    Raises:
        GridError: spatial dims or coordinates differ.
        AlignmentError: times (or lead times) differ.
    """
    prefix = f"{where}: " if where else ""
    fdims = spatial_dims(forecast, where=f"{prefix}forecast")
    tdims = spatial_dims(truth, where=f"{prefix}truth")
    if fdims != tdims:
        raise GridError(
            f"{prefix}expected forecast and truth on one grid type, found forecast {fdims} and "
            f"truth {tdims}"
        )
    for d in fdims:
        if forecast.sizes[d] != truth.sizes[d]:
            raise GridError(
                f"{prefix}expected truth {d} size {forecast.sizes[d]} (the forecast's), found "
                f"{truth.sizes[d]}"
            )
    for name in set(fdims) | {"lat", "lon"}:
        if name in forecast.coords and name in truth.coords:
            fc, tc = forecast[name], truth[name]
            if fc.shape != tc.shape or not np.allclose(
                np.asarray(fc.values, dtype=float),
                np.asarray(tc.values, dtype=float),
                rtol=rtol,
                atol=1e-6,
            ):
                raise GridError(
                    f"{prefix}expected forecast and truth on the same grid, found different "
                    f"{name!r} coordinates (forecast {_span(fc)}, truth {_span(tc)})"
                )
    for d in forecast.dims:
        if d in fdims or d == MEMBER_DIM:
            continue
        if d not in truth.dims:
            raise AlignmentError(
                f"{prefix}expected truth to have the forecast's dim {d!r}, found dims "
                f"{tuple(truth.dims)}"
            )
        if forecast.sizes[d] != truth.sizes[d]:
            raise AlignmentError(
                f"{prefix}expected {forecast.sizes[d]} {d!r} steps in truth, found {truth.sizes[d]}"
            )
        if d in forecast.coords and d in truth.coords:
            fv, tv = forecast[d].values, truth[d].values
            if not np.array_equal(fv, tv):
                bad = int(np.argmax(fv != tv)) if fv.shape == tv.shape else 0
                raise AlignmentError(
                    f"{prefix}expected the same {d!r} in forecast and truth, found forecast "
                    f"{fv[bad]} vs truth {tv[bad]} at index {bad}"
                )


def _span(c: xr.DataArray) -> str:
    v = np.asarray(c.values)
    if v.size == 0:
        return "empty"
    return f"shape {v.shape}, {v.min():.4g}..{v.max():.4g}"


def area_weights(da: xr.DataArray | xr.Dataset) -> xr.DataArray | None:
    """cos(lat) weights on a regular lat-lon grid; None for projected grids (equal-area)."""
    if spatial_dims(da) == LATLON_DIMS and "lat" in da.coords and da["lat"].dims == ("lat",):
        w = np.cos(np.deg2rad(da["lat"].astype(float)))
        return w.clip(min=0.0)
    return None


def valid_mask(
    truth: xr.DataArray, forecast: xr.DataArray | None = None, mask: xr.DataArray | None = None
) -> xr.DataArray:
    """True where the truth, every member and the mask allow a point to be scored."""
    ok = truth.notnull()
    if forecast is not None:
        fo = forecast.notnull()
        ok = ok & (fo.all(MEMBER_DIM) if MEMBER_DIM in fo.dims else fo)
    if mask is not None:
        ok = ok & mask.astype(bool)
    return ok


def spatial_mean(
    field: xr.DataArray,
    dims: Sequence[Hashable],
    *,
    weights: xr.DataArray | None = None,
    mask: xr.DataArray | None = None,
) -> xr.DataArray:
    """Weighted mean of ``field`` over ``dims``, leaving out NaN and masked points.

    ``sum(w * f) / sum(w)`` over valid points, summed in float64; NaN where no point
    is valid.
    """
    dims = list(dims)
    ok = mask.astype(bool) if mask is not None else xr.DataArray(True)
    w = weights if weights is not None else xr.DataArray(1.0)
    if any(a.chunks is not None for a in (field, ok, w)):
        valid = field.notnull() & ok
        wv = valid.astype(np.float64) * w
        num = (field.fillna(0.0) * wv).sum(dims)
        den = wv.sum(dims)
        return num / den.where(den > 0)
    # In memory: one numpy kernel instead of ~10 xarray operations (their overhead
    # dominates on small fields scored many times), on broadcast views (no copies).
    field, ok, w = xr.broadcast(field, ok, w)
    return xr.apply_ufunc(
        _weighted_mean, field, ok, w,
        input_core_dims=[dims, dims, dims], kwargs={"n_axes": len(dims)},
    )  # fmt: skip


def _weighted_mean(f: np.ndarray, ok: np.ndarray, w: np.ndarray, n_axes: int) -> np.ndarray:
    axes = tuple(range(-n_axes, 0))
    valid = ok & ~np.isnan(f)
    wv = np.where(valid, w, 0.0).astype(np.float64, copy=False)
    num = (np.where(valid, f, 0.0) * wv).sum(axis=axes)
    den = wv.sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


@dataclasses.dataclass
class Metric:
    """A score of ``forecast`` against ``truth`` reduced over spatial (and given) dims.

    Subclasses implement :meth:`pointwise`; ratio-type metrics override :meth:`compute`.
    """

    def pointwise(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.DataArray:
        """Per-point score, same dims as ``truth`` (member dim consumed)."""
        raise NotImplementedError

    def compute(
        self,
        forecast: xr.DataArray,
        truth: xr.DataArray,
        *,
        reduce_dims: Sequence[Hashable] | None = None,
        mask: xr.DataArray | None = None,
        area_weighted: bool = True,
    ) -> xr.DataArray:
        """Spatial (weighted, NaN- and mask-aware) mean of :meth:`pointwise`.

        Args:
            reduce_dims: dims averaged over; default the two spatial dims.
            mask: boolean field, True where points are scored.
            area_weighted: cos(lat) weights on regular lat-lon grids.
        """
        check_aligned(forecast, truth, where=type(self).__name__)
        return self.reduce(
            self.pointwise(forecast, truth), truth,
            reduce_dims=reduce_dims, mask=mask, area_weighted=area_weighted,
        )  # fmt: skip

    def reduce(
        self,
        field: xr.DataArray,
        truth: xr.DataArray,
        *,
        reduce_dims: Sequence[Hashable] | None = None,
        mask: xr.DataArray | None = None,
        area_weighted: bool = True,
    ) -> xr.DataArray:
        """The spatial mean :meth:`compute` takes of a :meth:`pointwise` field.

        Lets a caller reduce one point-wise field over several regions (masks) without
        computing it again; ``truth`` gives the grid (dims, cos(lat) weights).
        """
        dims = list(reduce_dims) if reduce_dims is not None else list(spatial_dims(truth))
        weights = area_weights(truth) if area_weighted else None
        return spatial_mean(field, dims, weights=weights, mask=mask)
