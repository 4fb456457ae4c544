"""Training validation scores the decoded members with the metrics of `kmscale score`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from kmscale.diffusion.validation import physical_scores
from kmscale.evaluation import torch_metrics as tm
from kmscale.evaluation.probabilistic import CRPS, SpreadSkillRatio


def test_validation_scores_equal_the_metric_classes_and_torch_versions(rng):
    m, n, c, h, w = 4, 3, 2, 8, 16
    ens = rng.standard_normal((m, n, c, h, w))
    truth = rng.standard_normal((n, c, h, w)) + 0.3
    ens[1, 0, 0, 2, 3] = np.nan  # one NaN member value: that point leaves the CRPS
    te, tt = torch.from_numpy(ens), torch.from_numpy(truth)
    got = physical_scores(te, tt)

    dims = ("time", "variable", "y", "x")
    fc, tr = xr.DataArray(ens, dims=("member", *dims)), xr.DataArray(truth, dims=dims)
    assert got["crps"] == pytest.approx(
        float(CRPS().compute(fc, tr, reduce_dims=dims, area_weighted=False))
    )
    assert got["crps"] == pytest.approx(float(torch.nanmean(tm.crps_fair(te, tt))), rel=1e-12)
    ssr = SpreadSkillRatio().compute(fc, tr, reduce_dims=dims, area_weighted=False)
    assert got["spread_skill"] == pytest.approx(float(ssr), rel=1e-12)
    ok = ~np.isnan(ens).any(0)
    clean = torch.from_numpy(np.where(ok, ens, 0.0))
    pe = tm.zonal_power_spectrum(clean).reshape(-1, w // 2).mean(0)
    pt = tm.zonal_power_spectrum(tt).reshape(-1, w // 2).mean(0)
    ratio = physical_scores(clean, tt)
    assert ratio["power_ratio_1"] == pytest.approx(float(pe[-2] / pt[-2]), rel=1e-6)
    assert ratio["power_ratio_2"] == pytest.approx(float(pe[-1] / pt[-1]), rel=1e-6)
    assert "spread_skill" not in physical_scores(te[:1], tt)
