"""benchmarks/compression.py helpers: resize with partial blocks, latent byte counting."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "compression.py"


def bench():
    spec = importlib.util.spec_from_file_location("compression_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_block_interp_matches_bilinear_for_full_blocks():
    cb = bench()
    rng = np.random.default_rng(0)
    coarse = rng.standard_normal((2, 4, 6))
    ref = F.interpolate(
        torch.from_numpy(coarse)[:, None], scale_factor=4, mode="bilinear", align_corners=False
    )[:, 0].numpy()
    ay, ax = cb._block_interp_matrix(16, 4), cb._block_interp_matrix(24, 4)
    np.testing.assert_allclose(np.einsum("yi,tij,xj->tyx", ay, coarse, ax), ref, atol=1e-12)


def test_block_interp_partial_block_sits_at_its_centroid():
    cb = bench()
    a = cb._block_interp_matrix(48, 32)  # one full block (centre 15.5), one of 16 px (centre 39.5)
    assert a.shape == (48, 2)
    np.testing.assert_allclose(a.sum(1), 1.0)
    np.testing.assert_allclose(a[:16], [[1.0, 0.0]] * 16)  # held constant outside the centroids
    np.testing.assert_allclose(a[40:], [[0.0, 1.0]] * 8)
    # A field that is linear along the axis is reproduced between the centroids.
    x = np.arange(48, dtype=float)
    means = np.array([x[:32].mean(), x[32:].mean()])
    np.testing.assert_allclose((a @ means)[16:40], x[16:40])


def test_latent_bytes_time_delta_is_lossless_and_counts_bytes():
    cb = bench()
    rng = np.random.default_rng(1)
    slow = np.cumsum(
        rng.integers(-1, 2, size=(48, 2, 4, 6)), axis=0
    )  # (T, C, h, w), slowly varying
    q = np.clip(slow, -127, 127).astype(np.int8)
    plain, delta = cb.latent_bytes(q, False), cb.latent_bytes(q, True)
    assert 0 < delta < plain  # small hour-to-hour steps code smaller as differences


def test_vae_points_with_tail_offsets_count_their_bytes():
    from kmscale.autoencoders.vae import VAEAutoencoder

    cb = bench()
    torch.manual_seed(0)
    model = VAEAutoencoder(
        variables=["t2m"],
        input_stats={"t2m": {"mean": 280.0, "std": 3.0}},
        block_out_channels=(8, 8),
        norm_num_groups=8,
        latent_channels=2,
    ).eval()
    model.set_latent_stats([0.0, 0.0], [1.0, 1.0])
    rng = np.random.default_rng(0)
    x = (280 + 3 * rng.standard_normal((4, 16, 24))).astype(np.float32)
    tails4 = {"probs": (0.0, 0.001, 0.01, 0.99, 0.999, 1.0), "anchors": (0.1, 0.9)}
    knots = {"tails": {}, "tails4": tails4}
    pts = cb.run_vae(
        model,
        {"config": "tiny"},
        x,
        None,
        0,
        steps=(0.1,),
        time_delta=False,
        tail_resolution=0.01,
        tail_knots=knots,
    )
    by = {p["latent_coding"]: p for p in pts if p["quant_step"] == 0.1}
    assert set(by) == {"zstd", "zstd+tails", "zstd+tails4"}
    for name in ("zstd+tails", "zstd+tails4"):
        assert (
            by[name]["bytes"] == by["zstd"]["bytes"] + by[name]["tail_bytes"] > by["zstd"]["bytes"]
        )
    # an untrained decoder's tails are far off; the offsets pull the 99.9 % quantile back
    assert abs(by["zstd+tails"]["q999_err"]) < abs(by["zstd"]["q999_err"])
