"""Patch-wise denoising: equivalence with the unpatched denoiser, no seams, global context."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kmscale.data.patches import TileLayout
from kmscale.diffusion.edm import EDMPrecond
from kmscale.diffusion.ensemble import sample_ensemble
from kmscale.diffusion.networks import ConditionalUNet
from kmscale.diffusion.patching import (
    PatchedDenoiser,
    context_channels,
    global_context,
    training_patches,
    with_context,
)
from kmscale.errors import ConfigError, GridError

H, W = 32, 64
FULL = (slice(0, H), slice(0, W))


def tiny_precond(in_channels, out_channels, **kw) -> EDMPrecond:
    torch.manual_seed(0)
    unet = ConditionalUNet(
        in_channels,
        out_channels,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        **kw,
    ).eval()
    return EDMPrecond(unet, sigma_data=0.5)


def pointwise_denoiser(x, sigma, cond=None, emb=None):
    """Exact denoiser of N(0.3, 0.7^2) data, pixel by pixel."""
    s = sigma.reshape(-1, 1, 1, 1)
    return (0.49 * x + s**2 * 0.3) / (0.49 + s**2)


BLUR = torch.ones(1, 1, 5, 5) / 25


def blur_denoiser(x, sigma, cond=None, emb=None):
    """Local, translation-equivariant denoiser whose zero padding marks tile edges."""
    s = sigma.reshape(-1, 1, 1, 1)
    return 0.5 * F.conv2d(x, BLUR, padding=2) / (0.5 + s**2)


def seam_ratio(r: torch.Tensor, layout: TileLayout) -> float:
    """Mean |jump| between neighbouring columns at tile right edges / median over all columns."""
    d = (r[..., :, 1:] - r[..., :, :-1]).abs().mean(dim=(0, 1, 2))
    edges = sorted({sx.stop - 1 for _, sx in layout.slices if sx.stop < r.shape[-1]})
    return (d[edges].mean() / d.median()).item()


def test_one_tile_equals_unpatched():
    net = tiny_precond(2 + 3, 2, embedding_dim=4)
    x, cond, emb = torch.randn(2, 2, H, W), torch.randn(2, 3, H, W), torch.randn(2, 4)
    sigma = torch.tensor([0.2, 7.0])
    patched = PatchedDenoiser(net, TileLayout((H, W), (H, W)))
    with torch.no_grad():
        assert torch.equal(patched(x, sigma, cond, emb), net(x, sigma, cond, emb))


def test_one_tile_with_context_equals_unpatched_with_context():
    size = (4, 8)
    net = tiny_precond(2 + 3 + context_channels(3, size), 2)
    x, cond = torch.randn(2, 2, H, W), torch.randn(2, 3, H, W)
    patched = PatchedDenoiser(net, TileLayout((H, W), (H, W)), context_size=size)
    with torch.no_grad():
        expected = net(x, 0.5, with_context(cond, FULL, size))
        torch.testing.assert_close(patched(x, 0.5, cond), expected)


@pytest.mark.parametrize(
    ("tile", "overlap", "tile_batch_size"), [((16, 16), (8, 8), 3), ((16, 24), (4, 0), 16)]
)
def test_pointwise_denoiser_patched_sampling_equals_unpatched(tile, overlap, tile_batch_size):
    layout = TileLayout((H, W), tile, overlap)
    kwargs = {"num_steps": 6, "S_churn": 5.0}
    full = sample_ensemble(pointwise_denoiser, None, None, 3, [1, 2, 3], kwargs, 3, (1, H, W))
    patched = sample_ensemble(
        PatchedDenoiser(pointwise_denoiser, layout, tile_batch_size=tile_batch_size),
        None,
        None,
        3,
        [1, 2, 3],
        kwargs,
        2,
        (1, H, W),
    )
    torch.testing.assert_close(patched, full, atol=1e-5, rtol=1e-5)


def test_overlap_averaging_at_every_step_removes_seams():
    kwargs = {"num_steps": 12}
    seeds = list(range(8))
    full = sample_ensemble(blur_denoiser, None, None, 8, seeds, kwargs, 8, (1, H, W))
    ratios, errors = {}, {}
    for overlap in (0, 8):
        layout = TileLayout((H, W), (16, 16), (overlap, overlap))
        r = sample_ensemble(
            PatchedDenoiser(blur_denoiser, layout), None, None, 8, seeds, kwargs, 8, (1, H, W)
        )
        ratios[overlap], errors[overlap] = seam_ratio(r, layout), (r - full).abs().mean().item()
    assert ratios[0] > 2.0  # the metric does see seams when tiles are not blended
    assert ratios[8] < 1.4
    assert errors[8] < 0.25 * errors[0]
    assert errors[8] < 0.1 * full.std().item()


def test_each_tile_gets_its_cond_tile_plus_global_context():
    seen = []

    def spy(x, sigma, cond=None, emb=None):
        seen.append((x.clone(), sigma.clone(), cond.clone(), None if emb is None else emb.clone()))
        return x

    layout = TileLayout((H, W), (16, 32), (4, 8))
    size = (4, 4)
    x, cond, emb = torch.randn(2, 1, H, W), torch.randn(2, 3, H, W), torch.randn(2, 5)
    sigma = torch.tensor([1.0, 2.0])
    out = PatchedDenoiser(spy, layout, context_size=size, tile_batch_size=5)(x, sigma, cond, emb)
    torch.testing.assert_close(out, x)  # identity tiles stitch back to the field
    xs = torch.cat([s[0] for s in seen])
    sig = torch.cat([s[1] for s in seen])
    conds = torch.cat([s[2] for s in seen])
    embs = torch.cat([s[3] for s in seen])
    assert conds.shape[1] == 3 + context_channels(3, size)
    pooled = global_context(cond, size)
    for k, (n, b) in enumerate((n, b) for n in range(len(layout)) for b in range(2)):
        sy, sx = layout.slices[n]
        assert torch.equal(xs[k], x[b, :, sy, sx])
        assert sig[k] == sigma[b] and torch.equal(embs[k], emb[b])
        torch.testing.assert_close(
            conds[k], with_context(cond[b : b + 1], (sy, sx), size, pooled[b : b + 1])[0]
        )
    # The "where am I" channel differs between tiles; the coarse cond does not.
    assert not torch.equal(conds[0, -1], conds[2, -1])
    torch.testing.assert_close(conds[0, 3:6], conds[2, 3:6])


def test_patched_denoiser_bad_input():
    layout = TileLayout((H, W), (16, 16), (4, 4))
    with pytest.raises(GridError, match="expected x"):
        PatchedDenoiser(pointwise_denoiser, layout)(torch.zeros(1, 1, H, W + 1), 1.0)
    with pytest.raises(GridError, match="cond"):
        PatchedDenoiser(pointwise_denoiser, layout, context_size=4)(torch.zeros(1, 1, H, W), 1.0)
    with pytest.raises(GridError, match="cond"):
        PatchedDenoiser(pointwise_denoiser, layout)(
            torch.zeros(1, 1, H, W), 1.0, torch.zeros(1, 2, H, 8)
        )
    with pytest.raises(ConfigError, match="tile_batch_size"):
        PatchedDenoiser(pointwise_denoiser, layout, tile_batch_size=0)
    assert context_channels(7, None) == 0 and context_channels(7, 4) == 8


def test_training_patches_match_what_the_patched_denoiser_feeds(rng):
    y, cond = torch.randn(3, 2, H, W), torch.randn(3, 4, H, W)
    yp, cp = training_patches(y, cond, (8, 16), (4, 4), np.random.default_rng(5))
    assert yp.shape == (3, 2, 8, 16) and cp.shape == (3, 4 + context_channels(4, 4), 8, 16)
    # Recover each patch's position and check the conditioning is with_context's.
    for b in range(3):
        hits = [
            (r, c)
            for r in range(H - 7)
            for c in range(W - 15)
            if torch.equal(y[b, :, r : r + 8, c : c + 16], yp[b])
        ]
        assert len(hits) == 1
        r, c = hits[0]
        torch.testing.assert_close(
            cp[b], with_context(cond[b : b + 1], (slice(r, r + 8), slice(c, c + 16)), (4, 4))[0]
        )
    yp, cp = training_patches(y, None, 8, None, rng)
    assert yp.shape == (3, 2, 8, 8) and cp is None
