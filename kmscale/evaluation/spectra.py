"""Power spectra of fields: zonal (along lines) and radially averaged 2-D.

Zonal spectrum (the published definition used to compare downscaled fields): for each
line x_0..x_{L-1} (constant latitude, or constant y on a projected grid), optionally
detrended and windowed,

    F_k = (1/L) sum_n w_n x_n exp(-2 pi i k n / L) / sqrt(mean_n w_n^2)
    S_k = 2 |F_k|^2,   k = 1..L/2,   wavelength_k = L dx / k   [km]

averaged over lines and times. The Nyquist term of an even L (k = L/2) is counted once,
S_{L/2} = |F_{L/2}|^2, since it has no mirror; with that, and without detrending or
window, Parseval holds exactly: sum_k S_k = the line's variance. The division by
sqrt(mean w^2) keeps the variance of a stationary signal under the window.

Detrending removes the least-squares line along each line (a field with a large-scale
gradient, e.g. temperature north-south, otherwise leaks power through the jump at the
periodic boundary); the Hann window (periodic, w_n = sin^2(pi n / L)) tapers the rest.
This is what the downscaling benchmark (issue 4) reports.

Regional lat-lon grids: the grid spacing in km shrinks with latitude (dx = R cos(lat)
dlon), so wavenumber k is a different wavelength on each line. Spectra are averaged in
k and labelled with the wavelength at the mean latitude of the lines averaged (a global
lat-lon assumption of 'k cycles per 40 000 km' would be wrong on a regional grid).

Radial spectrum (projected km grids, ``(y, x)``): the 2-D field is detrended by the
least-squares plane, windowed by the 2-D Hann window (outer product), transformed, and
|F|^2 is summed over rings n - 1/2 <= |k| / dk < n + 1/2 with dk the coarser of the two
fundamental wavenumbers. Masked or NaN points: the plane is fitted to the valid points,
the invalid ones are set to 0 (the fitted plane, i.e. no anomaly) and the power is
divided by the fraction of window energy that falls on valid points, so a partly
masked field of white noise keeps its level; the gaps still leak some power between
neighbouring wavenumbers, and a field with fewer than ``min_valid_fraction`` valid
points gives NaN rather than a distorted spectrum.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from kmscale.errors import SchemaError, UnitsError
from kmscale.evaluation.base import LATLON_DIMS, spatial_dims

EARTH_RADIUS_KM = 6371.0
WINDOWS = ("hann", None)


# ---------------------------------------------------------------------------------------
# numpy core (the torch versions in torch_metrics.py follow these line by line)
# ---------------------------------------------------------------------------------------
def hann(n: int) -> np.ndarray:
    """Periodic Hann window w_k = sin^2(pi k / n), k = 0..n-1 (scipy's default 'hann')."""
    return np.sin(np.pi * np.arange(n) / n) ** 2


def _check_window(window: str | None) -> None:
    if window not in WINDOWS:
        raise ValueError(f"spectrum: expected window in {WINDOWS}, found {window!r}")


def detrend_linear(x: np.ndarray) -> np.ndarray:
    """Remove the least-squares line a + b n along the last axis (NaN-free input)."""
    n = x.shape[-1]
    t = np.arange(n) - (n - 1) / 2.0
    denom = (t * t).sum()
    t = t.astype(x.dtype)
    mean = x.mean(-1, keepdims=True)
    slope = (x @ t)[..., None] / x.dtype.type(denom) if denom > 0 else 0.0
    return x - mean - slope * t


def zonal_power_spectrum(
    x: np.ndarray, *, detrend: bool = True, window: str | None = "hann"
) -> np.ndarray:
    """S_k for k = 1..L//2 along the last axis of ``x`` (..., L) -> (..., L//2).

    Units: those of x squared (power per wavenumber bin). NaN anywhere on a line gives
    NaN for that line's spectrum.
    """
    _check_window(window)
    x = np.asarray(x)
    # float32 stays float32 (half the memory and FFT time on km-scale grids; detrending
    # first keeps the anomalies' digits); everything else is computed in float64.
    if x.dtype != np.float32:
        x = x.astype(np.float64)
    n = x.shape[-1]
    if n < 2:
        raise ValueError(f"spectrum: expected lines of at least 2 points, found {n}")
    if detrend:
        x = detrend_linear(x)
    if window == "hann":
        w = hann(n)
        x = x * (w / np.sqrt((w * w).mean())).astype(x.dtype)
    f = np.fft.rfft(x, axis=-1) / n
    s = 2.0 * np.abs(f[..., 1 : n // 2 + 1]) ** 2
    if n % 2 == 0:
        s[..., -1] /= 2.0  # Nyquist has no mirror term
    return s


def wavelengths_km(n: int, dx_km: float) -> np.ndarray:
    """Wavelength L dx / k of the k = 1..n//2 spectrum bins, km."""
    return n * dx_km / np.arange(1, n // 2 + 1)


def radial_power_spectrum(
    field: np.ndarray,
    *,
    detrend: bool = True,
    window: str | None = "hann",
    valid: np.ndarray | None = None,
    min_valid_fraction: float = 0.5,
    include_corners: bool = False,
) -> np.ndarray:
    """Radially summed 2-D power spectrum of one field (H, W) -> (n_bins,).

    Bins n = 1..min(H, W)//2 (``include_corners`` extends to the largest |k|, for
    Parseval checks). Units: x squared per ring. See the module doc for masking.
    """
    _check_window(window)
    x = np.asarray(field, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"radial spectrum: expected a 2-D field, found shape {x.shape}")
    h, w = x.shape
    ok = np.isfinite(x) if valid is None else (np.asarray(valid, bool) & np.isfinite(x))
    n_bins = _radial_bins(h, w, include_corners)[1]
    if ok.mean() < min_valid_fraction:
        return np.full(n_bins, np.nan)
    if detrend:
        yy, xx = np.mgrid[0:h, 0:w]
        a = np.stack([np.ones(ok.sum()), yy[ok], xx[ok]], axis=1).astype(float)
        coef, *_ = np.linalg.lstsq(a, x[ok], rcond=None)
        x = x - (coef[0] + coef[1] * yy + coef[2] * xx)
    else:
        x = x - x[ok].mean()
    x = np.where(ok, x, 0.0)
    if window == "hann":
        w2 = np.outer(hann(h), hann(w))
    else:
        w2 = np.ones((h, w))
    # Window energy on valid points: corrects both the window and the zero-filled gaps.
    norm = (w2 * w2 * ok).mean()
    power = np.abs(np.fft.fft2(x * w2) / (h * w)) ** 2 / norm
    labels, n_bins = _radial_bins(h, w, include_corners)
    sums = np.bincount(labels.ravel(), weights=power.ravel(), minlength=n_bins + 2)
    return sums[1 : n_bins + 1]


def _radial_bins(h: int, w: int, include_corners: bool) -> tuple[np.ndarray, int]:
    """Ring index round(|k| / dk) of each 2-D frequency, and the number of rings kept.

    Wavenumbers are counted in units of the coarser fundamental dk = 1 / (min(H, W) dx);
    frequencies beyond the last ring kept get the label n_bins + 1 (dropped).
    """
    ky = np.fft.fftfreq(h) * min(h, w)
    kx = np.fft.fftfreq(w) * min(h, w)
    labels = np.rint(np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)).astype(int)
    n_bins = int(labels.max()) if include_corners else min(h, w) // 2
    labels = np.where(labels <= n_bins, labels, n_bins + 1)
    return labels, n_bins


def radial_wavelengths_km(
    h: int, w: int, dx_km: float, include_corners: bool = False
) -> np.ndarray:
    """Wavelength of each ring n: min(H, W) dx / n, km."""
    n_bins = _radial_bins(h, w, include_corners)[1]
    return min(h, w) * dx_km / np.arange(1, n_bins + 1)


# ---------------------------------------------------------------------------------------
# xarray wrappers
# ---------------------------------------------------------------------------------------
def grid_spacing_km(da: xr.DataArray, dim: str) -> float:
    """Spacing of a projected coordinate in km (units 'm' or 'km' required)."""
    if dim not in da.coords:
        raise SchemaError(
            f"spectrum: expected a {dim!r} coordinate to get the grid spacing, found none (pass "
            "dx_km)"
        )
    c = np.asarray(da[dim].values, dtype=float)
    steps = np.diff(c)
    if steps.size == 0 or not np.allclose(steps, steps[0], rtol=1e-3):
        raise SchemaError(
            f"spectrum: expected a uniform {dim!r} coordinate, found steps {steps[:3]}..."
        )
    units = str(da[dim].attrs.get("units", "")).strip()
    scale = {
        "m": 1e-3,
        "metre": 1e-3,
        "meter": 1e-3,
        "metres": 1e-3,
        "meters": 1e-3,
        "km": 1.0,
    }.get(units)
    if scale is None:
        raise UnitsError(
            f"spectrum: expected {dim!r} in units 'm' or 'km', found {units!r} (pass dx_km)"
        )
    return abs(float(steps[0])) * scale


def zonal_spectrum(
    da: xr.DataArray,
    *,
    dx_km: float | None = None,
    detrend: bool = True,
    window: str | None = "hann",
    keep_dims: tuple[str, ...] = (),
) -> xr.DataArray:
    """Zonal power spectrum of ``da`` averaged over lines and all dims not in ``keep_dims``.

    Args:
        da: (..., lat, lon) or (..., y, x) field.
        dx_km: grid spacing along the line in km; default from the grid (lat-lon:
            R cos(lat) dlon per line; projected: the x coordinate).
        keep_dims: dims not averaged (e.g. ``("member",)``).

    Returns:
        DataArray (keep_dims..., wavenumber) with coordinate ``wavelength`` (km); NaN
        lines (masked points) are left out of the average; all-NaN gives NaN.
    """
    ydim, xdim = spatial_dims(da, where="zonal_spectrum")
    n = da.sizes[xdim]
    spec = xr.apply_ufunc(
        lambda a: zonal_power_spectrum(a, detrend=detrend, window=window),
        da,
        input_core_dims=[[xdim]],
        output_core_dims=[["wavenumber"]],
        dask="parallelized",
        output_dtypes=[float],
        dask_gufunc_kwargs={"output_sizes": {"wavenumber": n // 2}},
    )
    spec = spec.assign_coords(wavenumber=np.arange(1, n // 2 + 1))
    avg = [d for d in spec.dims if d not in keep_dims and d != "wavenumber"]
    out = spec.mean(avg, skipna=True)
    if dx_km is None:
        if (ydim, xdim) == LATLON_DIMS:
            lon = np.asarray(da["lon"].values, dtype=float)
            dlon = np.deg2rad(abs(float(np.median(np.diff(lon)))))
            lat_mean = float(np.asarray(da["lat"].values, dtype=float).mean())
            dx_km = EARTH_RADIUS_KM * np.cos(np.deg2rad(lat_mean)) * dlon
        else:
            dx_km = grid_spacing_km(da, xdim)
    out = out.assign_coords(wavelength=("wavenumber", wavelengths_km(n, dx_km)))
    out["wavelength"].attrs = {"units": "km", "long_name": "wavelength"}
    units = da.attrs.get("units")
    out.attrs = {
        "long_name": f"zonal power spectrum of {da.name or 'field'}",
        "dx_km": float(dx_km),
    }
    if units:
        out.attrs["units"] = f"({units})2"
    return out


def radial_spectrum(
    da: xr.DataArray,
    *,
    dx_km: float | None = None,
    detrend: bool = True,
    window: str | None = "hann",
    mask: xr.DataArray | None = None,
    min_valid_fraction: float = 0.5,
    keep_dims: tuple[str, ...] = (),
) -> xr.DataArray:
    """Radially averaged 2-D spectrum of (..., y, x) fields, averaged over other dims.

    Returns (keep_dims..., wavenumber) with ``wavelength`` (km). See the module doc for
    the treatment of masked/NaN points.
    """
    ydim, xdim = spatial_dims(da, where="radial_spectrum")
    h, w = da.sizes[ydim], da.sizes[xdim]
    n_bins = min(h, w) // 2
    valid = (
        mask.astype(bool)
        if mask is not None
        else xr.ones_like(
            da.isel({d: 0 for d in da.dims if d not in (ydim, xdim)}, drop=True), dtype=bool
        )
    )

    def one(a: np.ndarray, ok: np.ndarray) -> np.ndarray:
        lead = a.shape[:-2]
        flat = a.reshape(-1, h, w)
        ok2 = np.broadcast_to(ok, a.shape).reshape(-1, h, w)
        res = (
            np.stack(
                [
                    radial_power_spectrum(
                        f,
                        detrend=detrend,
                        window=window,
                        valid=v,
                        min_valid_fraction=min_valid_fraction,
                    )
                    for f, v in zip(flat, ok2, strict=True)
                ]
            )
            if flat.shape[0]
            else np.empty((0, n_bins))
        )
        return res.reshape(*lead, n_bins)

    spec = xr.apply_ufunc(
        one,
        da,
        valid,
        input_core_dims=[[ydim, xdim], [ydim, xdim]],
        output_core_dims=[["wavenumber"]],
        dask="parallelized",
        output_dtypes=[float],
        dask_gufunc_kwargs={"output_sizes": {"wavenumber": n_bins}},
    )
    spec = spec.assign_coords(wavenumber=np.arange(1, n_bins + 1))
    avg = [d for d in spec.dims if d not in keep_dims and d != "wavenumber"]
    out = spec.mean(avg, skipna=True)
    if dx_km is None:
        if (ydim, xdim) == LATLON_DIMS:
            raise SchemaError(
                "radial_spectrum: expected a projected (y, x) km grid or an explicit dx_km, found "
                "(lat, lon)"
            )
        dx_km = grid_spacing_km(da, xdim)
    out = out.assign_coords(wavelength=("wavenumber", radial_wavelengths_km(h, w, dx_km)))
    out["wavelength"].attrs = {"units": "km", "long_name": "wavelength"}
    out.attrs = {
        "long_name": f"radial power spectrum of {da.name or 'field'}",
        "dx_km": float(dx_km),
    }
    return out
