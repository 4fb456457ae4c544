"""EDM sampling (Karras et al. 2022, Algorithm 2), after NVlabs/edm ``generate.py:edm_sampler``.

One function, :func:`edm_sampler`, integrates the probability-flow ODE (optionally
with the stochastic "churn" of Algorithm 2) from σ_max down to 0 with Heun's 2nd-order
method or Euler's 1st-order method. It knows nothing of patches, files or ensembles:
it calls a denoiser ``D(x, sigma, cond, emb)`` (an :class:`~kmscale.diffusion.edm.EDMPrecond`
or a :class:`~kmscale.diffusion.patching.PatchedDenoiser`), whose preconditioning is
its own business.

Reproducible ensembles: :func:`member_noise` draws member m's starting noise from its own
``torch.Generator(seed_m)``, and the same per-member generators feed the churn noise, so
a member is the same whatever the batch it is sampled in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from kmscale.diffusion.edm import EDMPrecond
from kmscale.diffusion.settings import (
    EULER,
    HEUN,
    SOLVERS,
    EDMLossSettings,
    NoiseSchedule,
    SamplerSettings,
)
from kmscale.errors import ConfigError, GridError, describe

Denoiser = Callable[..., torch.Tensor]  # D(x (B,C,H,W), sigma (B,), cond, emb) -> (B,C,H,W)


def time_steps(
    num_steps: int,
    sigma_min: float = NoiseSchedule.sigma_min,
    sigma_max: float = NoiseSchedule.sigma_max,
    rho: float = NoiseSchedule.rho,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Noise levels t_0 = σ_max > ... > t_{N-1} = σ_min, then t_N = 0 (Eq. 5), float64 (N + 1,)."""
    if int(num_steps) < 1:
        raise ConfigError(describe("num_steps >= 1", num_steps, where="time_steps"))
    if not 0 < sigma_min <= sigma_max or not math.isfinite(sigma_max):
        raise ConfigError(
            describe("0 < sigma_min <= sigma_max < inf", (sigma_min, sigma_max), where="time_steps")
        )
    if not rho > 0:
        raise ConfigError(describe("rho > 0", rho, where="time_steps"))
    if num_steps == 1:
        t = torch.tensor([sigma_max], dtype=torch.float64, device=device)
    else:
        i = torch.arange(num_steps, dtype=torch.float64, device=device)
        t = (
            sigma_max ** (1 / rho)
            + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
        ) ** rho  # Eq. 5
    return torch.cat([t, torch.zeros_like(t[:1])])  # t_N = 0


def member_generators(
    seeds: Sequence[int], device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One ``torch.Generator`` per ensemble member, seeded with that member's seed."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def member_noise(
    seeds: Sequence[int],
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    generators: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Standard-normal starting noise (M, *shape), member m drawn from its own generator.

    Noise is drawn on the CPU (whatever ``device``) so that a seed gives the same member on
    every machine. Pass ``generators`` (from :func:`member_generators`) to keep drawing
    from the same streams afterwards (the sampler's churn noise).
    """
    if generators is None:
        generators = member_generators(seeds)
    elif len(generators) != len(seeds):
        raise ConfigError(
            describe(
                f"{len(seeds)} generators (one per seed)", len(generators), where="member_noise"
            )
        )
    noise = [
        torch.randn(tuple(shape), generator=g, device=g.device, dtype=torch.float32)
        for g in generators
    ]
    if not noise:
        raise ConfigError(describe("at least one seed", 0, where="member_noise"))
    return torch.stack(noise).to(device=device, dtype=dtype)


def _randn_like(x: torch.Tensor, generators: Sequence[torch.Generator] | None) -> torch.Tensor:
    """Standard normal like x (B, ...), row b from generators[b] when given."""
    if generators is None:
        return torch.randn_like(x)
    return torch.stack(
        [
            torch.randn(tuple(x.shape[1:]), generator=g, device=g.device, dtype=torch.float32)
            for g in generators
        ]
    ).to(device=x.device, dtype=x.dtype)


@torch.no_grad()
def edm_sampler(
    net: Denoiser,
    noise: torch.Tensor,
    cond: torch.Tensor | None = None,
    emb: torch.Tensor | None = None,
    num_steps: int = SamplerSettings.steps,  # N noise levels (Heun: 2N - 1 network evaluations)
    sigma_min: float = NoiseSchedule.sigma_min,  # lowest noise level of the schedule (Eq. 5)
    sigma_max: float = NoiseSchedule.sigma_max,  # highest noise level; the start: noise * sigma_max
    rho: float = NoiseSchedule.rho,  # schedule curvature (Eq. 5); larger: more steps at low sigma
    S_churn: float = 0.0,  # total stochasticity; 0 gives the deterministic ODE sampler
    S_min: float = 0.0,  # churn only for sigma in [S_min, S_max]
    S_max: float = math.inf,
    S_noise: float = 1.0,  # noise inflation of the churn (slightly > 1 counters over-denoising)
    solver: str = HEUN,  # HEUN (2nd order, Algorithm 2) or EULER (1st order)
    generators: Sequence[torch.Generator] | None = None,  # one per batch element, for churn noise
    progress: bool = False,  # tqdm bar over the steps
    dtype: torch.dtype = torch.float64,  # dtype of the ODE state (EDM integrates in float64)
) -> torch.Tensor:
    """Draw samples with EDM Algorithm 2.

    Args:
        net: denoiser ``D(x, sigma, cond, emb)``; x (B, C, H, W), sigma (B,) -> (B, C, H, W).
            If it has ``sigma_min``/``sigma_max`` attributes (EDMPrecond), the schedule is
            clamped to them.
        noise: standard-normal (B, C, H, W) (e.g. from :func:`member_noise`); scaled by
            sigma_max here.
        cond: conditioning channels (B, C_cond, H, W) or None, passed to ``net`` unchanged.
        emb: embedding vectors (B, E) or None, passed to ``net`` unchanged.
        generators: list of B generators for the churn noise (member-reproducible); None
            uses torch's global generator.

    Returns:
        x_0: samples (B, C, H, W) in ``noise``'s dtype.
    """
    if solver not in SOLVERS:
        raise ConfigError(describe(f"solver in {SOLVERS}", repr(solver), where="edm_sampler"))
    if generators is not None and len(generators) != noise.shape[0]:
        raise ConfigError(
            describe(
                f"{noise.shape[0]} generators (one per batch element)",
                len(generators),
                where="edm_sampler",
            )
        )
    for name, t in (("cond", cond), ("emb", emb)):
        if t is not None and t.shape[0] != noise.shape[0]:
            raise GridError(
                describe(
                    f"{name} with batch size {noise.shape[0]}", tuple(t.shape), where="edm_sampler"
                )
            )
    # Respect the range the network supports (as generate.py does with net.sigma_min/max).
    sigma_min = max(sigma_min, getattr(net, "sigma_min", 0.0))
    sigma_max = min(sigma_max, getattr(net, "sigma_max", math.inf))
    t_steps = time_steps(num_steps, sigma_min, sigma_max, rho, device=noise.device).to(dtype)
    B = noise.shape[0]

    def D(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(x.to(noise.dtype), t.to(torch.float32).expand(B), cond, emb).to(dtype)

    x_next = noise.to(dtype) * t_steps[0]  # x_0 ~ N(0, t_0^2 I)
    steps = list(zip(t_steps[:-1], t_steps[1:], strict=True))
    for i, (t_cur, t_next) in enumerate(
        tqdm(steps, desc="denoising", disable=not progress, leave=False)
    ):
        x_cur = x_next
        # Increase noise temporarily (Algorithm 2, lines 4-6).
        gamma = (
            min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= float(t_cur) <= S_max else 0.0
        )
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:
            x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * _randn_like(x_cur, generators)
        else:
            x_hat = x_cur
        # Euler step (lines 7-8).
        denoised = D(x_hat, t_hat)
        d_cur = (x_hat - denoised) / t_hat  # Eq. 3: dx/dt = (x - D(x; t)) / t
        x_next = x_hat + (t_next - t_hat) * d_cur
        # 2nd-order correction (lines 9-11), skipped on the last step where t_next = 0.
        if solver == HEUN and i < len(steps) - 1:
            denoised = D(x_next, t_next)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next.to(noise.dtype)


@torch.no_grad()
def diffusers_euler_sampler(
    net: Denoiser,
    noise: torch.Tensor,
    cond: torch.Tensor | None = None,
    emb: torch.Tensor | None = None,
    num_steps: int = SamplerSettings.steps,
    sigma_min: float = NoiseSchedule.sigma_min,
    sigma_max: float = NoiseSchedule.sigma_max,
    rho: float = NoiseSchedule.rho,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    S_noise: float = 1.0,
    solver: str = EULER,
    generators: Sequence[torch.Generator] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """:func:`edm_sampler` (``solver="euler"``) run by diffusers' ``EDMEulerScheduler``.

    Same signature and result as ``edm_sampler(..., solver="euler")`` up to float32
    rounding (the scheduler keeps its state in float32). Only the deterministic sampler:
    the scheduler adds churn noise AFTER the network was evaluated on the un-churned
    sample, which is not EDM Algorithm 2, so ``S_churn > 0`` is refused.

    Preconditioning happens once: the scheduler owns c_in (``scale_model_input``),
    c_noise (its ``timesteps``) and c_skip/c_out (``step``). With an
    :class:`~kmscale.diffusion.edm.EDMPrecond` the adapter therefore calls its plain
    ``backbone`` (never ``net`` itself); any other denoiser D (analytic, patched) is
    turned into the backbone output the scheduler expects, F = (D - c_skip x) / c_out.
    Also unlike the scheduler's ``init_noise_sigma`` (sqrt(σ_max² + 1)), the start is
    σ_max · noise, as in EDM.
    """
    from diffusers import EDMEulerScheduler  # imports much of diffusers: only when used

    if solver != EULER:
        raise ConfigError(
            describe(
                "solver='euler' (EDMEulerScheduler is first order)",
                repr(solver),
                where="diffusers_euler_sampler",
            )
        )
    if S_churn > 0:
        raise ConfigError(
            describe(
                "S_churn=0 (diffusers churns after evaluating the network, not Algorithm 2)",
                S_churn,
                where="diffusers_euler_sampler",
            )
        )
    sigma_min = max(sigma_min, getattr(net, "sigma_min", 0.0))
    sigma_max = min(sigma_max, getattr(net, "sigma_max", math.inf))
    precond = net if isinstance(net, EDMPrecond) else None
    sigma_data = precond.sigma_data if precond is not None else EDMLossSettings.sigma_data
    sched = EDMEulerScheduler(
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        sigma_data=sigma_data,
        rho=rho,
        sigma_schedule="karras",
        final_sigmas_type="zero",
    )
    sched.set_timesteps(num_steps, device=noise.device)
    B = noise.shape[0]
    x = noise.to(torch.float32) * sched.sigmas[0]
    for i, t in enumerate(
        tqdm(sched.timesteps, desc="denoising", disable=not progress, leave=False)
    ):
        sigma = sched.sigmas[i].to(noise.device)
        x_in = sched.scale_model_input(x, t)  # c_in x
        if precond is not None:
            if cond is not None:
                x_in = torch.cat([x_in, cond.to(x_in.dtype)], dim=1)
            F_x = precond.backbone(x_in, t.expand(B), emb).to(torch.float32)
        else:
            sd2 = sigma_data**2
            c_skip, c_out = sd2 / (sigma**2 + sd2), sigma * sigma_data / (sigma**2 + sd2).sqrt()
            F_x = (
                net(x.to(noise.dtype), sigma.expand(B), cond, emb).to(torch.float32) - c_skip * x
            ) / c_out
        x = sched.step(F_x, t, x, return_dict=False)[0]
    return x.to(noise.dtype)
