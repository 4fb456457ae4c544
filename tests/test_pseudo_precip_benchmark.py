"""Pieces of benchmarks/precipitation.py: the spectral truncation of the Gibbs check and
the downscaling scores, on limit cases."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "precip_bench", ROOT / "benchmarks" / "precipitation.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["precip_bench"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_truncation_keeps_low_wavenumbers_and_rings_on_a_step(bench):
    y, x = np.mgrid[0:16, 0:16]
    smooth = np.cos(2 * np.pi * x / 16) + 0.5 * np.sin(2 * np.pi * 2 * y / 16)
    assert np.allclose(bench.truncate(smooth, 2), smooth)
    step = (x >= 8).astype(float)  # rain on half the field: the truncation overshoots (Gibbs)
    cut = bench.truncate(step, 2)
    assert cut.min() < -0.05 and cut.max() > 1.05


def test_scores_of_a_perfect_ensemble(bench):
    rng = np.random.default_rng(0)
    truth = np.maximum(rng.standard_normal((6, 8, 8)), 0.0)
    t = bench.Telangana(fss_windows=[1, 3])
    out = bench.scores(np.repeat(truth[None], 4, axis=0), truth, t, {"p90": 0.5})
    assert out["crps_fair"] == pytest.approx(0.0, abs=1e-12) and out["wet_fraction_error"] == 0.0
    assert out["q99_error"] == pytest.approx(0.0, abs=0.02) and out["fss"]["p90"][
        "1"
    ] == pytest.approx(1.0)
    assert out["power_ratio_smallest"] == pytest.approx([1.0, 1.0])
    det = bench.scores(truth[None] + 1.0, truth, t, {"p90": 0.5})
    assert det["crps_fair"] == det["mae"] == pytest.approx(1.0) and "spread_skill" not in det


def test_radolan_crop_is_inside_the_composite_with_rain_in_every_split(bench, real_data):
    from kmscale.autoencoders.pseudo_precip_train import PPDataConfig

    r = bench.Radolan(size=128)
    targets, coarse, crop = bench.radolan_data(r, PPDataConfig(edge_km_per_hour=30.0))
    assert targets["tp"].shape == (24, 128, 128) and coarse["tp"].shape == (24, 16, 16)
    assert bool(targets["tp"].notnull().all()) and bool(
        targets["rain_edge_distance"].notnull().all()
    )
    assert crop["least_split_wet_fraction"] > 0
    for period in (r.train_period, r.val_period, r.test_period):
        assert float((targets["tp"].sel(time=slice(*period)) > r.wet_threshold).mean()) > 0
    # The block means are those of the targets (no NaN, tp conserved).
    np.testing.assert_allclose(float(coarse["tp"].mean()), float(targets["tp"].mean()), rtol=1e-5)
