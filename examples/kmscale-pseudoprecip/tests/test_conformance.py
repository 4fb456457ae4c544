"""The plugin passes kmscale's conformance kit (run after `pip install -e .`)."""

import torch
from kmscale_pseudoprecip import ConvPseudoPrecip

from kmscale.autoencoders.testing import ConformanceCase, check_autoencoder


def _model():
    model = ConvPseudoPrecip(variables=["tp", "q850"], hidden_width=8)
    model.set_input_stats(
        {
            "tp": {"mean": 0.3, "std": 0.5, "transform": "log1p", "scale": 1.0},
            "q850": {"mean": 0.008, "std": 0.002, "transform": "none", "scale": 1.0},
        }
    )
    return model


def test_conforms(tmp_path):
    torch.manual_seed(0)
    # Random weights: shapes, save/load, masks, tiling, batching, determinism, errors;
    # declare a round-trip tolerance for a trained model.
    report = check_autoencoder(ConformanceCase("pseudo-precip-conv", _model), tmp_path)
    assert not report.failures
