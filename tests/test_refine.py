"""Decoder refinement (kmscale.diffusion.refine): the objective on whole fields and on
patches, which parameters it trains, and its settings checks. The recipe run (two steps,
resume, bundle) is in tests/test_recipes.py."""

from __future__ import annotations

import pytest
import torch

from kmscale.autoencoders.vae import VAEAutoencoder
from kmscale.diffusion.refine import DecoderRefinement, pick_times, refine_decoder, refinement_loss
from kmscale.errors import ConfigError
from kmscale.training import TrainingSettings


def _vae():
    torch.manual_seed(0)
    return VAEAutoencoder(variables=["t2m"], input_stats={"t2m": {"mean": 280.0, "std": 3.0}},
                          block_out_channels=(8, 8), norm_num_groups=4, latent_channels=2)


def _batch(n=3, H=16, W=24):
    x = torch.randn(n, 1, H, W)
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[:, :, :2, :3] = False  # masked points
    return {"x": x, "valid": valid, "z": torch.randn(n, 2, H // 2, W // 2),
            "z_gen": torch.randn(n, 3, 2, H // 2, W // 2)}


@pytest.mark.parametrize("patch", [None, [8, 8]])
def test_loss_trains_the_decoder_only(patch):
    model = _vae()
    model.train_decoder_only()
    loss = refinement_loss(model, _batch(), DecoderRefinement(total_samples=4, patch=patch))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    decoder = {id(p) for m in model.decoder_modules() for p in m.parameters()}
    for p in model.parameters():
        assert (p.grad is not None) == (id(p) in decoder)


def test_masked_points_do_not_count():
    model = _vae().eval()
    s = DecoderRefinement(total_samples=4, spectral_weight=0.0)
    batch = _batch()
    torch.manual_seed(1)
    a = refinement_loss(model, batch, s)
    batch["x"][~batch["valid"]] = 1e3  # values under the mask are ignored
    torch.manual_seed(1)
    torch.testing.assert_close(refinement_loss(model, batch, s), a)


def test_pick_times_spreads_evenly():
    assert pick_times(10, 4).tolist() == [0, 3, 6, 9]
    assert pick_times(3, 256).tolist() == [0, 1, 2]


def test_bad_settings(tmp_path):
    from kmscale.autoencoders import get_autoencoder_class

    train = TrainingSettings()
    with pytest.raises(ConfigError, match="multiples of the downsample factor 2"):
        refine_decoder(_vae(), None, None, None, [1.0], DecoderRefinement(total_samples=4, patch=[3, 3]), tmp_path, train)
    with pytest.raises(ConfigError, match="generated_members"):
        refine_decoder(_vae(), None, None, None, [1.0], DecoderRefinement(total_samples=4, generated_members=0),
                       tmp_path, train)
    identity = get_autoencoder_class("identity")(variables=["t2m"])
    with pytest.raises(ConfigError, match="trainable decoder"):
        refine_decoder(identity, None, None, None, [1.0], DecoderRefinement(total_samples=4), tmp_path, train)
    assert not any(tmp_path.iterdir())  # nothing written
