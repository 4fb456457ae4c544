"""Spherical-harmonic power spectra of HEALPix fields (healpy ``anafast``).

``C_l = (2l + 1)^-1 sum_m |a_lm|^2`` (Górski et al. 2005, eq. 8) for a field in nested
ordering (reordered to ring for healpy's transform), ``l = 0 .. lmax`` with the default
``lmax = 3 nside - 1``. The ratio at the highest degrees compares the mean ``C_l`` over the
top ``fraction`` of the resolved degrees of a forecast with the truth's.
"""

from __future__ import annotations

import healpy as hp
import numpy as np

from kmscale.errors import MissingValueError, SchemaError, describe
from kmscale.sphere.healpix import nside_from_npix


def angular_power_spectrum(
    values: np.ndarray, nside: int | None = None, lmax: int | None = None
) -> np.ndarray:
    """``C_l`` of nested fields ``(..., npix)`` -> ``(..., lmax + 1)`` (units of the field^2)."""
    values = np.asarray(values, float)
    found = nside_from_npix(values.shape[-1])
    if nside is not None and found != nside:
        raise SchemaError(
            describe(f"nside {nside}", f"nside {found}", where="angular_power_spectrum")
        )
    if not np.all(np.isfinite(values)):
        raise MissingValueError(
            describe(
                "finite values (anafast takes no mask)", "NaN/inf", where="angular_power_spectrum"
            )
        )
    lmax = 3 * found - 1 if lmax is None else lmax
    flat = values.reshape(-1, values.shape[-1])
    cl = [hp.anafast(hp.reorder(row, n2r=True), lmax=lmax, use_pixel_weights=False) for row in flat]
    return np.asarray(cl).reshape(*values.shape[:-1], lmax + 1)


def high_degree_power(cl: np.ndarray, fraction: float = 0.25) -> np.ndarray:
    """Mean ``C_l`` over the top ``fraction`` of degrees ``l = 1 .. lmax``: (..., L) -> (...)."""
    lmax = cl.shape[-1] - 1
    start = lmax - max(1, int(round(fraction * lmax))) + 1
    return cl[..., start:].mean(-1)


def power_ratio_high_l(
    forecast: np.ndarray, truth: np.ndarray, fraction: float = 0.25, lmax: int | None = None
) -> float:
    """Forecast / truth power at the highest degrees, spectra averaged over leading dims."""
    f = angular_power_spectrum(forecast, lmax=lmax)
    t = angular_power_spectrum(truth, lmax=lmax)
    f, t = f.reshape(-1, f.shape[-1]).mean(0), t.reshape(-1, t.shape[-1]).mean(0)
    return float(high_degree_power(f, fraction) / high_degree_power(t, fraction))
