"""Scoring a small ensemble on held-out times during diffusion training.

For each held-out time: M residual members are sampled with per-member seeds, composed
with the regression mean (``residual.compose``), decoded to physical fields, and scored
against the decoded truth. Scores are computed on fields standardized with the
autoencoder's input statistics, so that variables in different units average into one
dimensionless number (``crps`` is the metric the Trainer minimizes for ``best/``).

- ``crps``: fair CRPS (kmscale.evaluation.probabilistic), mean over points, variables
- ``rmse_mean``: RMSE of the ensemble mean
- ``spread_skill``: sqrt((M+1)/M · mean ensemble variance) / RMSE of the mean
- ``power_ratio_1/2``: predicted / true power at the two smallest zonal scales of
  the windowed (detrended + Hann) zonal spectrum

The members are decoded on the CPU, so the scores are those of ``kmscale score``: the
numpy kernels and metric classes of :mod:`kmscale.evaluation` (one definition of each).
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from kmscale.data import transforms
from kmscale.diffusion import residual
from kmscale.diffusion.ensemble import default_seeds, sample_ensemble
from kmscale.diffusion.settings import HEUN


def standardized(x: torch.Tensor, autoencoder) -> torch.Tensor:
    """Physical (..., C, H, W) -> standardized with the autoencoder's input statistics."""
    stats = autoencoder.config.input_stats or {}
    out = torch.empty_like(x)
    for c, name in enumerate(autoencoder.variables):
        out[..., c, :, :] = (
            transforms.standardize(x[..., c, :, :], stats[name])
            if name in stats
            else x[..., c, :, :]
        )
    return out


def smallest_scale_power_ratio(ens: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(2,) ratio of member-mean power to true power at the two highest wavenumbers.

    Args:
        ens: (M, N, ..., W) members; truth: (N, ..., W).
    """
    from kmscale.evaluation.spectra import zonal_power_spectrum

    p_ens = zonal_power_spectrum(ens.detach().cpu().double().numpy(), detrend=True, window="hann")
    p_true = zonal_power_spectrum(
        truth.detach().cpu().double().numpy(), detrend=True, window="hann"
    )
    pe = p_ens.reshape(-1, p_ens.shape[-1]).mean(0)
    pt = p_true.reshape(-1, p_true.shape[-1]).mean(0)
    return torch.from_numpy(pe[-2:] / pt[-2:]).float()


def physical_scores(ens: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """crps, rmse_mean, power_ratio_1/2 and (M > 1) spread_skill of (M, N, C, H, W) members
    against (N, C, H, W) truth, pooled over every point (NaN points left out of the CRPS)."""
    from kmscale.evaluation.probabilistic import SpreadSkillRatio, crps_ensemble

    e, t = ens.detach().cpu().double().numpy(), truth.detach().cpu().double().numpy()
    ratio = smallest_scale_power_ratio(ens, truth)
    scores = {
        "crps": float(np.nanmean(crps_ensemble(e, t, fair=True))),
        "rmse_mean": float(np.sqrt(np.mean((e.mean(0) - t) ** 2))),
        "power_ratio_1": float(ratio[0]),
        "power_ratio_2": float(ratio[1]),
    }
    if e.shape[0] > 1:
        dims = (
            *(f"dim_{i}" for i in range(t.ndim - 2)),
            "y",
            "x",
        )  # points pooled: names are labels
        fc = xr.DataArray(e, dims=("member", *dims))
        ssr = SpreadSkillRatio().compute(
            fc, xr.DataArray(t, dims=dims), reduce_dims=dims, area_weighted=False
        )
        scores["spread_skill"] = float(ssr)
    return scores


@torch.no_grad()
def latent_members(
    denoiser,
    item: dict,
    scale: torch.Tensor,
    seeds: list[int],
    steps: int,
    solver: str,
    center_residuals: bool = False,
) -> torch.Tensor:
    """Composed latent members (M, C_z, h, w) for one example (needs "z_mean", "cond", "emb");
    ``scale`` is the residual scale (C_z, 1, 1) on the denoiser's device."""
    device = scale.device
    z_mean = item["z_mean"].to(device)
    cond = torch.cat([z_mean, item["cond"].to(device)], dim=0)
    r = sample_ensemble(
        denoiser,
        cond,
        item["emb"].to(device),
        len(seeds),
        seeds,
        {"num_steps": steps, "solver": solver},
        batch_size=len(seeds),
        latent_shape=tuple(z_mean.shape),
        device=device,
    )
    if center_residuals:
        r = residual.center_members(r)
    return residual.compose(z_mean.expand_as(r), r, scale)


@torch.no_grad()
def sample_physical_ensemble(
    denoiser,
    dataset,
    autoencoder,
    scale: list[float],
    members: int,
    steps: int,
    solver: str,
    seed: int,
    progress: bool = False,
    center_residuals: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Members for every example of ``dataset``.

    Returns the members (M, N, C, H, W), physical, and the truth (N, C, H, W)."""
    device = next(denoiser.parameters()).device
    s = torch.tensor(scale, dtype=torch.float32, device=device).reshape(-1, 1, 1)
    seeds = default_seeds(members, seed)
    out, truth = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        z = latent_members(denoiser, item, s, seeds, steps, solver, center_residuals)
        out.append(autoencoder.decode(z.cpu().float()))
        if "x" in item:  # the truth itself
            truth.append(item["x"][None].float())
        elif "z" in item:  # only its reconstruction is known
            truth.append(autoencoder.decode(item["z"][None].float()))
    ens = torch.stack(out, dim=1)
    return ens, (torch.cat(truth) if truth else None)


def ensemble_scores(
    denoiser,
    dataset,
    autoencoder,
    scale: list[float],
    members: int = 4,
    steps: int = 12,
    solver: str = HEUN,
    seed: int = 0,
    center_residuals: bool = False,
) -> dict[str, float]:
    """Scores of a small ensemble on ``dataset`` (needs "z", "z_mean", "cond", "emb")."""
    ens, truth = sample_physical_ensemble(
        denoiser,
        dataset,
        autoencoder,
        scale,
        members,
        steps,
        solver,
        seed,
        center_residuals=center_residuals,
    )
    return physical_scores(
        standardized(ens, autoencoder).double(), standardized(truth, autoencoder).double()
    )
