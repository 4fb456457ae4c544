"""Companion fields of total precipitation for pseudo-precipitation encoders.

Pseudo-precipitation (Radhakrishnan et al. 2024, "Continuous latent representations for
modeling precipitation with deep learning", arXiv:2412.14620) blends total precipitation
TP with a continuous field that carries the rain's physics where TP is zero. This module
computes those companions on a regular latitude-longitude grid:

- :func:`vimd`: vertically integrated moisture (flux) divergence from u, v, q on pressure
  levels and the surface pressure (the published companion)::

      Q_lambda = 1/g int_{p_top}^{p_s} q u dp,   Q_phi = 1/g int_{p_top}^{p_s} q v dp
      VIMD = 1/(a cos phi) [ dQ_lambda/dlambda + d(Q_phi cos phi)/dphi ]    kg m-2 s-1

  (negative where moisture converges, i.e. where it rains).
- :func:`rain_edge_distance`: a companion from TP alone for data without winds and
  humidity: the signed distance to the rain edge, positive inside rain and negative
  (growing smoothly) into the dry area, in km.
- :func:`tp_to_mm_per_hour`: TP in any of the units precipitation arrives in, to mm h-1.
- :func:`check_tp` / :func:`check_companion`: the bad-input checks (negative or NaN TP,
  a companion on another grid or at other times).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from kmscale.data import units as units_mod
from kmscale.errors import AlignmentError, GridError, MissingValueError, SchemaError, UnitsError

G = 9.80665  # m s-2, standard gravity
EARTH_RADIUS_M = 6_371_000.0


# ---- units of TP ------------------------------------------------------------------------
def tp_to_mm_per_hour(values, units: str, period: str | float | None = None):
    """TP (array or DataArray) in ``units`` -> mean rate in mm h-1 over its period.

    Rates (mm h-1, m s-1, mm s-1, kg m-2 s-1) convert directly. Amounts (m, mm, kg m-2:
    ERA5 ``tp`` is an amount accumulated over the hour ending at the valid time) need
    ``period`` ("1h", "15min", a timedelta, or hours as a number), because a 6-hour total
    is not an hourly rate. The factors are :func:`kmscale.data.units.conversion`'s.

    Raises:
        UnitsError: units that are not precipitation, or an amount without its period.
    """
    if isinstance(period, (int, float)):
        period = pd.Timedelta(hours=float(period))
    scale, _ = units_mod.conversion(units, "tp", period=period, where="tp")
    return values * scale


def check_tp(tp: np.ndarray | xr.DataArray, *, allow_nan: bool = False, where: str = "tp") -> None:
    """Raise unless TP is >= 0 everywhere (and finite unless ``allow_nan``: a mask)."""
    a = np.asarray(tp)
    nan = np.isnan(a)
    if nan.any() and not allow_nan:
        raise MissingValueError(
            f"{where}: expected finite precipitation, found {int(nan.sum())} NaN values "
            f"(pass allow_nan=True if NaN marks a mask, e.g. outside a radar composite)"
        )
    finite = a[~nan]
    if finite.size and finite.min() < 0:
        raise SchemaError(
            f"{where}: expected precipitation >= 0, found {int((finite < 0).sum())} negative "
            "values "
            f"(minimum {finite.min():g})"
        )


def check_companion(tp: xr.DataArray, companion: xr.DataArray, *, name: str = "companion") -> None:
    """Raise unless ``companion`` has TP's dims, grid coordinates and times."""
    if tuple(companion.dims) != tuple(tp.dims) or companion.shape != tp.shape:
        raise GridError(
            f"{name}: expected the dims/shape of tp {dict(tp.sizes)}, found {dict(companion.sizes)}"
        )
    for dim in tp.dims:
        if dim not in tp.coords or dim not in companion.coords:
            continue
        a, b = tp[dim].values, companion[dim].values
        same = np.array_equal(a, b) if a.dtype.kind in "mMOU" else np.allclose(a, b, atol=1e-6)
        if not same:
            err = AlignmentError if a.dtype.kind == "M" else GridError
            raise err(
                f"{name}: expected the {dim} coordinate of tp ({a[0]}..{a[-1]}, {a.size}), "
                f"found {b[0]}..{b[-1]} ({b.size})"
            )


# ---- VIMD -----------------------------------------------------------------------------
def column_flux(q: np.ndarray, wind: np.ndarray, p: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """1/g int_{p_top}^{p_s} q * wind dp (kg m-1 s-1), trapezoid rule in p.

    Args:
        q: specific humidity (..., L, Y, X) in kg kg-1, levels ordered top (low p) first.
        wind: u or v (..., L, Y, X) in m s-1.
        p: level pressures (L,) in Pa, increasing.
        sp: surface pressure (..., Y, X) in Pa. The profile q * wind is linear in p
            between levels; the layer holding p_s is integrated to p_s (with the profile
            interpolated there), layers below it are left out, and a surface below the
            deepest level continues that level's value down to p_s.
    """
    f = q * wind
    sp_l = sp[..., None, :, :]
    p_top, p_bot = p[:-1].reshape(-1, 1, 1), p[1:].reshape(-1, 1, 1)
    f_top, f_bot = f[..., :-1, :, :], f[..., 1:, :, :]
    # Fraction of each layer above the surface (1: whole, 0: underground).
    frac = np.clip((sp_l - p_top) / (p_bot - p_top), 0.0, 1.0)
    f_end = f_top + (f_bot - f_top) * frac  # the profile at the layer's lower end (or p_s)
    flux = (0.5 * (f_top + f_end) * frac * (p_bot - p_top)).sum(axis=-3)
    flux = flux + f[..., -1, :, :] * np.maximum(sp - p[-1], 0.0)
    return flux / G


def spherical_divergence(
    fx: np.ndarray, fy: np.ndarray, lat: np.ndarray, lon: np.ndarray
) -> np.ndarray:
    """div F = 1/(a cos phi) [dF_lambda/dlambda + d(F_phi cos phi)/dphi] on a lat-lon grid.

    ``fx``/``fy`` (..., Y, X) are the eastward/northward components; ``lat``/``lon`` in
    degrees (any order). Centred differences inside, one-sided at the edges (np.gradient).
    """
    phi = np.deg2rad(np.asarray(lat, dtype=np.float64))
    lam = np.deg2rad(np.asarray(lon, dtype=np.float64))
    cos = np.cos(phi)[:, None]
    d_lam = np.gradient(fx, lam, axis=-1)
    d_phi = np.gradient(fy * cos, phi, axis=-2)
    return (d_lam + d_phi) / (EARTH_RADIUS_M * cos)


def vimd(ds: xr.Dataset, *, level_dim: str = "level", level_units: str = "hPa") -> xr.DataArray:
    """Vertically integrated moisture divergence (kg m-2 s-1) from ``u``, ``v``, ``q``
    (time, level, lat, lon) and ``sp`` (Pa). Negative where moisture converges."""
    missing = [v for v in ("u", "v", "q", "sp") if v not in ds]
    if missing:
        raise SchemaError(f"vimd: expected variables u, v, q, sp, missing {missing}")
    scale = {"hpa": 100.0, "pa": 1.0}.get(level_units.lower())
    if scale is None:
        raise UnitsError(f"vimd: expected level units 'hPa' or 'Pa', found {level_units!r}")
    ds = ds.sortby(level_dim)  # top (low pressure) first
    ydim, xdim = ds["sp"].dims[-2:]
    order = [d for d in ds["q"].dims if d not in (level_dim, ydim, xdim)] + [level_dim, ydim, xdim]
    q, u, v = (ds[n].transpose(*order).values.astype(np.float64) for n in ("q", "u", "v"))
    p = ds[level_dim].values.astype(np.float64) * scale
    sp = ds["sp"].transpose(*order[:-3], ydim, xdim).values.astype(np.float64)
    fx, fy = column_flux(q, u, p, sp), column_flux(q, v, p, sp)
    div = spherical_divergence(fx, fy, ds[ydim].values, ds[xdim].values)
    return xr.DataArray(
        div,
        dims=(*order[:-3], ydim, xdim),
        coords=ds["sp"].coords,
        name="vimd",
        attrs={"units": "kg m-2 s-1", "long_name": "vertically integrated moisture divergence"},
    )


# ---- a companion from TP alone --------------------------------------------------------
def rain_edge_distance(
    tp: np.ndarray,
    *,
    threshold: float = 0.0,
    spacing_km: float | Sequence[float] = 1.0,
    max_km: float = 500.0,
    km_per_step: float = 0.0,
) -> np.ndarray:
    """Signed distance to the rain edge (km): > 0 inside rain (distance to the nearest dry
    pixel), < 0 in dry areas (minus the distance to the nearest wet pixel), clipped to
    +-``max_km``. Continuous where TP is zero, which is what the encoder needs there.

    With ``km_per_step`` = 0 each field is on its own: a field without rain is -max_km
    everywhere (one without dry pixels +max_km), an atom that no per-pixel encoder can
    spread into a normal PP. With ``km_per_step`` = v > 0 the leading axis of (T, Y, X)
    is time (consecutive steps) and the distance is taken in space-time, a step counting
    as v km (a rain system's travel per step): a dry hour between rainy ones gets the
    distance to the rain before and after it instead of the constant.

    Args:
        tp: (..., Y, X) precipitation (finite, >= 0); (T, Y, X) when ``km_per_step`` > 0.
        threshold: wet where tp > threshold (the data's units).
        spacing_km: pixel size (dy, dx) or one number.
    """
    a = np.asarray(tp)
    check_tp(a, where="rain_edge_distance")
    sampling = np.broadcast_to(np.asarray(spacing_km, dtype=np.float64), (2,))
    if km_per_step > 0:
        if a.ndim != 3:
            raise SchemaError(
                f"rain_edge_distance: expected tp (time, y, x) for a space-time distance, "
                f"found shape {a.shape}"
            )
        return _signed_distance(a > threshold, (km_per_step, *sampling), max_km)
    wet = a > threshold
    out = np.empty(a.shape, dtype=np.float32)
    flat_wet, flat_out = wet.reshape(-1, *a.shape[-2:]), out.reshape(-1, *a.shape[-2:])
    for i, w in enumerate(flat_wet):
        flat_out[i] = _signed_distance(w, sampling, max_km)
    return out


def _signed_distance(wet: np.ndarray, sampling: Sequence[float], max_km: float) -> np.ndarray:
    """Signed Euclidean distance (km) of a boolean array to its wet/dry edge (see
    :func:`rain_edge_distance`), clipped to +-max_km."""
    if not wet.any():
        return np.full(wet.shape, -max_km, dtype=np.float32)
    if wet.all():
        return np.full(wet.shape, max_km, dtype=np.float32)
    # Distance from each wet pixel to the nearest dry one, and vice versa; the half pixel
    # offset makes the distance continuous across the edge.
    inside = ndimage.distance_transform_edt(wet, sampling=sampling)
    outside = ndimage.distance_transform_edt(~wet, sampling=sampling)
    half = 0.5 * float(min(sampling))
    return np.clip(np.where(wet, inside - half, half - outside), -max_km, max_km).astype(np.float32)


def grid_spacing_km(lat: np.ndarray, lon: np.ndarray) -> tuple[float, float]:
    """(dy, dx) in km of a regular lat-lon grid, dx at the central latitude."""
    dlat = abs(float(np.diff(lat).mean()))
    dlon = abs(float(np.diff(lon).mean()))
    km = np.deg2rad(1.0) * EARTH_RADIUS_M / 1000.0
    return dlat * km, dlon * km * float(np.cos(np.deg2rad(np.mean(lat))))
