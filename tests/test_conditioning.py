"""Conditioning: embeddings, static fields, predictor interpolation, spec, pairing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _downscaling_data import synthetic  # noqa: E402

from kmscale.conditioning.dataset import ConditioningSpec, build_dataset, latent_grid, pair_times  # noqa: E402
from kmscale.conditioning.embeddings import EMBEDDING_DIM, lead_times_of, time_embedding  # noqa: E402
from kmscale.conditioning.predictors import PredictorSpec, interpolate_regular  # noqa: E402
from kmscale.conditioning.static import STATIC_ENCODINGS, block_mean, static_fields  # noqa: E402
from kmscale.errors import AlignmentError, GridError, SchemaError, UnitsError  # noqa: E402


def test_time_embedding_is_periodic_and_scaled():
    t = np.array(["2019-03-01T00", "2019-03-01T06", "2019-03-02T00"], dtype="datetime64[h]")
    e = time_embedding(t, [0, 24, 240])
    assert e.shape == (3, EMBEDDING_DIM) and e.dtype == np.float32
    np.testing.assert_allclose(e[0, :2], [0, 1], atol=1e-6)  # 00Z
    np.testing.assert_allclose(e[1, :2], [1, 0], atol=1e-6)  # 06Z
    np.testing.assert_allclose(e[2, :2], e[0, :2], atol=1e-6)  # next day, same hour
    np.testing.assert_allclose(e[:, 4], [0, 0.1, 1.0])
    with pytest.raises(AlignmentError):
        time_embedding(t, [0, 1])
    with pytest.raises(AlignmentError):
        time_embedding(t, [0, -1, 3])


def test_lead_times_from_timedelta_coordinate():
    _, coarse, _ = synthetic(n=4)
    coarse = coarse.assign_coords(
        lead_time=("time", np.array([0, 6, 12, 18], dtype="timedelta64[h]"))
    )
    np.testing.assert_allclose(lead_times_of(coarse), [0, 6, 12, 18])


def test_static_fields_grid_check_and_encodings():
    targets, _, static = synthetic(n=2)
    lat, lon = targets.lat.values, targets.lon.values
    fields = static_fields(static, lat, lon)
    assert list(fields.data_vars) == ["orography", "land_sea_mask", *STATIC_ENCODINGS]
    np.testing.assert_allclose(fields["lat_sin"].values[:, 0], np.sin(np.deg2rad(lat)), rtol=1e-6)
    with pytest.raises(GridError, match="expected the target grid"):
        static_fields(static.isel(lat=slice(0, 8)), lat, lon)
    with pytest.raises(SchemaError):
        static_fields(static, lat, lon, ["orography", "soil_type"])


def test_block_mean_is_area_average():
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(block_mean(x, 2), [[2.5, 4.5], [10.5, 12.5]])
    with pytest.raises(GridError):
        block_mean(np.zeros((5, 4)), 2)


def test_bilinear_interpolation_reproduces_linear_fields_and_checks_coverage():
    src_lat, src_lon = np.arange(4.0), np.arange(6.0)
    f = 2 * src_lat[:, None] + 3 * src_lon[None, :]
    dst_lat, dst_lon = np.linspace(0, 3, 13), np.linspace(0.5, 4.5, 9)
    got = interpolate_regular(f, src_lat, src_lon, dst_lat, dst_lon).numpy()
    np.testing.assert_allclose(
        got, 2 * dst_lat[:, None] + 3 * dst_lon[None, :], rtol=1e-5, atol=1e-5
    )
    # Half a cell beyond the outermost centres is still covered (clamped to the edge cell) ...
    interpolate_regular(f, src_lat, src_lon, np.array([-0.5, 3.5]), dst_lon)
    # ... further out is not.
    with pytest.raises(GridError, match="cover the target"):
        interpolate_regular(f, src_lat, src_lon, np.array([-1.0, 2.0]), dst_lon)


def test_predictor_spec_from_data_and_errors():
    _, coarse, _ = synthetic(n=8)
    spec = PredictorSpec.from_data(coarse)
    assert spec.variables == ["t2m"] and spec.units == {"t2m": "K"}
    x = spec.stack(coarse, np.linspace(50.5, 53, 5), np.linspace(-4.5, 0, 7))
    assert x.shape == (8, 1, 5, 7) and abs(float(x.mean())) < 1.0
    with pytest.raises(SchemaError, match="missing"):
        spec.check(coarse.rename(t2m="d2m"))
    bad = coarse.copy()
    bad["t2m"].attrs["units"] = "degC"
    with pytest.raises(UnitsError, match="expected units 'K', found 'degC'"):
        spec.check(bad)
    assert PredictorSpec.from_dict(spec.to_dict()) == spec


def test_dataset_pairs_by_valid_time_and_channels_come_from_data():
    targets, coarse, static = synthetic(n=12)
    lat, lon = targets.lat.values, targets.lon.values
    spec = ConditioningSpec.from_data(coarse, static, lat, lon, factor=2)
    assert spec.cond_channels == 1 + 2 + len(STATIC_ENCODINGS)
    z = torch.randn(10, 3, 8, 12)
    ds = build_dataset(
        spec, coarse.isel(time=slice(2, 12)), static, lat, lon, z, targets.time.values[:10]
    )
    assert len(ds) == 8  # times 2..9 are in both
    item = ds[0]
    assert item["cond"].shape == (spec.cond_channels, 8, 12) and item["emb"].shape == (
        EMBEDDING_DIM,
    )
    torch.testing.assert_close(item["z"], z[2])
    assert ConditioningSpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()
    np.testing.assert_allclose(latent_grid(lat, lon, 2)[0], lat.reshape(-1, 2).mean(1))
    with pytest.raises(AlignmentError, match="found none"):
        pair_times(targets.time.values[:2], targets.time.values[5:7])
