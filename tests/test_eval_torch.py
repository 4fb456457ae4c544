"""The torch metrics equal the numpy/xarray definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kmscale.evaluation import torch_metrics as tm
from kmscale.evaluation.probabilistic import crps_ensemble
from kmscale.evaluation.spectra import zonal_power_spectrum


@pytest.mark.parametrize("m", [1, 2, 8, 13, 70])
def test_crps_matches_numpy(m, rng):
    ens = rng.standard_normal((m, 6, 10)) + 280
    y = rng.standard_normal((6, 10)) + 280
    te, ty = torch.from_numpy(ens), torch.from_numpy(y)
    np.testing.assert_allclose(
        tm.crps_fair(te, ty).numpy(), crps_ensemble(ens, y, fair=True), atol=1e-10
    )
    np.testing.assert_allclose(
        tm.crps_standard(te, ty).numpy(), crps_ensemble(ens, y, fair=False), atol=1e-10
    )
    f32 = tm.crps_fair(te.float(), ty.float())
    assert f32.dtype == torch.float32
    np.testing.assert_allclose(f32.numpy(), crps_ensemble(ens, y), atol=1e-4)


def test_crps_nan_and_grad(rng):
    ens = torch.tensor(rng.standard_normal((4, 5)), requires_grad=True)
    y = torch.tensor(rng.standard_normal(5))
    tm.crps_fair(ens, y).sum().backward()
    assert torch.isfinite(ens.grad).all()
    e2 = ens.detach().clone()
    e2[1, 2] = float("nan")
    out = tm.crps_fair(e2, y)
    assert torch.isnan(out[2]) and torch.isfinite(out[[0, 1, 3, 4]]).all()


def test_shape_errors():
    with pytest.raises(ValueError, match="expected ensemble"):
        tm.crps_fair(torch.zeros(3, 4), torch.zeros(5))
    with pytest.raises(ValueError, match="2 members"):
        tm.spread_skill_ratio(torch.zeros(1, 4), torch.zeros(4))


def test_spread_skill_matches_xarray(rng):
    import xarray as xr

    from kmscale.evaluation.probabilistic import SpreadSkillRatio

    ens = rng.standard_normal((6, 20, 30))
    y = rng.standard_normal((20, 30))
    fc = xr.DataArray(ens, dims=("member", "y", "x"))
    tr = xr.DataArray(y, dims=("y", "x"))
    ref = float(SpreadSkillRatio().compute(fc, tr))
    got = float(tm.spread_skill_ratio(torch.from_numpy(ens), torch.from_numpy(y)))
    assert got == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize(
    "detrend,window", [(True, "hann"), (False, None), (True, None), (False, "hann")]
)
@pytest.mark.parametrize("n", [32, 33])
def test_zonal_spectrum_matches_numpy(detrend, window, n, rng):
    x = rng.standard_normal((3, 5, n)) + np.linspace(0, 4, n)
    got = tm.zonal_power_spectrum(torch.from_numpy(x), detrend=detrend, window=window)
    assert got.shape == (3, 5, n // 2)
    np.testing.assert_allclose(
        got.numpy(), zonal_power_spectrum(x, detrend=detrend, window=window), rtol=1e-10, atol=1e-14
    )
