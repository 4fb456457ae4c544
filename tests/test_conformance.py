"""The conformance kit (kmscale.autoencoders.testing) on every built-in autoencoder, and
its failure paths on deliberately broken models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from diffusers.configuration_utils import register_to_config

from kmscale.autoencoders import get_autoencoder_class
from kmscale.autoencoders.base import Autoencoder
from kmscale.autoencoders.registry import _REGISTRY, register
from kmscale.autoencoders.testing import (
    CHECKS,
    ConformanceCase,
    ConformanceError,
    check_autoencoder,
    check_class,
    conformance_parametrize,
)

sys.path.insert(0, str(Path(__file__).parent))
from _pseudo_precip_data import synthetic_fields, train_small  # noqa: E402

STATS = {
    "t2m": {"mean": 280.0, "std": 5.0, "transform": "none", "scale": 1.0},
    "tp": {"mean": 0.3, "std": 0.5, "transform": "log1p", "scale": 1.0},
}


def _identity():
    ae = get_autoencoder_class("identity")(variables=["t2m", "tp"])
    ae.set_input_stats(STATS)
    return ae


def _vae():
    torch.manual_seed(0)
    ae = get_autoencoder_class("vae")(
        variables=["t2m"], block_out_channels=(8, 8), norm_num_groups=4, latent_channels=2
    )
    ae.set_input_stats({"t2m": STATS["t2m"]})
    return ae


BUILTIN_CASES = [
    ConformanceCase("identity", _identity, roundtrip_tolerance={"t2m": 1e-6, "tp": 1e-5}),
    # Random weights: no round-trip claim. A 2x model whose receptive radius fits in 3/8
    # of a 48 px overlap; tiles then equal the whole field up to float32 rounding of
    # kelvin values near 280 (1e-3 K).
    ConformanceCase("vae", _vae, spatial_shape=(96, 96), tile=64, overlap=48, tile_tolerance=1e-3),
]


@conformance_parametrize(BUILTIN_CASES)
def test_builtin_autoencoders_conform(case, tmp_path):
    report = check_autoencoder(case, tmp_path)
    assert set(report.results) == set(CHECKS)
    assert not report.failures


@pytest.fixture(scope="module")
def trained_pp(tmp_path_factory):
    model, _ = train_small(tmp_path_factory.mktemp("pp"))
    return model


def _pp_sample(batch, shape, gen):
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    ds = synthetic_fields(n_times=batch, shape=shape, seed=seed)
    return torch.from_numpy(
        ds[["tp", "cmp"]].to_dataarray("variable").transpose("time", "variable", ...).values
    )


def test_pseudo_precip_conforms(trained_pp, tmp_path):
    case = ConformanceCase(
        "pseudo_precip",
        lambda: trained_pp,
        sample=_pp_sample,
        roundtrip_tolerance={"tp": 0.25, "cmp": None},
    )
    assert not check_autoencoder(case, tmp_path).failures


def test_roundtrip_tolerance_is_enforced(trained_pp, tmp_path):
    case = ConformanceCase(
        "pseudo_precip",
        lambda: trained_pp,
        sample=_pp_sample,
        roundtrip_tolerance={"tp": 1e-6, "cmp": None},
    )
    with pytest.raises(ConformanceError, match="roundtrip.*tp: RMSE/std"):
        check_autoencoder(case, tmp_path)


class _BatchCoupled(Autoencoder):
    """Breaks batch independence and tiling: subtracts the batch (field) mean."""

    @register_to_config
    def __init__(self, variables=("t2m",), input_stats=None, latent_mean=None, latent_std=None):
        super().__init__()
        self.register_buffer("_anchor", torch.zeros(()))

    @property
    def downsample_factor(self):
        return 1

    @property
    def latent_channels(self):
        return 1

    def _encode_normalized(self, x):
        return x - x.mean()

    def _decode_normalized(self, z):
        return z


@pytest.fixture
def coupled():
    register("test-batch-coupled")(_BatchCoupled)
    yield "test-batch-coupled"
    _REGISTRY.pop("test-batch-coupled", None)


def test_broken_model_fails_named_checks(coupled, tmp_path):
    report = check_autoencoder(
        ConformanceCase(coupled, _BatchCoupled), tmp_path, raise_on_failure=False
    )
    assert {"batch_independence", "tiling"} <= set(report.failures)
    assert report.results["determinism"] == "ok" and report.results["save_load"] == "ok"
    with pytest.raises(ConformanceError, match="batch independence"):
        check_autoencoder(ConformanceCase(coupled, _BatchCoupled), tmp_path)


def test_unregistered_model_fails_discovery(tmp_path):
    report = check_autoencoder(
        ConformanceCase("no-such-name", _identity), tmp_path, raise_on_failure=False
    )
    assert "discovery" in report.failures and "no-such-name" in report.failures["discovery"]


def test_check_class_names_missing_contract():
    class Half(Autoencoder):
        @property
        def downsample_factor(self):
            return 1

    with pytest.raises(ConformanceError, match="latent_channels.*_encode_normalized"):
        check_class(Half)
    with pytest.raises(ConformanceError, match="Autoencoder subclass"):
        check_class(int)
    check_class(get_autoencoder_class("pseudo_precip"))
