"""Autoencoders: contract for every registered model, VAE, losses, tiling, quantization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kmscale.autoencoders import available, get_autoencoder_class, load_autoencoder
from kmscale.autoencoders.losses import VAELoss, charbonnier
from kmscale.autoencoders.norms import PixelGroupNorm
from kmscale.autoencoders.quantize import (
    dequantize,
    entropy_bits,
    int_dtype_for,
    measure_rate,
    quantize,
)
from kmscale.autoencoders.tiling import auto_tiling, tiled_decode, tiled_encode
from kmscale.autoencoders.vae import VAEAutoencoder
from kmscale.errors import CheckpointError, ConfigError, GridError, SchemaError

STATS = {
    "t2m": {"mean": 280.0, "std": 5.0},
    "u10": {"mean": 0.0, "std": 4.0},
    "tp": {"mean": 0.2, "std": 0.5, "transform": "log1p", "scale": 1.0},
}
SMALL = {"vae": {"block_out_channels": (8, 16), "norm_num_groups": 8, "latent_channels": 2}}


def make(name: str, variables=("t2m",)):
    torch.manual_seed(0)
    cls = get_autoencoder_class(name)
    return cls(
        variables=list(variables),
        input_stats={v: STATS[v] for v in variables},
        **SMALL.get(name, {}),
    ).eval()


def field(shape=(2, 1, 32, 48), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 280 + 5 * torch.randn(shape, generator=g)


def test_builtins_registered():
    assert {"identity", "vae"} <= set(available())


@pytest.mark.parametrize("name", ["identity", "vae"])
def test_shapes_and_round_trip(name):
    model = make(name, ("t2m", "u10"))
    x = torch.cat([field((2, 1, 32, 48)), torch.randn(2, 1, 32, 48)], dim=1)
    with torch.no_grad():
        z = model.encode(x)
        f = model.downsample_factor
        assert z.shape == (2, model.latent_channels, 32 // f, 48 // f)
        y = model.decode(z)
    assert y.shape == x.shape and torch.isfinite(y).all()
    if name == "identity":
        torch.testing.assert_close(y, x)


@pytest.mark.parametrize("name", ["identity", "vae"])
def test_save_load_equality(name, tmp_path):
    model = make(name)
    model.set_latent_stats([0.1] * model.latent_channels, [2.0] * model.latent_channels)
    model.save_pretrained(tmp_path / "m")
    loaded = load_autoencoder(tmp_path / "m", expect=name)
    assert type(loaded) is type(model) and loaded.fingerprint() == model.fingerprint()
    x = field()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), model.encode(x))


def test_vae_config_sizes():
    model = VAEAutoencoder(variables=["t2m"], block_out_channels=(8, 8, 8, 8), norm_num_groups=8)
    assert model.downsample_factor == 8 and model.latent_channels == 4
    assert model.compression_factor == 64 / 4
    with pytest.raises(ConfigError, match="divisible by norm_num_groups"):
        VAEAutoencoder(block_out_channels=(12, 16), norm_num_groups=8)


def test_bad_input_errors(tmp_path):
    model = make("vae", ("t2m", "u10"))
    with pytest.raises(SchemaError, match="expected a tensor"):
        model.encode(field())  # one channel for a two-variable model
    with pytest.raises(SchemaError, match="expected latents"):
        model.decode(torch.zeros(1, 3, 4, 4))
    model.save_pretrained(tmp_path / "vae")
    with pytest.raises(CheckpointError, match="expected a 'identity' autoencoder"):
        load_autoencoder(tmp_path / "vae", expect="identity")
    weights = next((tmp_path / "vae").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        load_autoencoder(tmp_path / "vae")


def test_vae_nan_inputs_are_filled():
    model = make("vae")
    x = field()
    x[:, :, :4, :4] = float("nan")
    with torch.no_grad():
        assert torch.isfinite(model.encode(x)).all()


# ---------------------------------------------------------------------------- losses
def test_losses_limits():
    model = make("vae")
    x = model.normalize_input(field())
    out = model(x)
    x_hat, post = out.sample, out.latent_dist
    loss = VAELoss(kl_weight=1e-3, kl_warmup_samples=100, spectral_weight=0.1)
    parts = loss(x, x, post, samples_seen=0)
    assert parts["recon"].shape == (2,) and torch.all(parts["recon"] == 0)
    assert torch.all(parts["spectral"].abs() < 1e-6) and torch.all(parts["total"] == 0)
    assert loss.beta(0) == 0 and loss.beta(50) == pytest.approx(5e-4) and loss.beta(10**6) == 1e-3
    parts = loss(x_hat, x, post, samples_seen=100)
    assert torch.all(parts["kl"] > 0) and torch.all(parts["total"] > parts["recon"])
    # Masked points do not count: corrupt them and the loss is unchanged.
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[..., :8, :] = False
    bad = x_hat.clone()
    bad[..., :8, :] = 100.0
    a = loss(x_hat, x, post, mask=mask)["recon"]
    b = loss(bad, x, post, mask=mask)["recon"]
    torch.testing.assert_close(a, b)
    e = torch.tensor([0.0, 1e-4, 10.0])
    torch.testing.assert_close(charbonnier(e, 1e-3), torch.sqrt(e**2 + 1e-6) - 1e-3)


def test_loss_weights_emphasize_points():
    model = make("vae")
    x = model.normalize_input(field())
    out = model(x)
    x_hat, post = out.sample, out.latent_dist
    loss = VAELoss()
    plain = loss(x_hat, x, post)["recon"]
    # Uniform weights are the plain mean; weight 0 removes a region like a mask does.
    torch.testing.assert_close(loss(x_hat, x, post, weight=torch.full_like(x, 3.0))["recon"], plain)
    w = torch.ones_like(x)
    w[..., :8, :] = 0.0
    mask = w.bool()
    torch.testing.assert_close(
        loss(x_hat, x, post, weight=w)["recon"], loss(x_hat, x, post, mask=mask)["recon"]
    )
    # More weight where the error is large raises the loss.
    err = (x_hat - x).abs()
    heavy = 1.0 + 4.0 * (err > err.median()).float()
    assert torch.all(loss(x_hat, x, post, weight=heavy)["recon"] > plain)
    with pytest.raises(ValueError, match="non-negative"):
        loss(x_hat, x, post, weight=-w)


def test_vae_quantization_noise():
    """QAT: the decoder sees mu + U(-1/2, 1/2) * step * latent_std, not a posterior sample."""
    torch.manual_seed(0)
    model = make("vae")
    x = model.normalize_input(field())
    mu = model.posterior(x).mode()
    model.set_latent_stats([0.0] * model.latent_channels, [2.0] * model.latent_channels)
    captured = {}
    real = model._decode_normalized

    def spy(z):
        captured["z"] = z
        return real(z)

    model._decode_normalized = spy
    g = torch.Generator().manual_seed(1)
    x_hat = model(x, quant_step=0.5, generator=g).sample
    noise = (captured["z"] - mu).detach()
    assert x_hat.shape == x.shape
    assert float(noise.abs().max()) <= 0.5 * 0.5 * 2.0 + 1e-6  # |u| <= 1/2, step 0.5, std 2
    assert float(noise.abs().max()) > 0.3  # and it is really there
    model(x, quant_step=0.0, sample_posterior=False)
    torch.testing.assert_close(captured["z"], mu)  # no noise: the mode
    with pytest.raises(ConfigError, match="quant_step"):
        model(x, quant_step=-0.1)
    # Gradients reach the encoder through the noisy latent.
    model._decode_normalized = real
    x_hat = model(x, quant_step=0.5).sample
    x_hat.square().mean().backward()
    assert model.vae.encoder.conv_in.weight.grad is not None


def test_vae_trains_a_few_steps():
    torch.manual_seed(0)
    model = make("vae").train()
    loss = VAELoss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = model.normalize_input(field((4, 1, 16, 16)))
    first = None
    for _ in range(15):
        out = model(x, sample_posterior=False)
        x_hat, post = out.sample, out.latent_dist
        total = loss(x_hat, x, post)["total"].mean()
        first = first if first is not None else float(total.detach())
        opt.zero_grad()
        total.backward()
        opt.step()
    assert float(total.detach()) < first


# ---------------------------------------------------------------------------- tiling
def test_tiled_identity_is_exact():
    model = make("identity")
    x = field((1, 1, 50, 70))[0]
    z = tiled_encode(model, x, tile=(16, 24), overlap=(6, 8))
    torch.testing.assert_close(z, model.encode(x[None])[0])
    y = tiled_decode(model, z, tile=(16, 16), overlap=(4, 4))
    torch.testing.assert_close(y, x, atol=1e-4, rtol=0)


def _smooth_field(h: int = 64, w: int = 160) -> torch.Tensor:
    yy, xx = np.mgrid[0:h, 0:w] / 10.0
    noise = np.random.default_rng(0).standard_normal((h, w))
    return torch.from_numpy((280 + 5 * np.sin(xx) * np.cos(yy) + noise)[None].astype(np.float32))


def _tiling_gaps(model) -> tuple[float, float]:
    """max |tiled - untiled| / std, for encode and for decode (beyond 4 float32 ulps of the
    values), 64 x 160 px in 3 tiles.

    The overlap (80 px, 3/8 = 30 px discarded) covers the receptive radius of the SMALL
    VAE (measured as in test_receptive_radius_within_default_overlap: encoder 18 px,
    decoder 12 latent px = 24 px).
    """
    x = _smooth_field()
    tile, overlap = (64, 112), (0, 80)
    z_full = tiled_encode(model, x)
    z_tiled = tiled_encode(model, x, tile=tile, overlap=overlap)
    y_full = tiled_decode(model, z_full)
    y_tiled = tiled_decode(model, z_full, tile=tile, overlap=overlap)
    enc = float((z_tiled - z_full).abs().max() / z_full.std())
    # Decoded fields are in K near 280, where one float32 ulp is 3e-5 K: allow 4 ulps.
    ulps = 4 * torch.finfo(torch.float32).eps * float(y_full.abs().max())
    dec = float(((y_tiled - y_full).abs().max() - ulps).clamp(min=0) / y_full.std())
    return enc, dec


def _train_steps(model, steps: int = 8):
    torch.manual_seed(1)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = model.normalize_input(field((4, 1, 32, 32)))
    for _ in range(steps):
        out = model(x, sample_posterior=False)
        x_hat, post = out.sample, out.latent_dist
        total = VAELoss()(x_hat, x, post)["total"].mean()
        opt.zero_grad()
        total.backward()
        opt.step()
    return model.eval()


def test_pixel_norm_vae_tiles_exactly():
    """norm_type="pixel": tiled == untiled to float rounding, with random and trained weights.

    Tolerance 1e-4 of the field's std: everything left is float32 rounding of convolutions
    run on different extents (observed ~4e-6 encode; decode within 2 ulps of 281 K); the
    old GroupNorm model misses it by orders of magnitude (next test). Batches of fields =
    one at a time.
    """
    model = make("vae")
    assert model.config.norm_type == "pixel"
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    for stage in ("random", "trained"):
        if stage == "trained":
            model = _train_steps(model)
        enc, dec = _tiling_gaps(model)
        assert enc < 1e-4 and dec < 1e-4, (stage, enc, dec)
    x = _smooth_field()
    torch.testing.assert_close(tiled_encode(model, torch.stack([x, x]))[1], tiled_encode(model, x))


def test_group_norm_vae_does_not_tile_exactly():
    """norm_type="group": per-tile GroupNorm statistics change the result."""
    torch.manual_seed(0)
    model = VAEAutoencoder(
        variables=["t2m"], input_stats={"t2m": STATS["t2m"]}, norm_type="group", **SMALL["vae"]
    ).eval()
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    enc, dec = _tiling_gaps(_train_steps(model))
    assert enc > 1e-3 and dec > 1e-3


def test_pixel_group_norm_is_local():
    """Per-pixel statistics over each channel group: a pixel's output ignores other pixels."""
    norm = PixelGroupNorm(2, 8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 8, 5, 7)
    xg = x.reshape(2, 2, 4, 5, 7)
    ref = (xg - xg.mean(2, keepdim=True)) / torch.sqrt(
        xg.var(2, unbiased=False, keepdim=True) + 1e-5
    )
    ref = ref.reshape(x.shape) * norm.weight[:, None, None] + norm.bias[:, None, None]
    torch.testing.assert_close(norm(x), ref)
    torch.testing.assert_close(norm(x[..., 1:3, 2:6]), norm(x)[..., 1:3, 2:6])
    with pytest.raises(ConfigError, match="dividing"):
        PixelGroupNorm(3, 8)


def test_receptive_radius_within_default_overlap():
    """Gradient support of one output of the default-depth 8x VAE (widths do not change it):
    encoder 81 px, decoder 14 latent px = 112 px; 3/8 of auto_tiling's overlap must cover both."""
    torch.manual_seed(0)
    model = VAEAutoencoder(
        variables=["t2m"], block_out_channels=(8, 8, 8, 8), norm_num_groups=8
    ).eval()
    f = model.downsample_factor
    x = torch.randn(1, 1, 256, 256, requires_grad=True)
    z = model._encode_normalized(x)
    c = z.shape[-1] // 2
    z[0, :, c, c].sum().backward()
    support = torch.nonzero(x.grad[0, 0] != 0).float()
    r_enc = float((support - (c * f + f / 2)).abs().max())
    zz = torch.randn(1, model.latent_channels, 40, 40, requires_grad=True)
    y = model._decode_normalized(zz)
    p = y.shape[-1] // 2
    y[0, :, p, p].sum().backward()
    r_dec = float((torch.nonzero(zz.grad[0].abs().sum(0) != 0).float() - p / f).abs().max()) * f
    assert (r_enc, r_dec) == (81.0, 112.0)
    _, overlap = auto_tiling((4384, 6880), f)
    assert 3 * overlap[0] // 8 >= max(r_enc, r_dec)


def test_norm_type_config(tmp_path):
    """A pixel model round-trips with its norm; GroupNorm is the same state dict; attention
    with per-pixel norm and unknown norms are refused."""
    with pytest.raises(ConfigError, match="mid_block_attention"):
        VAEAutoencoder(mid_block_attention=True)
    with pytest.raises(ConfigError, match="norm_type"):
        VAEAutoencoder(norm_type="batch")
    pixel = make("vae")
    pixel.save_pretrained(tmp_path / "pixel")
    loaded = load_autoencoder(tmp_path / "pixel", expect="vae")
    assert loaded.config.norm_type == "pixel" and loaded.fingerprint() == pixel.fingerprint()
    assert sum(isinstance(m, PixelGroupNorm) for m in loaded.modules()) > 0
    torch.manual_seed(0)
    group = VAEAutoencoder(
        variables=["t2m"], input_stats={"t2m": STATS["t2m"]}, norm_type="group", **SMALL["vae"]
    ).eval()
    assert set(group.state_dict()) == set(pixel.state_dict())  # same keys: swap is in place
    group.save_pretrained(tmp_path / "group")
    reloaded = load_autoencoder(tmp_path / "group", expect="vae")
    assert reloaded.config.norm_type == "group" and reloaded.fingerprint() == group.fingerprint()
    assert any(isinstance(m, torch.nn.GroupNorm) for m in reloaded.modules())


def test_every_autoencoder_forward_returns_an_output():
    from kmscale.autoencoders.base import AutoencoderOutput

    for name in ("identity", "vae"):
        model = make(name)
        x = torch.randn(2, model.in_channels, 16, 16)
        out = model(x)
        assert isinstance(out, AutoencoderOutput) and out.sample.shape == x.shape
        assert (out.latent_dist is not None) == (name == "vae")


def test_tiling_errors_and_padding():
    model = make("vae")
    with pytest.raises(GridError, match="at least one tile"):
        tiled_encode(model, field((1, 1, 30, 30))[0], tile=64)
    with pytest.raises(GridError, match="divisible by the downsample factor"):
        tiled_encode(model, field((1, 1, 64, 64))[0], tile=33)
    with pytest.raises(SchemaError):
        tiled_encode(model, torch.zeros(2, 16, 16))
    # Sizes not divisible by f are padded on encode and cropped on decode.
    x = field((1, 1, 31, 45))[0]
    z = tiled_encode(model, x)
    assert z.shape[-2:] == (16, 23)
    assert tiled_decode(model, z, shape=(31, 45)).shape == (1, 31, 45)
    assert auto_tiling((1000, 1000), 8) == (None, (0, 0))
    assert auto_tiling((4384, 6880), 8) == ((1024, 1024), (320, 320))


def test_tiled_decode_restores_nan_mask():
    model = make("vae")
    x = field((1, 1, 32, 48))[0]
    x[:, 5:9, 10:20] = float("nan")
    valid = np.isfinite(x.numpy())
    y = tiled_decode(
        model,
        tiled_encode(model, x, tile=16, overlap=4),
        shape=(32, 48),
        tile=16,
        overlap=4,
        mask=valid,
    )
    assert torch.isnan(y[:, 5:9, 10:20]).all() and torch.isfinite(y[torch.from_numpy(valid)]).all()


# ---------------------------------------------------------------------------- quantization
def test_quantize_round_trip_and_rate(rng):
    z = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    steps = [0.05, 0.1, 0.2, 0.4]
    q = quantize(z, steps)
    assert q.dtype == np.int8 and int_dtype_for(np.array([300])) == np.int16
    err = np.abs(dequantize(q, steps) - z)
    assert np.all(err <= np.array(steps)[None, :, None, None] / 2 + 1e-6)
    rate = measure_rate(q)
    assert 0 < rate.zstd_bytes < z.nbytes and rate.entropy_bytes <= q.nbytes
    assert entropy_bits(np.zeros((1, 2, 4, 4), np.int8)) == 0
    with pytest.raises(SchemaError, match="finite"):
        quantize(np.array([[np.nan]]), 0.1)
    with pytest.raises(SchemaError, match="within int8"):
        quantize(np.array([[10.0]]), 0.01, dtype=np.int8)
