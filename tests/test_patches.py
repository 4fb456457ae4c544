"""Tiling, stitching and patch sampling (kmscale.data.patches)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kmscale.data.patches import (
    TileAccumulator,
    TileLayout,
    extract_tiles,
    random_patch,
    stitch_tiles,
)
from kmscale.errors import GridError


@pytest.mark.parametrize(
    "shape,tile,overlap",
    [
        ((64, 96), (32, 32), (8, 8)),
        ((70, 53), (32, 24), (5, 0)),
        ((32, 32), 32, 0),
        ((100, 37), 16, 15),
    ],
)
def test_layout_covers_field_last_tile_flush(shape, tile, overlap):
    layout = TileLayout(shape=shape, tile=tile, overlap=overlap)
    cover = np.zeros(layout.shape, dtype=int)
    for sy, sx in layout.slices:
        assert sy.stop - sy.start == layout.tile[0] and sx.stop - sx.start == layout.tile[1]
        assert sy.start >= 0 and sx.start >= 0
        cover[sy, sx] += 1
    assert cover.min() >= 1
    assert max(s.stop for s, _ in layout.slices) == layout.shape[0]
    assert max(s.stop for _, s in layout.slices) == layout.shape[1]
    assert len(layout.slices) == len(layout) == layout.grid[0] * layout.grid[1]


def test_layout_stride_and_count():
    layout = TileLayout(shape=(64, 96), tile=(32, 32), overlap=(8, 8))
    rows, cols = layout.starts
    assert rows == [0, 24, 32] and cols == [0, 24, 48, 64]


def test_window_positive_tapering():
    layout = TileLayout(shape=(64, 64), tile=(32, 32), overlap=(8, 4))
    w = layout.window()
    assert w.shape == (32, 32) and (w > 0).all() and w.max() == 1.0
    assert np.allclose(w[8:24, 4:28], 1.0)
    assert w[0, 16] < w[4, 16] < w[7, 16] < 1.0  # tapers toward the edge
    assert np.allclose(w, w[::-1, ::-1])
    assert np.array_equal(TileLayout((8, 8), 8, 0).window(), np.ones((8, 8)))


@pytest.mark.parametrize(
    "shape,tile,overlap", [((64, 96), 32, 8), ((70, 53), (32, 24), (5, 3)), ((16, 16), 16, 0)]
)
def test_stitch_of_extract_is_identity_numpy(rng, shape, tile, overlap):
    layout = TileLayout(shape=shape, tile=tile, overlap=overlap)
    x = rng.standard_normal((2, 3) + layout.shape).astype(np.float32)
    tiles = extract_tiles(x, layout)
    assert tiles.shape == (len(layout), 2, 3) + layout.tile
    y = stitch_tiles(tiles, layout)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-6)


def test_stitch_of_extract_is_identity_torch():
    layout = TileLayout(shape=(48, 80), tile=(32, 32), overlap=(6, 10))
    x = torch.randn(4, 48, 80, dtype=torch.float64)
    tiles = extract_tiles(x, layout)
    assert isinstance(tiles, torch.Tensor) and tiles.shape == (len(layout), 4, 32, 32)
    y = stitch_tiles(tiles, layout)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float64
    torch.testing.assert_close(y, x)
    y32 = stitch_tiles(list(tiles.float()), layout)  # a list of tiles works too
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32, x.float())


def test_blending_is_weighted_mean_brute_force(rng):
    """Tiles carrying different values blend as sum(w y) / sum(w), checked pixel by pixel."""
    layout = TileLayout(shape=(40, 40), tile=(24, 24), overlap=(8, 8))
    tiles = rng.standard_normal((len(layout), 24, 24))
    out = stitch_tiles(tiles, layout)
    w = layout.window()
    num = np.zeros((40, 40))
    den = np.zeros((40, 40))
    for tile, (sy, sx) in zip(tiles, layout.slices, strict=True):
        num[sy, sx] += w * tile
        den[sy, sx] += w
    np.testing.assert_allclose(out, num / den, rtol=1e-12)
    # where one tile alone covers a pixel, its value comes through untouched
    np.testing.assert_allclose(out[:16, :16], tiles[0][:16, :16], rtol=1e-12)


def test_blending_constant_tiles_smooth_seam():
    layout = TileLayout(shape=(32, 56), tile=32, overlap=8)
    tiles = np.stack([np.full((32, 32), float(i)) for i in range(len(layout))])
    out = stitch_tiles(tiles, layout)
    row = out[16]
    assert row[0] == 0.0 and row[-1] == len(layout) - 1
    assert (np.diff(row) >= -1e-12).all()  # monotone transition across the overlap, no jump back


def test_accumulator_streaming_and_missing_tile(rng):
    layout = TileLayout(shape=(50, 50), tile=20, overlap=4)
    x = rng.standard_normal((3, 50, 50))
    acc = TileAccumulator(layout, lead_shape=(3,), like=x)
    for i, (sy, sx) in enumerate(layout.slices[:-1]):
        acc.add(i, x[:, sy, sx])
    with pytest.raises(GridError, match="missing"):
        acc.result()
    sy, sx = layout.slices[-1]
    acc.add(len(layout) - 1, x[:, sy, sx])
    np.testing.assert_allclose(acc.result(), x, rtol=1e-12)
    with pytest.raises(GridError, match="tile shape"):
        acc.add(0, x[:2, :20, :20])
    with pytest.raises(GridError, match="tile index"):
        acc.add(len(layout), x[:, :20, :20])


def test_scaled_layout_matches_pixel_tiles():
    layout = TileLayout(shape=(128, 192), tile=(64, 64), overlap=(16, 16))
    latent = layout.scaled(8)
    assert latent == TileLayout(shape=(16, 24), tile=(8, 8), overlap=(2, 2))
    assert len(latent) == len(layout)
    for (py, px), (ly, lx) in zip(layout.slices, latent.slices, strict=True):
        assert (py.start, px.start) == (ly.start * 8, lx.start * 8)
    with pytest.raises(GridError, match="divisible"):
        layout.scaled(5)
    with pytest.raises(GridError, match="overlap"):
        TileLayout((64, 64), 32, 4).scaled(8)


def test_layout_errors():
    with pytest.raises(GridError, match="at least one tile"):
        TileLayout(shape=(20, 100), tile=32)
    with pytest.raises(GridError, match="overlap"):
        TileLayout(shape=(64, 64), tile=32, overlap=32)
    with pytest.raises(GridError, match="overlap"):
        TileLayout(shape=(64, 64), tile=32, overlap=-1)
    layout = TileLayout(shape=(64, 64), tile=32)
    with pytest.raises(GridError, match=r"\(64, 64\)"):
        extract_tiles(np.zeros((64, 65)), layout)
    with pytest.raises(GridError, match="4 tiles"):
        stitch_tiles(np.zeros((3, 32, 32)), layout)


def test_random_patch_uniform_in_bounds(rng):
    seen_r, seen_c = set(), set()
    for _ in range(500):
        sy, sx = random_patch((40, 30), (16, 8), rng)
        assert 0 <= sy.start and sy.stop <= 40 and sy.stop - sy.start == 16
        assert 0 <= sx.start and sx.stop <= 30 and sx.stop - sx.start == 8
        seen_r.add(sy.start)
        seen_c.add(sx.start)
    assert seen_r == set(range(25)) and seen_c == set(range(23))  # every origin reachable
    a = random_patch((100, 100), 10, np.random.default_rng(3))
    b = random_patch((100, 100), 10, np.random.default_rng(3))
    assert a == b


def test_random_patch_weighted_pixel_and_coarse(rng):
    field_shape = (64, 64)
    w = np.zeros(field_shape)
    w[50, 10] = 1.0  # one "heavy rain" pixel
    for _ in range(50):
        sy, sx = random_patch(field_shape, 16, rng, weights=w)
        assert sy.start <= 50 < sy.stop and sx.start <= 10 < sx.stop
    coarse = np.zeros((4, 4))
    coarse[0, 3] = 5.0  # the block rows 0-15, cols 48-63
    for _ in range(50):
        sy, sx = random_patch(field_shape, 8, rng, weights=coarse)
        centre = (sy.start + 4, sx.start + 4)
        assert 0 <= centre[0] < 20 and 44 <= centre[1] < 64
    # cells of a given size, the last ones cut at the edge (coarsen(boundary="pad"))
    cut = np.zeros((3, 3))
    cut[2, 2] = 1.0  # rows/cols 50..63 of a 64 x 64 field with 25 px cells
    for _ in range(30):
        sy, sx = random_patch(field_shape, 4, rng, weights=cut, cell=25)
        assert sy.start >= 48 and sx.start >= 48
    with pytest.raises(GridError, match="ceil"):
        random_patch(field_shape, 4, rng, weights=np.ones((2, 3)), cell=25)
    # mixing in a floor keeps rare values favoured but everything reachable
    mixed = 0.01 + (rng.random(field_shape) > 0.99) * 10.0
    hits = sum(
        mixed[random_patch(field_shape, 1, rng, weights=mixed)].item() > 1 for _ in range(300)
    )
    assert hits > 200


def test_random_patch_errors(rng):
    with pytest.raises(GridError, match="patch"):
        random_patch((10, 10), 11, rng)
    with pytest.raises(GridError, match="positive sum"):
        random_patch((10, 10), 4, rng, weights=np.zeros((10, 10)))
    with pytest.raises(GridError, match="positive sum"):
        random_patch((10, 10), 4, rng, weights=-np.ones((2, 2)))
    with pytest.raises(GridError, match="weights"):
        random_patch((10, 10), 4, rng, weights=np.ones((11, 10)))


# ----------------------------------------------------------------------------- PatchDataset


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    from kmscale.data.demo import DemoRegion, demo_targets
    from kmscale.data.demo_write import write_demo

    out = tmp_path_factory.mktemp("demo")
    region = DemoRegion.at(23.0, 119.5, 96, 128)
    times = pd.date_range("2023-07-01T10", periods=3, freq="h")
    paths = write_demo(out, region, times, seed=1, chunk=64)
    return paths["targets"], demo_targets(region, times, seed=1)


def test_patch_dataset_reads_the_right_patch(demo_store):
    from kmscale.data.loader import PatchDataset

    path, truth = demo_store
    variables = ["t2m", "tp", "u10"]
    for source in (path, truth):
        ds = PatchDataset(source, variables, patch=(32, 48), samples_per_epoch=6, seed=5)
        assert len(ds) == 6
        for i in range(len(ds)):
            item = ds[i]
            assert item["x"].dtype == torch.float32 and item["x"].shape == (3, 32, 48)
            t, (r0, r1), (c0, c1) = int(item["time"]), item["rows"].tolist(), item["cols"].tolist()
            expected = np.stack([truth[v].values[t, r0:r1, c0:c1] for v in variables])
            np.testing.assert_array_equal(item["x"].numpy(), expected)
            coords = ds.patch_coords(item["rows"], item["cols"])
            np.testing.assert_array_equal(coords["lat"], truth.lat.values[r0:r1])


def test_patch_dataset_deterministic_across_workers_and_epochs(demo_store):
    from torch.utils.data import DataLoader

    from kmscale.data.loader import PatchDataset

    path, _ = demo_store
    ds = PatchDataset(path, ["t2m", "v10"], patch=16, samples_per_epoch=8, seed=0)
    serial = torch.cat([b["x"] for b in DataLoader(ds, batch_size=4, num_workers=0)])
    parallel = torch.cat([b["x"] for b in DataLoader(ds, batch_size=4, num_workers=2)])
    torch.testing.assert_close(serial, parallel, rtol=0, atol=0)
    ds.set_epoch(1)
    assert not torch.equal(serial, torch.cat([b["x"] for b in DataLoader(ds, batch_size=4)]))


def test_patch_dataset_weighting_prefers_rain():
    import xarray as xr

    from kmscale.data.loader import PatchDataset

    tp = np.zeros((2, 128, 128), dtype=np.float32)
    tp[1, 90:100, 20:30] = 5.0  # one storm: 0.3 % of the pixels
    ds = xr.Dataset({"tp": (("time", "lat", "lon"), tp)})
    uniform = PatchDataset(ds, ["tp"], patch=16, samples_per_epoch=200, seed=0)
    weighted = PatchDataset(
        ds,
        ["tp"],
        patch=16,
        samples_per_epoch=200,
        seed=0,
        weight_var="tp",
        weight_threshold=1.0,
        weight_floor=0.001,
        weight_cell=16,
    )
    hit_u = np.mean([uniform[i]["x"].max().item() > 1 for i in range(200)])
    hit_w = np.mean([weighted[i]["x"].max().item() > 1 for i in range(200)])
    assert hit_u < 0.1 and hit_w > 0.6
    assert 0 < np.mean([int(weighted[i]["time"]) == 0 for i in range(200)])  # dry time still drawn


def test_patch_dataset_errors(demo_store, tmp_path):
    import xarray as xr

    from kmscale.data.loader import PatchDataset
    from kmscale.errors import MissingValueError, SchemaError, StoreError

    path, truth = demo_store
    with pytest.raises(SchemaError, match="missing \\['q850'\\]"):
        PatchDataset(path, ["t2m", "q850"])
    with pytest.raises(GridError, match="patch"):
        PatchDataset(path, ["t2m"], patch=(256, 256))
    with pytest.raises(StoreError, match="expected a kmscale zarr store"):
        PatchDataset(tmp_path / "nothing.zarr", ["t2m"])
    holes = truth[["t2m"]].copy(deep=True)
    holes["t2m"][:] = np.nan
    with pytest.raises(MissingValueError, match="NaN in \\['t2m'\\]"):
        PatchDataset(holes, ["t2m"], patch=8, samples_per_epoch=1)[0]
    assert torch.isnan(
        PatchDataset(holes, ["t2m"], patch=8, samples_per_epoch=1, allow_nan=True)[0]["x"]
    ).all()
    bad = xr.Dataset(
        {"a": (("time", "y", "x"), np.zeros((1, 8, 8))), "b": (("y", "x"), np.zeros((8, 8)))}
    )
    with pytest.raises(SchemaError, match="dims"):
        PatchDataset(bad, ["a", "b"], patch=4)
