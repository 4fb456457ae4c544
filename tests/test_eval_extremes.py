"""Deterministic scores, SSIM, quantile errors, twCRPS, FSS, density."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from kmscale.evaluation.density import DensityHistogram, density_comparison, log_density_error
from kmscale.evaluation.deterministic import MAE, MSE, RMSE, SSIM, Bias, ssim_field
from kmscale.evaluation.precipitation import FSS, fss_field
from kmscale.evaluation.probabilistic import crps_ensemble
from kmscale.evaluation.quantiles import (
    QuantileError,
    ThresholdWeightedCRPS,
    quantile_error,
    twcrps,
)


def field(rng, t=2, ny=20, nx=24, member=None):
    shape = (t, *(() if member is None else (member,)), ny, nx)
    dims = ("time", *(() if member is None else ("member",)), "y", "x")
    return xr.DataArray(
        rng.standard_normal(shape), dims=dims, coords={"time": np.arange(t)}, attrs={"units": "K"}
    )


def test_deterministic_scores(rng):
    f, t = field(rng), field(rng)
    np.testing.assert_allclose(MSE().compute(f, t), ((f - t) ** 2).mean(("y", "x")))
    np.testing.assert_allclose(RMSE().compute(f, t), np.sqrt(((f - t) ** 2).mean(("y", "x"))))
    np.testing.assert_allclose(MAE().compute(f, t), abs(f - t).mean(("y", "x")))
    np.testing.assert_allclose(Bias().compute(f + 1.5, f), 1.5)
    ens = field(rng, member=3)
    assert MSE().compute(ens, t).dims == ("time", "member")


def test_ssim_identity_and_reference(rng):
    y = ndimage.gaussian_filter(rng.standard_normal((40, 50)), 2) + 280
    assert ssim_field(y, y) == pytest.approx(1.0)
    x = y + 0.05 * rng.standard_normal(y.shape)
    # reference: plain Gaussian-window SSIM without masks (Wang et al. 2004)
    L = y.max() - y.min()
    g = lambda a: ndimage.gaussian_filter(a, 1.5, truncate=3.5, mode="reflect")  # noqa: E731
    mx, my = g(x), g(y)
    sxx, syy, sxy = g(x * x) - mx**2, g(y * y) - my**2, g(x * y) - mx * my
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    ref = ((2 * mx * my + c1) * (2 * sxy + c2) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))).mean()
    assert ssim_field(x, y) == pytest.approx(ref, rel=1e-6)
    assert ssim_field(x + 3 * rng.standard_normal(y.shape), y) < ssim_field(x, y)
    nan = y.copy()
    nan[:, :10] = np.nan
    assert np.isfinite(ssim_field(x, nan))
    assert np.isnan(ssim_field(x, np.full_like(y, np.nan)))


def test_ssim_xarray_dims(rng):
    ens, t = field(rng, member=2), field(rng)
    s = SSIM().compute(ens, t)
    assert s.dims == ("time", "member")
    np.testing.assert_allclose(s[1, 0], ssim_field(ens[1, 0].values, t[1].values))


def test_quantile_error(rng):
    t = rng.standard_normal(100000)
    assert np.abs(quantile_error(t * 1.0, t)).max() == 0
    qe = quantile_error(t * 2, t, (0.99, 0.999))
    np.testing.assert_allclose(qe, np.quantile(t, [0.99, 0.999]))
    ens, tr = field(rng, member=4), field(rng)
    got = QuantileError().compute(ens, tr)
    assert got.dims == ("time", "quantile")
    np.testing.assert_allclose(got[0], quantile_error(ens[0].values, tr[0].values))
    assert np.isnan(quantile_error(np.array([np.nan]), t)).all()


def test_twcrps(rng):
    ens = rng.gamma(0.4, 3.0, (10, 500))
    y = rng.gamma(0.4, 3.0, 500)
    # threshold below every value: twCRPS is the CRPS
    np.testing.assert_allclose(twcrps(ens, y, -1.0), crps_ensemble(ens, y))
    # weight 1{z >= t} integrates only above t: zero when everything is below t
    assert np.allclose(twcrps(ens * 0, y * 0, 1.0), 0)
    w = twcrps(ens, y, 5.0)
    assert (w <= crps_ensemble(ens, y) + 1e-12).all() and (w >= -1e-12).all()
    fc = xr.DataArray(ens, dims=("member", "x")).expand_dims(y=1).transpose("member", "y", "x")
    tr = xr.DataArray(y, dims=("x",)).expand_dims(y=1)
    np.testing.assert_allclose(ThresholdWeightedCRPS(threshold=5.0).compute(fc, tr), w.mean())


def test_fss(rng):
    y = (rng.random((60, 60)) < 0.1) * 5.0
    assert fss_field(y, y, 1.0, 1) == 1.0
    shifted = np.roll(y, 3, axis=1)
    small, large = fss_field(shifted, y, 1.0, 1), fss_field(shifted, y, 1.0, 25)
    assert small < 0.3 < large  # skill grows with the neighbourhood
    assert np.isnan(fss_field(y * 0, y * 0, 1.0, 5))  # no event anywhere: undefined
    # NaN outside a composite is not counted as dry
    nan = y.copy()
    nan[:, :20] = np.nan
    assert fss_field(nan, nan, 1.0, 11) == pytest.approx(1.0)
    ens = xr.DataArray(np.stack([y, shifted])[None], dims=("time", "member", "y", "x"))
    tr = xr.DataArray(y[None], dims=("time", "y", "x"))
    got = FSS(thresholds=(1.0, 2.0), windows=(1, 5)).compute(ens, tr)
    assert got.dims == ("time", "threshold", "window")
    assert got.sel(window=5, threshold=1.0) == pytest.approx(
        fss_field(np.stack([y, shifted]), y, 1.0, 5)
    )
    with pytest.raises(ValueError, match="odd window"):
        fss_field(y, y, 1.0, 4)


def test_density(rng):
    h = DensityHistogram(np.linspace(-4, 4, 41))
    x = rng.standard_normal(50000)
    h.add(x[:20000])
    h.add(x[20000:])
    d = h.density()
    inside = h.counts.sum() / h.total
    assert (d * 0.2).sum() == pytest.approx(inside)
    assert h.below + h.above + h.counts.sum() == 50000
    assert log_density_error(d, d, np.full(40, 0.2)) == 0
    out = density_comparison(xr.DataArray(rng.standard_normal(5000) * 2), xr.DataArray(x))
    assert out["log_density_error"] > 0.1
    with pytest.raises(ValueError):
        DensityHistogram(np.array([1.0, 0.0]))
