"""Deterministic scores: MSE, RMSE, MAE, bias, SSIM.

A forecast with a ``member`` dim is scored member by member (the dim is kept); score
an ensemble mean by passing ``forecast.mean("member")``. NaN and masked points are left
out of the spatial means (see ``base.py``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import xarray as xr
from scipy import ndimage

from kmscale.evaluation.base import Metric, check_aligned, spatial_dims

# Wang et al. (2004) constants: Gaussian window of sigma 1.5 px (11 x 11), K1, K2.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


@dataclasses.dataclass
class MSE(Metric):
    """(x - y)^2, units of x squared."""

    def pointwise(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.DataArray:
        return (forecast - truth) ** 2


@dataclasses.dataclass
class RMSE(Metric):
    """sqrt of the spatial-mean squared error (the root is taken after the mean)."""

    def compute(self, forecast, truth, *, reduce_dims=None, mask=None, area_weighted=True):
        return np.sqrt(
            MSE().compute(
                forecast, truth, reduce_dims=reduce_dims, mask=mask, area_weighted=area_weighted
            )
        )


@dataclasses.dataclass
class MAE(Metric):
    """|x - y|, units of x."""

    def pointwise(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.DataArray:
        return abs(forecast - truth)


@dataclasses.dataclass
class Bias(Metric):
    """x - y (positive: forecast too high), units of x."""

    def pointwise(self, forecast: xr.DataArray, truth: xr.DataArray) -> xr.DataArray:
        return forecast - truth


def ssim_field(
    x: np.ndarray,
    y: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    data_range: float | None = None,
) -> float:
    """Mean structural similarity of one 2-D field ``x`` against the reference ``y``.

    SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
    local moments under a Gaussian window (sigma 1.5 px), C1 = (K1 L)^2, C2 = (K2 L)^2,
    L = ``data_range`` (default: the range of y over valid points) (Wang et al. 2004,
    IEEE TIP 13:600). Masked/NaN points: moments are normalised convolutions over valid
    points only and the map is averaged over valid points; no valid point gives NaN; a
    constant reference with no data_range uses L = 1.
    """
    # float32 input stays float32 (centred below, so the moments keep their digits):
    # a full 4384 x 6880 field needs ~10 work arrays.
    dtype = (
        np.float32
        if np.asarray(x).dtype == np.float32 and np.asarray(y).dtype == np.float32
        else np.float64
    )
    x = np.asarray(x, dtype=dtype)
    y = np.asarray(y, dtype=dtype)
    ok = np.isfinite(x) & np.isfinite(y)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    if not ok.any():
        return float("nan")
    if data_range is None:
        data_range = float(y[ok].max() - y[ok].min()) or 1.0
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    v = ok.astype(dtype)
    # Centre on the valid mean of y so the second moments do not lose digits (280 K fields).
    shift = y[ok].mean()
    x0 = np.where(ok, x - shift, 0.0)
    y0 = np.where(ok, y - shift, 0.0)

    def g(a):
        return ndimage.gaussian_filter(a, SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    wsum = np.maximum(g(v), dtype(1e-6))
    mx, my = g(x0) / wsum, g(y0) / wsum
    sxx = g(x0 * x0) / wsum - mx * mx
    syy = g(y0 * y0) / wsum - my * my
    sxy = g(x0 * y0) / wsum - mx * my
    mx, my = mx + shift, my + shift
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float((num / den)[ok].mean(dtype=np.float64))


@dataclasses.dataclass
class SSIM(Metric):
    """Mean SSIM of each 2-D field (1 = identical); dims of ``forecast`` less space.

    ``data_range`` fixes L (use it to compare methods on one scale, e.g. 40 K for
    t2m); by default each truth field's own range.
    """

    data_range: float | None = None

    def compute(self, forecast, truth, *, reduce_dims=None, mask=None, area_weighted=False):
        check_aligned(forecast, truth, where="SSIM")
        dims = list(spatial_dims(truth))
        if reduce_dims is not None and set(reduce_dims) != set(dims):
            raise ValueError(
                f"SSIM: expected reduce_dims over the spatial dims {dims}, found "
                f"{list(reduce_dims)}"
            )
        valid = (
            mask.astype(bool)
            if mask is not None
            else xr.ones_like(
                truth.isel({d: 0 for d in truth.dims if d not in dims}, drop=True), dtype=bool
            )
        )

        def per_field(x, y, ok):
            lead = np.broadcast_shapes(x.shape[:-2], y.shape[:-2])
            x = np.broadcast_to(x, lead + x.shape[-2:]).reshape(-1, *x.shape[-2:])
            y = np.broadcast_to(y, lead + y.shape[-2:]).reshape(-1, *y.shape[-2:])
            ok = np.broadcast_to(ok, x.shape)
            out = [
                ssim_field(a, b, valid=c, data_range=self.data_range)
                for a, b, c in zip(x, y, ok, strict=True)
            ]
            return np.asarray(out, dtype=float).reshape(lead)

        return xr.apply_ufunc(
            per_field,
            forecast,
            truth,
            valid,
            input_core_dims=[dims, dims, dims],
            dask="parallelized",
            output_dtypes=[float],
        )
