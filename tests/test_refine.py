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
    return VAEAutoencoder(
        variables=["t2m"],
        input_stats={"t2m": {"mean": 280.0, "std": 3.0}},
        block_out_channels=(8, 8),
        norm_num_groups=4,
        latent_channels=2,
    )


def _batch(n=3, H=16, W=24):
    x = torch.randn(n, 1, H, W)
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[:, :, :2, :3] = False  # masked points
    return {
        "x": x,
        "valid": valid,
        "z": torch.randn(n, 2, H // 2, W // 2),
        "z_gen": torch.randn(n, 3, 2, H // 2, W // 2),
    }


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
        refine_decoder(
            _vae(),
            None,
            None,
            None,
            [1.0],
            DecoderRefinement(total_samples=4, patch=[3, 3]),
            tmp_path,
            train,
        )
    with pytest.raises(ConfigError, match="generated_members"):
        refine_decoder(
            _vae(),
            None,
            None,
            None,
            [1.0],
            DecoderRefinement(total_samples=4, generated_members=0),
            tmp_path,
            train,
        )
    identity = get_autoencoder_class("identity")(variables=["t2m"])
    with pytest.raises(ConfigError, match="trainable decoder"):
        refine_decoder(
            identity, None, None, None, [1.0], DecoderRefinement(total_samples=4), tmp_path, train
        )
    assert not any(tmp_path.iterdir())  # nothing written


class _GaussianDenoiser(torch.nn.Module):
    """Exact denoiser of N(0, 1) residuals (a module: generate_latents asks for its device)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, sigma, cond=None, emb=None):
        return x / (1 + sigma.reshape(-1, 1, 1, 1).to(x.dtype) ** 2)


def test_generated_latents_differ_between_times_and_members():
    """Each time gets its own member seeds: identical conditioning still gives new noise."""
    from kmscale.conditioning.dataset import DownscalingDataset
    from kmscale.diffusion.refine import generate_latents

    n, h, w = 3, 4, 6
    ds = DownscalingDataset(
        torch.zeros(n, 1, h, w),
        torch.zeros(0, h, w),
        torch.zeros(n, 2),
        z=torch.zeros(n, 2, h, w),
        z_mean=torch.zeros(n, 2, h, w),
    )
    s = DecoderRefinement(total_samples=4, generated_members=2, steps=4)
    z = generate_latents(_GaussianDenoiser(), ds, [1.0, 1.0], s)
    assert z.shape == (n, 2, 2, h, w) and torch.isfinite(z).all()
    flat = z.reshape(n * 2, -1)
    assert torch.cdist(flat, flat).add(torch.eye(n * 2)).min() > 0.1  # no two alike
    torch.testing.assert_close(
        generate_latents(_GaussianDenoiser(), ds, [1.0, 1.0], s), z
    )  # seeded
