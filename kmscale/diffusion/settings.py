"""The diffusion stage's settings, each default defined here once.

Standard library only: ``kmscale sample --help`` reads its defaults from these
dataclasses without importing torch. Everything else (the EDM wrapper and loss, the
samplers, the recipes, the bundle, the command line) reads its defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass

HEUN = "heun"  # 2nd-order solver of EDM Algorithm 2
EULER = "euler"  # 1st-order solver (the few-step option)
SOLVERS = (HEUN, EULER)


@dataclass
class EDMLossSettings:
    """σ_data and the training noise distribution (Karras et al. 2022, Table 1)."""

    P_mean: float = -1.2  # mean of ln σ in training
    P_std: float = 1.2  # std of ln σ in training
    # Expected std of the training data. The paper's 0.5 is for images in [-1, 1]; kmscale
    # diffuses residuals divided by their per-channel std (``residual_scale``), so 1.
    sigma_data: float = 1.0


@dataclass
class NoiseSchedule:
    """The sampler's noise levels (Eq. 5; Table 1's values for EDM sampling)."""

    sigma_min: float = 0.002  # lowest noise level t_{N-1}
    sigma_max: float = 80.0  # highest noise level t_0; the start is noise * sigma_max
    rho: float = 7.0  # curvature; larger spends more steps at low σ


@dataclass
class SamplerSettings:
    """How ``kmscale sample`` draws the ensemble (all recorded in the store)."""

    members: int = 16
    steps: int = 18  # N noise levels (Heun: 2N - 1 network evaluations per member)
    solver: str = HEUN  # one of SOLVERS
    S_churn: float = 0.0  # stochasticity of the sampler (0: deterministic ODE)
    sigma_min: float = NoiseSchedule.sigma_min
    sigma_max: float = NoiseSchedule.sigma_max
    rho: float = NoiseSchedule.rho
    seed: int = 0  # member m uses member seed ``seed + m``
    member_batch: int = 8  # members denoised together (memory); does not change results
    patch: list[int] | None = None  # latent tile (th, tw) of patch-wise sampling; None: whole field
    overlap: list[int] | None = None  # latent tile overlap (oh, ow); default: a quarter of the tile
    time_chunk: int = 1  # valid times per store chunk (the unit of resume)
    # pixel tile (th, tw) of the decode (multiples of the downsample factor); None: the
    # autoencoders' auto_tiling (whole field up to 1024 px a side, else 1024 px tiles)
    decode_tile: list[int] | None = None
    decode_overlap: list[int] | None = None  # pixel overlap of decode tiles; None: auto_tiling's
    # remove the members' mean residual in latent space (variance kept): the ensemble is
    # re-centred on the regression mean; see kmscale.diffusion.residual.center_members
    center_residuals: bool = False

    def sampler_kwargs(self) -> dict:
        """Keyword arguments of :func:`kmscale.diffusion.samplers.edm_sampler`."""
        return {
            "num_steps": self.steps,
            "solver": self.solver,
            "S_churn": self.S_churn,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "rho": self.rho,
        }
