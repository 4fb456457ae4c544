"""Model bundle: save/load round trip, integrity checks, validation against data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _downscaling_data import synthetic  # noqa: E402

from kmscale.conditioning.dataset import ConditioningSpec  # noqa: E402
from kmscale.diffusion.bundle import EDMSettings, ModelBundle, grid_dataset  # noqa: E402
from kmscale.diffusion.networks import UNetSettings  # noqa: E402
from kmscale.diffusion.regression import build_unet  # noqa: E402
from kmscale.errors import BundleError  # noqa: E402

TINY = UNetSettings(block_out_channels=[8, 16], norm_num_groups=4)


def make_bundle(with_diffusion: bool = True) -> tuple[ModelBundle, object]:
    from kmscale.autoencoders import get_autoencoder_class

    targets, coarse, static = synthetic(n=8)
    lat, lon = targets.lat.values, targets.lon.values
    ae = get_autoencoder_class("identity")(variables=["t2m"])
    ae.set_input_stats({"t2m": {"mean": 280.0, "std": 3.0, "transform": "none", "scale": 1.0}})
    spec = ConditioningSpec.from_data(coarse, static, lat, lon, factor=1)
    torch.manual_seed(0)
    reg = build_unet(spec.cond_channels, 1, spec.emb_dim, TINY)
    diff = build_unet(2 + spec.cond_channels, 1, spec.emb_dim, TINY) if with_diffusion else None
    bundle = ModelBundle(
        ae,
        reg,
        diff,
        spec,
        grid_dataset(lat, lon, static, spec.static_variables),
        EDMSettings(residual_scale=[0.5]),
        lead_times=[0.0, 6.0],
        data_fingerprint="abc",
    )
    return bundle, coarse


def test_round_trip(tmp_path):
    bundle, _ = make_bundle()
    bundle.save(tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["variables"] == [{"name": "t2m", "units": "K"}]
    assert meta["predictors"] == ["t2m"] and meta["static_fields"] == ["orography", "land_sea_mask"]
    assert meta["target_grid"]["shape"] == [16, 24] and meta["kmscale_version"]
    loaded = ModelBundle.load(tmp_path / "b")
    assert loaded.fingerprint() == bundle.fingerprint() == meta["fingerprint"]
    np.testing.assert_allclose(loaded.grid["orography"].values, bundle.grid["orography"].values)
    for a, b in zip(bundle.diffusion.parameters(), loaded.diffusion.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert loaded.edm.residual_scale == [0.5]


def test_regression_only_bundle(tmp_path):
    bundle, _ = make_bundle(with_diffusion=False)
    bundle.save(tmp_path / "b")
    assert ModelBundle.load(tmp_path / "b").diffusion is None


def test_load_errors(tmp_path):
    with pytest.raises(BundleError, match="bundle.json"):
        ModelBundle.load(tmp_path)
    bundle, _ = make_bundle()
    path = bundle.save(tmp_path / "b")
    meta = json.loads((path / "bundle.json").read_text())
    meta["edm"]["residual_scale"] = [0.7]  # edited by hand: no longer matches the fingerprint
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="fingerprint"):
        ModelBundle.load(path)
    (path / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="corrupt"):
        ModelBundle.load(path)


def test_validate_accepts_matching_predictors():
    bundle, coarse = make_bundle()
    bundle.validate(coarse, (bundle.lat, bundle.lon))


def test_validate_missing_predictor_variable():
    bundle, coarse = make_bundle()
    with pytest.raises(BundleError, match=r"missing \['t2m'\]"):
        bundle.validate(coarse.rename(t2m="d2m"))


def test_validate_wrong_units():
    bundle, coarse = make_bundle()
    coarse["t2m"].attrs["units"] = "degC"
    with pytest.raises(BundleError, match="units"):
        bundle.validate(coarse)


def test_validate_grid_not_covering():
    bundle, coarse = make_bundle()
    with pytest.raises(BundleError, match="cover"):
        bundle.validate(coarse.isel(lat=slice(0, 2)))


def test_validate_lead_times_outside_training():
    bundle, coarse = make_bundle()
    late = coarse.assign_coords(lead_time=("time", np.full(coarse.sizes["time"], 48.0)))
    with pytest.raises(BundleError, match="lead times"):
        bundle.validate(late)


def test_validate_other_target_grid():
    bundle, coarse = make_bundle()
    with pytest.raises(BundleError, match="target grid"):
        bundle.validate(coarse, (bundle.lat + 0.1, bundle.lon))
