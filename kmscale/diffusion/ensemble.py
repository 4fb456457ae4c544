"""Ensembles of residual samples: members batched, each with its own seed.

Member m starts from noise drawn by ``torch.Generator(seeds[m])`` and its churn noise
(if any) continues that same generator, so member m is the same sample whether it is
drawn alone, in a batch of 4, or in a batch of 64 (up to floating-point rounding of
the batched network). The seeds are what the output store records as provenance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from kmscale.diffusion.samplers import edm_sampler, member_generators, member_noise
from kmscale.errors import ConfigError, GridError, describe


def default_seeds(members: int, base_seed: int = 0) -> list[int]:
    """Seeds ``base_seed, base_seed + 1, ...`` for ``members`` members."""
    return [int(base_seed) + m for m in range(int(members))]


def sample_ensemble(
    denoiser: Callable[..., torch.Tensor],
    cond: torch.Tensor | None,
    emb: torch.Tensor | None,
    members: int,
    seeds: Sequence[int],
    sampler_kwargs: Mapping[str, Any] | None,
    batch_size: int,
    latent_shape: Sequence[int],
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Draw ``members`` residual samples for one conditioning.

    Args:
        denoiser: ``D(x, sigma, cond, emb)`` (EDMPrecond, or PatchedDenoiser for big fields).
        cond: conditioning of one case, (C_cond, H, W) or (1, C_cond, H, W), or None.
        emb: embedding of one case, (E,) or (1, E), or None.
        members: M, the ensemble size.
        seeds: M integer seeds, one per member.
        sampler_kwargs: keyword arguments of :func:`~kmscale.diffusion.samplers.edm_sampler`
            (num_steps, solver, S_churn, ...).
        batch_size: members sampled together (memory bound); does not change the result.
        latent_shape: (C, H, W) of one residual sample.
        device: where to sample; defaults to cond's device (CPU without cond).
        progress: tqdm bar over member batches.

    Returns:
        residual samples (M, C, H, W), float32.
    """
    members = int(members)
    seeds = [int(s) for s in seeds]
    if members < 1 or len(seeds) != members:
        raise ConfigError(
            describe(
                f"{members} seeds (one per member, members >= 1)",
                len(seeds),
                where="sample_ensemble",
            )
        )
    if len(set(seeds)) != len(seeds):
        raise ConfigError(describe("distinct member seeds", seeds, where="sample_ensemble"))
    if int(batch_size) < 1:
        raise ConfigError(describe("batch_size >= 1", batch_size, where="sample_ensemble"))
    latent_shape = tuple(int(n) for n in latent_shape)
    kwargs = dict(sampler_kwargs or {})
    for reserved in ("noise", "cond", "emb", "generators"):
        if reserved in kwargs:
            raise ConfigError(
                describe(
                    "sampler_kwargs without " + reserved + " (set here per member)",
                    sorted(kwargs),
                    where="sample_ensemble",
                )
            )
    cond = _one_case(cond, 3, "cond")
    emb = _one_case(emb, 1, "emb")
    if cond is not None and tuple(cond.shape[-2:]) != latent_shape[-2:]:
        raise GridError(
            describe(
                f"cond on the sample grid {latent_shape[-2:]}",
                tuple(cond.shape),
                where="sample_ensemble",
            )
        )
    if device is None:
        device = cond.device if cond is not None else torch.device("cpu")

    out = []
    starts = range(0, members, int(batch_size))
    for start in tqdm(starts, desc="members", disable=not progress, leave=False):
        batch_seeds = seeds[start : start + int(batch_size)]
        nb = len(batch_seeds)
        gens = member_generators(batch_seeds)
        noise = member_noise(batch_seeds, latent_shape, torch.float32, device, generators=gens)
        x = edm_sampler(
            denoiser,
            noise,
            cond=None if cond is None else cond.to(device).expand(nb, -1, -1, -1),
            emb=None if emb is None else emb.to(device).expand(nb, -1),
            generators=gens,
            **kwargs,
        )
        out.append(x.to(torch.float32))
    return torch.cat(out)


def _one_case(t: torch.Tensor | None, ndim: int, name: str) -> torch.Tensor | None:
    """Return ``t`` shaped (1, *case_shape); accept it with or without the leading 1."""
    if t is None:
        return None
    if t.ndim == ndim:
        return t.unsqueeze(0)
    if t.ndim == ndim + 1 and t.shape[0] == 1:
        return t
    raise GridError(
        describe(
            f"{name} of one case ({ndim} dims, or {ndim + 1} with a leading 1)",
            tuple(t.shape),
            where="sample_ensemble",
        )
    )
