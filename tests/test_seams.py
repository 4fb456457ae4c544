"""Seam diagnostic: ratio ~1 on a seamless field, well above 1 with a seam, tile edges of
a layout, NaN handling and limit cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from kmscale.data.patches import TileLayout
from kmscale.errors import GridError
from kmscale.evaluation.seams import SeamStats, seam_ratio, tile_edges


def smooth_field(shape=(96, 128), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), 3.0, mode="wrap")


def test_tile_edges_are_interior_starts_and_stops():
    layout = TileLayout(shape=(40, 30), tile=(16, 30), overlap=(4, 0))
    rows, cols = tile_edges(layout)
    starts = layout.starts[0]
    expected = sorted({s for s in starts if s > 0} | {s + 16 for s in starts if s + 16 < 40})
    assert rows.tolist() == expected and cols.size == 0
    rows8, _ = tile_edges(layout, scale=8)
    np.testing.assert_array_equal(rows8, rows * 8)


def test_seamless_field_gives_ratio_near_one():
    x = smooth_field()
    ratio = seam_ratio(x, [24, 48, 72], [32, 64, 96])
    assert 0.9 < ratio < 1.1


def test_a_seam_is_detected():
    x = smooth_field()
    step = np.abs(np.diff(x, axis=0)).mean()
    y = x.copy()
    y[48:] += 5 * step  # a tile that is off by an offset: a step along row 48
    y[:, 64:] -= 5 * step
    assert seam_ratio(y, [48], [64]) > 2.5
    # the same field measured at edges where there is no seam stays near 1
    assert 0.8 < seam_ratio(y, [24], [32]) < 1.2


def test_seam_stats_accumulate_fields_and_skip_nan():
    a, b = smooth_field(seed=1), smooth_field(seed=2)
    stats = SeamStats(np.array([48]), np.array([64]))
    stats.add(a)
    stats.add(b)
    assert stats.ratio == pytest.approx(seam_ratio(np.stack([a, b]), [48], [64]))
    masked = a.copy()
    masked[:10, :10] = np.nan
    assert np.isfinite(seam_ratio(masked, [48], [64]))


def test_limit_cases():
    x = smooth_field()
    assert np.isnan(seam_ratio(x, [], []))  # no edges: nothing to compare
    assert np.isnan(seam_ratio(np.ones((8, 8)), [4], [4]))  # no variation anywhere
    with pytest.raises(GridError, match="H, W"):
        SeamStats(np.array([1]), np.array([1])).add(np.ones(5))
