"""EDM sampler (Algorithm 2), noise schedule, per-member seeds and ensembles."""

from __future__ import annotations

import math

import pytest
import torch

from kmscale.diffusion.edm import EDMPrecond
from kmscale.diffusion.ensemble import default_seeds, sample_ensemble
from kmscale.diffusion.networks import ConditionalUNet
from kmscale.diffusion.samplers import (
    diffusers_euler_sampler,
    edm_sampler,
    member_generators,
    member_noise,
    time_steps,
)
from kmscale.errors import ConfigError, GridError

MU, S = 0.3, 0.7  # data distribution N(MU, S^2)


def gaussian_denoiser(x, sigma, cond=None, emb=None):
    """Exact denoiser of N(MU, S^2) data: D(x; sigma) = (S^2 x + sigma^2 MU) / (S^2 + sigma^2)."""
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)


def mixture_denoiser(x, sigma, cond=None, emb=None):
    """Exact (nonlinear) denoiser of 0.5 N(-1, 0.3^2) + 0.5 N(1, 0.3^2)."""
    sigma = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
    s2, v = 0.09, 0.09 + sigma**2
    w = torch.softmax(torch.stack([-((x - m) ** 2) / (2 * v) for m in (-1.0, 1.0)]), 0)
    return sum(w[k] * (s2 * x + sigma**2 * m) / v for k, m in enumerate((-1.0, 1.0)))


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


# ---------------------------------------------------------------- schedule


def test_time_steps_eq5():
    t = time_steps(18, 0.002, 80.0, 7.0)
    assert t.shape == (19,) and t.dtype == torch.float64
    assert (
        t[0].item() == pytest.approx(80.0) and t[-2].item() == pytest.approx(0.002) and t[-1] == 0
    )
    assert torch.all(t[1:] < t[:-1])
    i = 5
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert t[i].item() == pytest.approx(expected)
    assert time_steps(1).tolist() == [80.0, 0.0]
    with pytest.raises(ConfigError, match="num_steps"):
        time_steps(0)
    with pytest.raises(ConfigError, match="sigma_min"):
        time_steps(5, 1.0, 0.5)


# ---------------------------------------------------------------- distribution


@pytest.mark.parametrize(
    ("solver", "num_steps", "S_churn"),
    [("heun", 64, 0.0), ("euler", 512, 0.0), ("heun", 100, 40.0)],
)
def test_sampler_reproduces_gaussian(solver, num_steps, S_churn):
    noise = torch.randn(20000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)  # churn noise from the global generator
    x = edm_sampler(gaussian_denoiser, noise, num_steps=num_steps, solver=solver, S_churn=S_churn)
    # standard errors: mean 0.005, std 0.0035
    assert abs(x.mean().item() - MU) < 0.02
    assert abs(x.std().item() / S - 1) < 0.02


def test_heun_is_more_accurate_than_euler():
    # The exact ODE maps x_T to MU + S (x_T - MU) / sqrt(S^2 + T^2); measure each solver's error.
    noise = torch.ones(1, 1, 1, 1)
    exact = MU + S * 80.0 / math.sqrt(S**2 + 80.0**2)
    err = {
        (s, n): abs(edm_sampler(gaussian_denoiser, noise, num_steps=n, solver=s).item() - exact)
        for s in ("heun", "euler")
        for n in (20, 40)
    }
    assert err["heun", 40] < 0.2 * err["euler", 40]
    assert err["heun", 40] < 0.3 * err["heun", 20]  # 2nd order: about 4x smaller
    assert err["euler", 40] > 0.4 * err["euler", 20]  # 1st order: about 2x smaller


def test_sampler_reproduces_bimodal_mixture():
    noise = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    x = edm_sampler(mixture_denoiser, noise, num_steps=32).flatten()
    assert abs((x > 0).float().mean().item() - 0.5) < 0.04
    assert abs(x.abs().mean().item() - 1.0) < 0.03  # modes at +-1
    assert abs(x.abs().std().item() - 0.3) < 0.03


# ---------------------------------------------------------------- reference numbers


REFERENCE = {  # mixture_denoiser, seeds [3, 1, 4], shape (1, 2, 2), 6 steps; computed once
    "heun": [1.713291883468628, 0.7680573463439941, 0.5933645367622375, -1.4839050769805908],
    "euler": [0.7608429789543152, 0.2476418912410736, 0.146831214427948, -0.6351897716522217],
    "churn": [-1.9248783588409424, 1.4097952842712402, 2.172974109649658, 1.8713576793670654],
}


@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_sampler_reference_numbers(case):
    seeds = [3, 1, 4]
    gens = member_generators(seeds)
    noise = member_noise(seeds, (1, 2, 2), generators=gens)
    kwargs = {"heun": {}, "euler": {"solver": "euler"}, "churn": {"S_churn": 10.0}}[case]
    x = edm_sampler(mixture_denoiser, noise, num_steps=6, generators=gens, **kwargs)
    torch.testing.assert_close(x.flatten()[:4], torch.tensor(REFERENCE[case]), atol=1e-5, rtol=1e-5)


def test_network_evaluations_per_solver():
    calls = []

    def counting(x, sigma, cond=None, emb=None):
        calls.append(sigma[0].item())
        return torch.zeros_like(x)

    edm_sampler(counting, torch.randn(2, 1, 3, 3), num_steps=7)
    assert len(calls) == 2 * 7 - 1  # Heun: no correction on the last step
    calls.clear()
    edm_sampler(counting, torch.randn(2, 1, 3, 3), num_steps=7, solver="euler")
    assert len(calls) == 7


def test_sampler_clamps_to_the_network_range_and_passes_cond():
    seen = {}

    class Net(torch.nn.Module):
        sigma_min, sigma_max = 0.01, 20.0

        def forward(self, x, sigma, cond=None, emb=None):
            seen.setdefault("sigmas", []).append(sigma[0].item())
            seen["cond"], seen["emb"] = cond, emb
            return x * 0

    cond, emb = torch.randn(2, 3, 4, 4), torch.randn(2, 5)
    edm_sampler(Net(), torch.randn(2, 1, 4, 4), cond, emb, num_steps=5)
    assert max(seen["sigmas"]) == pytest.approx(20.0) and min(seen["sigmas"]) == pytest.approx(0.01)
    assert seen["cond"] is cond and seen["emb"] is emb


def test_sampler_bad_arguments():
    noise = torch.randn(2, 1, 3, 3)
    with pytest.raises(ConfigError, match="solver"):
        edm_sampler(gaussian_denoiser, noise, solver="rk4")
    with pytest.raises(ConfigError, match="generators"):
        edm_sampler(gaussian_denoiser, noise, generators=member_generators([1]))
    with pytest.raises(GridError, match="cond"):
        edm_sampler(gaussian_denoiser, noise, cond=torch.zeros(3, 1, 3, 3))


# ---------------------------------------------------------------- per-member seeds


def test_member_noise_is_per_seed():
    a = member_noise([5, 6, 7], (2, 3, 4))
    b = member_noise([7], (2, 3, 4))
    assert a.shape == (3, 2, 3, 4)
    assert torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("batch_size", [1, 2, 7])
def test_members_identical_across_batch_sizes_analytic(batch_size):
    seeds = [11, 3, 5, 8, 2, 9, 4]
    kwargs = {"num_steps": 5, "S_churn": 20.0}
    ref = sample_ensemble(mixture_denoiser, None, None, 7, seeds, kwargs, 7, (1, 3, 4))
    out = sample_ensemble(mixture_denoiser, None, None, 7, seeds, kwargs, batch_size, (1, 3, 4))
    # Elementwise maths only; vectorized kernels may still round the last bit differently.
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)
    # Member 3 drawn on its own is the same member.
    alone = sample_ensemble(mixture_denoiser, None, None, 1, [seeds[3]], kwargs, 1, (1, 3, 4))
    torch.testing.assert_close(alone[0], ref[3], atol=1e-4, rtol=1e-5)


def test_members_identical_across_batch_sizes_with_a_network():
    net = tiny_precond(2 + 3, 2, embedding_dim=2)
    cond, emb = torch.randn(3, 8, 12), torch.randn(2)
    seeds = default_seeds(5, base_seed=100)
    kwargs = {"num_steps": 4, "S_churn": 5.0}
    a = sample_ensemble(net, cond, emb, 5, seeds, kwargs, 5, (2, 8, 12))
    b = sample_ensemble(net, cond[None], emb[None], 5, seeds, kwargs, 2, (2, 8, 12))
    assert a.shape == (5, 2, 8, 12)
    # Batched convolutions round differently; members agree to float32 rounding.
    torch.testing.assert_close(a, b, atol=1e-4 * a.abs().max().item(), rtol=0)
    assert (a[0] - a[1]).abs().mean() > 0.1  # different seeds, different members


def test_sample_ensemble_bad_arguments():
    with pytest.raises(ConfigError, match="seeds"):
        sample_ensemble(gaussian_denoiser, None, None, 3, [1, 2], {}, 2, (1, 2, 2))
    with pytest.raises(ConfigError, match="distinct"):
        sample_ensemble(gaussian_denoiser, None, None, 2, [1, 1], {}, 2, (1, 2, 2))
    with pytest.raises(ConfigError, match="generators"):
        sample_ensemble(gaussian_denoiser, None, None, 1, [1], {"generators": None}, 2, (1, 2, 2))
    with pytest.raises(GridError, match="cond"):
        sample_ensemble(gaussian_denoiser, torch.zeros(3, 4, 4), None, 1, [1], {}, 1, (1, 2, 2))


# ---------------------------------------------------------------- diffusers adapter


def test_diffusers_adapter_matches_euler_analytic():
    noise = member_noise(range(6), (1, 3, 3))
    a = edm_sampler(gaussian_denoiser, noise, num_steps=10, solver="euler")
    b = diffusers_euler_sampler(gaussian_denoiser, noise, num_steps=10)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_diffusers_adapter_matches_euler_with_a_network_without_double_preconditioning():
    net = tiny_precond(2 + 3, 2, embedding_dim=2)
    noise = member_noise(range(3), (2, 8, 12))
    cond, emb = torch.randn(3, 3, 8, 12), torch.randn(3, 2)
    a = edm_sampler(net, noise, cond, emb, num_steps=8, solver="euler")
    b = diffusers_euler_sampler(net, noise, cond, emb, num_steps=8)
    # edm_sampler preconditions once (EDMPrecond); equality means the adapter does too.
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_diffusers_adapter_refuses_what_it_cannot_do():
    noise = torch.randn(1, 1, 2, 2)
    with pytest.raises(ConfigError, match="S_churn"):
        diffusers_euler_sampler(gaussian_denoiser, noise, S_churn=1.0)
    with pytest.raises(ConfigError, match="euler"):
        diffusers_euler_sampler(gaussian_denoiser, noise, solver="heun")
