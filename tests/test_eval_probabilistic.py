"""CRPS (fair/standard), spread-skill, rank histogram: references, limits, NaN/mask, bad input."""

from __future__ import annotations

import numpy as np
import properscoring
import pytest
import xarray as xr

from kmscale.errors import AlignmentError, GridError, SchemaError
from kmscale.evaluation.probabilistic import (
    CRPS,
    CRPSSkill,
    CRPSSpread,
    EnsembleMeanRMSE,
    EnsembleSpread,
    RankHistogram,
    SpreadSkillRatio,
    crps_ensemble,
    crps_parts,
    crps_summary,
    rank_of_truth,
    sorting_network,
)


def brute_force_fair(ens: np.ndarray, y: np.ndarray) -> np.ndarray:
    m = ens.shape[0]
    skill = np.abs(ens - y).mean(0)
    pairs = np.abs(ens[:, None] - ens[None]).sum((0, 1))
    return skill - pairs / (2 * m * (m - 1)) if m > 1 else skill


def make_pair(rng, m=8, t=3, ny=12, nx=16, calibrated=True, latlon=True):
    """Truth and an ensemble drawn from the same distribution as the truth."""
    mu = rng.standard_normal((t, 1, ny, nx))
    truth = mu[:, 0] + rng.standard_normal((t, ny, nx))
    ens = mu + rng.standard_normal((t, m, ny, nx)) * (1.0 if calibrated else 0.3)
    dims = ("lat", "lon") if latlon else ("y", "x")
    coords = {
        "time": np.arange(t),
        dims[0]: np.linspace(40, 50, ny),
        dims[1]: np.linspace(0, 15, nx),
    }
    tr = xr.DataArray(truth, dims=("time", *dims), coords=coords, attrs={"units": "K"}, name="t2m")
    fc = xr.DataArray(
        ens, dims=("time", "member", *dims), coords=coords, attrs={"units": "K"}, name="t2m"
    )
    return fc, tr


@pytest.mark.parametrize("m", [2, 3, 7, 16, 33])
def test_sorting_network_sorts(m, rng):
    x = rng.standard_normal((m, 200))
    rows = list(x)
    for i, j in sorting_network(m):
        lo, hi = np.minimum(rows[i], rows[j]), np.maximum(rows[i], rows[j])
        rows[i], rows[j] = lo, hi
    np.testing.assert_array_equal(np.stack(rows), np.sort(x, axis=0))


@pytest.mark.parametrize("m", [1, 2, 5, 16, 21, 70])
def test_standard_crps_equals_properscoring(m, rng):
    ens = rng.standard_normal((m, 30, 20)) * 2 + 280
    y = rng.standard_normal((30, 20)) * 2 + 280
    ours = crps_ensemble(ens, y, fair=False)
    ref = properscoring.crps_ensemble(y, ens, axis=0)
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("m", [2, 4, 16, 17, 80])
def test_fair_crps_equals_brute_force_pairs(m, rng):
    ens = rng.gamma(0.5, 2.0, (m, 25, 9))
    y = rng.gamma(0.5, 2.0, (25, 9))
    np.testing.assert_allclose(crps_ensemble(ens, y), brute_force_fair(ens, y), atol=1e-12)
    # member axis anywhere, float32 close to float64 (anomaly sort keeps precision)
    np.testing.assert_allclose(
        crps_ensemble(np.moveaxis(ens, 0, -1), y, axis=-1), brute_force_fair(ens, y), atol=1e-12
    )
    f32 = crps_ensemble((ens + 280).astype(np.float32), (y + 280).astype(np.float32))
    assert f32.dtype == np.float32
    np.testing.assert_allclose(f32, brute_force_fair(ens, y), atol=2e-4)


def test_small_blocks_give_same_result(rng):
    ens, y = rng.standard_normal((6, 1001)), rng.standard_normal(1001)
    a = crps_parts(ens, y)
    b = crps_parts(ens, y, block=17)
    np.testing.assert_allclose(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1])


def test_one_member_gives_mae(rng):
    ens, y = rng.standard_normal((1, 40)), rng.standard_normal(40)
    mae = np.abs(ens[0] - y)
    np.testing.assert_allclose(crps_ensemble(ens, y, fair=True), mae)
    np.testing.assert_allclose(crps_ensemble(ens, y, fair=False), mae)
    fc, tr = make_pair(rng, m=1)
    np.testing.assert_allclose(CRPS().pointwise(fc, tr), np.abs(fc.isel(member=0) - tr))


@pytest.mark.parametrize("m", [5, 70])
def test_nan_policy_pointwise(m, rng):
    ens, y = rng.standard_normal((m, 10)), rng.standard_normal(10)
    ens[2, 3] = np.nan
    y[7] = np.nan
    out = crps_ensemble(ens, y)
    assert np.isnan(out[3]) and np.isnan(out[7])
    assert np.isfinite(np.delete(out, [3, 7])).all()
    ranks = rank_of_truth(ens, y)
    assert np.isnan(ranks[3]) and np.isnan(ranks[7])


def test_xarray_mean_leaves_out_nan_and_masked_points(rng):
    fc, tr = make_pair(rng, latlon=False)
    point = CRPS().pointwise(fc, tr)
    tr2 = tr.copy()
    tr2[:, 0, :] = np.nan  # a NaN row of the truth
    mask = xr.DataArray(np.ones((12, 16), bool), dims=("y", "x"))
    mask[:, :4] = False
    got = CRPS().compute(fc, tr2, mask=mask)
    expected = point.isel(y=slice(1, None), x=slice(4, None)).mean(("y", "x"))
    np.testing.assert_allclose(got, expected)
    # all-NaN slice: documented NaN, not 0
    tr3 = tr.copy()
    tr3[1] = np.nan
    got = CRPS().compute(fc, tr3)
    assert np.isnan(got[1]) and np.isfinite(got[[0, 2]]).all()


def test_area_weights_on_latlon(rng):
    fc, tr = make_pair(rng)
    point = CRPS().pointwise(fc, tr)
    w = np.cos(np.deg2rad(tr.lat))
    expected = (point * w).sum(("lat", "lon")) / (w.sum() * tr.sizes["lon"])
    np.testing.assert_allclose(CRPS().compute(fc, tr), expected)
    np.testing.assert_allclose(
        CRPS().compute(fc, tr, area_weighted=False), point.mean(("lat", "lon"))
    )


def test_composite_and_summary_agree(rng):
    fc, tr = make_pair(rng)
    summ = crps_summary(fc, tr)
    skill = CRPSSkill().compute(fc, tr)
    for fair in (True, False):
        crps = CRPS(fair=fair).compute(fc, tr)
        spread = CRPSSpread(fair=fair).compute(fc, tr)
        np.testing.assert_allclose(crps, skill - 0.5 * spread)
        np.testing.assert_allclose(summ["crps_fair" if fair else "crps_standard"], crps)
    assert (summ["crps_fair"] < summ["crps_standard"]).all()  # the fair one removes the M^-1 bias


def test_dask_chunks_give_same_numbers(rng):
    fc, tr = make_pair(rng)
    eager = CRPS().compute(fc, tr)
    lazy = CRPS().compute(fc.chunk(time=1), tr.chunk(time=1))
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.compute(), eager)


def test_spread_skill_of_calibrated_ensemble_is_one(rng):
    fc, tr = make_pair(rng, m=5, t=20, ny=40, nx=40)
    ssr = SpreadSkillRatio().compute(fc, tr, reduce_dims=("time", "lat", "lon"))
    # 32000 points; the ratio's sampling error is about 1 %.
    assert abs(float(ssr) - 1.0) < 0.04
    fc2, tr2 = make_pair(rng, m=5, t=20, ny=40, nx=40, calibrated=False)
    assert float(SpreadSkillRatio().compute(fc2, tr2, reduce_dims=("time", "lat", "lon"))) < 0.6
    spread = EnsembleSpread().compute(fc, tr, reduce_dims=("time", "lat", "lon"))
    rmse = EnsembleMeanRMSE().compute(fc, tr, reduce_dims=("time", "lat", "lon"))
    np.testing.assert_allclose(ssr, np.sqrt(6 / 5) * spread / rmse)


def test_rank_histogram_flat_for_calibrated_ensemble(rng):
    m = 9
    fc, tr = make_pair(rng, m=m, t=10, ny=30, nx=30)
    hist = RankHistogram().compute(fc, tr, reduce_dims=("time", "lat", "lon"))
    assert hist.sizes["rank"] == m + 1
    n = tr.size
    assert int(hist.sum()) == n
    expected = n / (m + 1)
    chi2 = float(((hist - expected) ** 2 / expected).sum())
    # chi-square with 9 dof: 99.9th percentile is 27.9
    assert chi2 < 27.9
    # an under-dispersed ensemble is U-shaped
    fc2, tr2 = make_pair(rng, m=m, t=10, ny=30, nx=30, calibrated=False)
    h2 = RankHistogram().compute(fc2, tr2, reduce_dims=("time", "lat", "lon"))
    assert h2[0] > 2 * expected and h2[-1] > 2 * expected


def test_rank_ties_broken_at_random():
    ens = np.zeros((4, 10000))
    y = np.zeros(10000)
    counts = np.bincount(rank_of_truth(ens, y).astype(int), minlength=5)
    assert counts.min() > 1700  # 2000 expected in each of the 5 ranks


def test_bad_input_is_refused(rng):
    fc, tr = make_pair(rng)
    with pytest.raises(SchemaError, match="member"):
        CRPS().compute(fc.isel(member=0), tr)
    with pytest.raises(GridError, match="lat"):
        CRPS().compute(fc, tr.assign_coords(lat=tr.lat + 0.5))
    with pytest.raises(GridError, match="lon size"):
        CRPS().compute(fc, tr.isel(lon=slice(0, 10)))
    with pytest.raises(AlignmentError, match="time"):
        CRPS().compute(fc, tr.assign_coords(time=tr.time + 1))
    with pytest.raises(SchemaError, match="spatial dims"):
        CRPS().compute(fc.rename(lat="a"), tr.rename(lat="a"))
