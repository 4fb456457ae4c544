"""EDM preconditioning, loss, residual definition and the ConditionalUNet backbone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kmscale.diffusion import residual
from kmscale.diffusion.edm import EDMLoss, EDMPrecond
from kmscale.diffusion.networks import ConditionalUNet, CrossAttentionUNet
from kmscale.errors import ConfigError, GridError


class Spy(torch.nn.Module):
    """Backbone that records its inputs and returns a fixed function of them."""

    def __init__(self, out_channels: int, value: float = 1.0):
        super().__init__()
        self.out_channels = out_channels
        self.value = value
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x_in, c_noise, emb=None):
        self.calls.append((x_in.clone(), c_noise.clone(), emb))
        B, _, H, W = x_in.shape
        return torch.full((B, self.out_channels, H, W), self.value)


def tiny_unet(in_channels=3, out_channels=2, **kw) -> ConditionalUNet:
    torch.manual_seed(0)
    kw.setdefault("block_out_channels", (8, 16))
    kw.setdefault("norm_num_groups", 4)
    kw.setdefault("layers_per_block", 1)
    return ConditionalUNet(in_channels, out_channels, **kw).eval()


# ---------------------------------------------------------------- residual


def test_residual_round_trip_numpy_and_torch(rng):
    z = rng.normal(size=(2, 3, 4, 5))
    zm = rng.normal(size=z.shape)
    scale = np.array([0.5, 1.0, 2.0])[:, None, None]
    r = residual.make(z, zm, scale)
    np.testing.assert_allclose(r, (z - zm) / scale)
    np.testing.assert_allclose(residual.compose(zm, r, scale), z)
    zt, zmt = torch.as_tensor(z), torch.as_tensor(zm)
    torch.testing.assert_close(residual.compose(zmt, residual.make(zt, zmt, 0.3), 0.3), zt)


def test_residual_compose_broadcasts_over_members_and_rejects_bad_input():
    zm = torch.randn(2, 3, 4, 5)
    r = torch.randn(7, 2, 3, 4, 5)  # (M, B, C, H, W)
    assert residual.compose(zm, r).shape == r.shape
    with pytest.raises(GridError, match="expected"):
        residual.make(torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4, 6))
    with pytest.raises(ValueError, match="scale"):
        residual.make(zm, zm, 0.0)


def test_centred_members_have_zero_mean_and_keep_the_variance():
    torch.manual_seed(0)
    r = torch.randn(16, 4000) + 0.5  # 16 members with a shared offset
    c = residual.center_members(r)
    assert c.mean(0).abs().max() < 1e-5
    # iid members: E[var_m(c)] with ddof=0 equals the variance of one member
    assert abs(float(c.var(0, unbiased=False).mean()) - 1.0) < 0.03
    np.testing.assert_allclose(residual.center_members(r.T, dim=1).T, c, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2 members"):
        residual.center_members(r[:1])


# ---------------------------------------------------------------- preconditioning


def test_sigma_to_zero_returns_the_input():
    net = EDMPrecond(Spy(2, value=5.0), sigma_data=0.5)
    x = torch.randn(3, 2, 4, 6)
    torch.testing.assert_close(net(x, 1e-9), x, atol=1e-7, rtol=0)
    # And with a real (untrained) network: c_out -> 0, c_skip -> 1.
    net = EDMPrecond(tiny_unet(2, 2))
    with torch.no_grad():
        torch.testing.assert_close(net(x, torch.full((3,), 1e-7)), x, atol=1e-5, rtol=0)


def test_large_sigma_gives_sigma_data_times_F():
    # c_skip -> 0, c_out -> sigma_data: D(x; sigma) -> sigma_data * F.
    net = EDMPrecond(Spy(2, value=3.0), sigma_data=0.5)
    x = torch.randn(2, 2, 4, 4)
    torch.testing.assert_close(net(x, 1e6), torch.full_like(x, 1.5), atol=1e-4, rtol=0)


def test_coefficients_match_table_1():
    sd = 0.7
    net = EDMPrecond(Spy(1), sigma_data=sd)
    sigma = torch.tensor([0.01, 0.5, 3.0, 80.0])
    c_skip, c_out, c_in, c_noise = net.coefficients(sigma)
    torch.testing.assert_close(c_skip, sd**2 / (sigma**2 + sd**2))
    torch.testing.assert_close(c_out, sigma * sd / torch.sqrt(sigma**2 + sd**2))
    torch.testing.assert_close(c_in, 1 / torch.sqrt(sigma**2 + sd**2))
    torch.testing.assert_close(c_noise, torch.log(sigma) / 4)


def test_conditioning_concatenated_after_c_in_and_never_scaled():
    spy = Spy(2)
    net = EDMPrecond(spy, sigma_data=0.5)
    x = torch.randn(2, 2, 4, 5)
    cond = torch.randn(2, 3, 4, 5)
    emb = torch.randn(2, 4)
    sigma = torch.tensor([0.1, 10.0])
    net(x, sigma, cond, emb)
    x_in, c_noise, emb_seen = spy.calls[-1]
    c_in = (1 / torch.sqrt(sigma**2 + 0.25)).view(-1, 1, 1, 1)
    torch.testing.assert_close(x_in[:, :2], c_in * x)
    assert torch.equal(x_in[:, 2:], cond)  # bit-identical: no scaling at all
    torch.testing.assert_close(c_noise, torch.log(sigma) / 4)
    assert emb_seen is emb


def test_precond_rejects_mismatched_cond():
    net = EDMPrecond(Spy(2))
    with pytest.raises(GridError, match="expected cond"):
        net(torch.zeros(2, 2, 4, 5), 1.0, torch.zeros(2, 3, 4, 6))
    with pytest.raises(GridError, match="sigma"):
        net(torch.zeros(2, 2, 4, 5), torch.ones(3))


# ---------------------------------------------------------------- loss


def test_loss_is_unreduced_and_weighted_by_lambda():
    class ZeroDenoiser(torch.nn.Module):
        def forward(self, x, sigma, cond=None, emb=None):
            self.sigma = sigma
            return torch.zeros_like(x)

    loss_fn = EDMLoss(P_mean=-1.2, P_std=1.2, sigma_data=0.5)
    net = ZeroDenoiser()
    y = torch.randn(4, 2, 3, 5)
    loss = loss_fn(net, y, generator=torch.Generator().manual_seed(1))
    assert loss.shape == y.shape
    sigma = net.sigma
    torch.testing.assert_close(loss, (sigma**2 + 0.25) / (sigma * 0.5) ** 2 * y**2)


def test_loss_weight_makes_F_target_unit_weight():
    # lambda(sigma) * c_out(sigma)^2 == 1: the loss on F is an unweighted MSE (Sec. 5).
    loss_fn = EDMLoss(sigma_data=0.5)
    net = EDMPrecond(Spy(1), sigma_data=0.5)
    sigma = torch.logspace(-3, 2, 20)
    _, c_out, _, _ = net.coefficients(sigma)
    torch.testing.assert_close(loss_fn.weight(sigma) * c_out**2, torch.ones_like(sigma))


def test_loss_sigma_is_log_normal():
    loss_fn = EDMLoss(P_mean=-1.2, P_std=1.2)
    ln_sigma = loss_fn.sample_sigma(
        20000, torch.device("cpu"), torch.Generator().manual_seed(0)
    ).log()
    assert abs(ln_sigma.mean().item() + 1.2) < 0.03
    assert abs(ln_sigma.std().item() - 1.2) < 0.03


def test_loss_backpropagates_through_unet_with_cond_and_emb():
    unet = tiny_unet(2 + 3, 2, embedding_dim=4).train()
    net = EDMPrecond(unet)
    loss = EDMLoss()(
        net, torch.randn(2, 2, 8, 12), torch.randn(2, 3, 8, 12), torch.randn(2, 4)
    ).mean()
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None for p in unet.emb_proj.parameters())


# ---------------------------------------------------------------- network


@pytest.mark.parametrize("shape", [(8, 12), (33, 49), (1, 1), (5, 3)])
def test_unet_any_grid_size(shape):
    net = tiny_unet(3, 2, block_out_channels=(8, 8, 16), attention_levels=(False, True, True))
    with torch.no_grad():
        out = net(torch.randn(2, 3, *shape), torch.randn(2))
    assert out.shape == (2, 2, *shape)
    assert torch.isfinite(out).all()


def test_unet_padding_does_not_change_an_exact_multiple():
    net = tiny_unet(3, 2)
    x = torch.randn(1, 3, 8, 12)
    with torch.no_grad():
        a = net(x, 0.0)
        b = net.unet(x, torch.zeros(1)).sample
    torch.testing.assert_close(a, b)


def test_unet_embedding_changes_output_and_is_checked():
    net = tiny_unet(3, 2, embedding_dim=5)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        a = net(x, 0.1, torch.zeros(2, 5))
        b = net(x, 0.1, torch.ones(2, 5))
    assert not torch.allclose(a, b)
    with pytest.raises(GridError, match="emb shaped"):
        net(x, 0.1)
    with pytest.raises(GridError, match="emb=None"):
        tiny_unet(3, 2)(x, 0.1, torch.zeros(2, 5))
    with pytest.raises(GridError, match="input"):
        net(torch.zeros(2, 4, 8, 8), 0.1, torch.zeros(2, 5))


def test_unet_bad_config_is_an_error():
    with pytest.raises(ConfigError, match="norm_num_groups"):
        ConditionalUNet(3, 2, block_out_channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ConfigError, match="attention_levels"):
        ConditionalUNet(
            3, 2, block_out_channels=(8, 16), norm_num_groups=4, attention_levels=(True,)
        )


def test_unet_save_load_round_trip(tmp_path):
    net = tiny_unet(5, 2, embedding_dim=3, block_out_channels=(8, 16, 16), pad_mode="reflect")
    net.save_pretrained(tmp_path)
    loaded = ConditionalUNet.from_pretrained(tmp_path)

    def norm(cfg):
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in cfg.items()
            if not k.startswith("_")
        }

    assert norm(loaded.config) == norm(net.config)
    x, c, e = torch.randn(2, 5, 9, 13), torch.randn(2), torch.randn(2, 3)
    with torch.no_grad():
        assert torch.equal(net(x, c, e), loaded(x, c, e))
    pre = EDMPrecond(loaded, sigma_data=0.5)
    with torch.no_grad():
        assert pre(x[:, :2], torch.ones(2), x[:, 2:], e).shape == (2, 2, 9, 13)


# ---------------------------------------------------------------- cross-attention variant


def tiny_xattn(**kw) -> CrossAttentionUNet:
    torch.manual_seed(0)
    kw = {
        "block_out_channels": (8, 16),
        "norm_num_groups": 4,
        "attention_heads": 2,
        "cross_attention_dim": 16,
        "layers_per_block": 1,
        **kw,
    }
    return CrossAttentionUNet(2 + 5, 2, cond_channels=5, **kw).eval()


@pytest.mark.parametrize("shape", [(8, 12), (33, 49), (1, 1)])
def test_cross_attention_unet_any_grid_size(shape):
    net = tiny_xattn(embedding_dim=3)
    with torch.no_grad():
        out = net(torch.randn(2, 7, *shape), torch.randn(2), torch.randn(2, 3))
    assert out.shape == (2, 2, *shape) and torch.isfinite(out).all()


def test_cross_attention_reads_cond_without_concatenation(tmp_path):
    net = tiny_xattn(concat_cond=False)
    x = torch.randn(1, 7, 16, 16)
    x2 = x.clone()
    x2[:, 2:] += 1.0  # change only the conditioning channels
    with torch.no_grad():
        assert (net(x, 0.3) - net(x2, 0.3)).abs().max() > 1e-4
        # Drop-in for EDMPrecond, and a save/load round trip.
        assert EDMPrecond(net)(x[:, :2], 1.0, x[:, 2:]).shape == (1, 2, 16, 16)
        net.save_pretrained(tmp_path)
        # Same weights; attention kernels may round the last bit differently.
        torch.testing.assert_close(
            CrossAttentionUNet.from_pretrained(tmp_path)(x, 0.3), net(x, 0.3), atol=1e-6, rtol=1e-6
        )
    with pytest.raises(GridError, match="emb"):
        net(x, 0.3, torch.zeros(1, 3))
    with pytest.raises(ConfigError, match="cond_channels"):
        CrossAttentionUNet(3, 2, cond_channels=3, block_out_channels=(8, 16), norm_num_groups=4)
