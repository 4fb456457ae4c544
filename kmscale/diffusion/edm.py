"""EDM preconditioning and loss (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Table 1 and Sec. 5), after NVlabs/edm
``training/networks.py:EDMPrecond`` and ``training/loss.py:EDMLoss``.

The denoiser is a wrapper around a plain backbone ``F``::

    D(x; σ) = c_skip(σ) x + c_out(σ) F( [c_in(σ) x, cond], c_noise(σ), emb )

Conditioning channels ``cond`` (regression mean, predictors, static fields) are
concatenated AFTER the c_in scaling: they are not noisy, so scaling them with the
noise level would only hide information from the network.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kmscale.diffusion.settings import EDMLossSettings
from kmscale.errors import GridError, describe


def _sigma_like(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar / (B,) / (B, 1, 1, 1) noise level to (B, 1, 1, 1) in float32."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    if sigma.shape[0] != x.shape[0]:
        raise GridError(
            describe(
                f"one sigma or {x.shape[0]} (one per batch element)",
                sigma.shape[0],
                where="EDMPrecond",
            )
        )
    return sigma


class EDMPrecond(nn.Module):
    """EDM preconditioned denoiser ``D(x; σ)`` around a backbone ``F``.

    The backbone is called as ``F(x_in (B, C_x + C_cond, H, W), c_noise (B,), emb (B, E) | None)``
    and returns (B, C_x, H, W); :class:`kmscale.diffusion.networks.ConditionalUNet` fits.
    Weights and config live in the backbone (``save_pretrained``); this wrapper only
    holds the three scalars below.
    """

    def __init__(
        self,
        backbone: nn.Module,  # F(x_in, c_noise, emb): the trainable network
        sigma_data: float = EDMLossSettings.sigma_data,  # expected std of the training data
        sigma_min: float = 0.0,  # lowest noise level the model supports (samplers clamp to it)
        sigma_max: float = math.inf,  # highest noise level the model supports
    ) -> None:
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(describe("sigma_data > 0", sigma_data, where="EDMPrecond"))
        self.backbone = backbone
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def coefficients(
        self, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (any shape)."""
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)  # Eq. 7 / Table 1
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()  # Table 1
        c_in = 1 / (sd**2 + sigma**2).sqrt()  # Table 1
        c_noise = sigma.log() / 4  # Table 1
        return c_skip, c_out, c_in, c_noise

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        cond: torch.Tensor | None = None,
        emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoised estimate ``D(x; σ)``.

        Args:
            x: noisy sample (B, C_x, H, W), data units (normalized residual).
            sigma: noise level(s): scalar, (B,) or (B, 1, 1, 1), same units as ``x``.
            cond: conditioning channels (B, C_cond, H, W) or None; never scaled.
            emb: embedding vector (B, E) (lead time, time of day) or None.

        Returns:
            D(x; σ): (B, C_x, H, W) in ``x``'s dtype.
        """
        sigma = _sigma_like(sigma, x)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        x_in = c_in * x.to(torch.float32)
        if cond is not None:
            if cond.shape[0] != x.shape[0] or cond.shape[2:] != x.shape[2:]:
                raise GridError(
                    describe(
                        f"cond shaped (B={x.shape[0]}, C, {tuple(x.shape[2:])})",
                        tuple(cond.shape),
                        where="EDMPrecond",
                    )
                )
            x_in = torch.cat(
                [x_in, cond.to(x_in.dtype)], dim=1
            )  # after c_in: conditioning is never scaled
        F_x = self.backbone(x_in, c_noise.flatten(), emb)
        D_x = c_skip * x.to(torch.float32) + c_out * F_x.to(torch.float32)  # Eq. 7
        return D_x.to(x.dtype)


class EDMLoss:
    """EDM training loss (Sec. 5, Eq. 8 with the log-normal σ of Table 1), unreduced.

    σ ~ exp(N(P_mean, P_std²)); weight λ(σ) = (σ² + σ_data²) / (σ σ_data)², so that the
    effective target of F has unit variance at every σ.
    """

    def __init__(
        self,
        P_mean: float = EDMLossSettings.P_mean,  # mean of ln σ during training
        P_std: float = EDMLossSettings.P_std,  # standard deviation of ln σ during training
        sigma_data: float = EDMLossSettings.sigma_data,  # expected std of the training data
    ) -> None:
        self.P_mean = float(P_mean)
        self.P_std = float(P_std)
        self.sigma_data = float(sigma_data)

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """λ(σ) = (σ² + σ_data²) / (σ σ_data)² (Table 1)."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def sample_sigma(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """σ (B, 1, 1, 1) drawn from the training distribution ln σ ~ N(P_mean, P_std²)."""
        rnd_normal = torch.randn(
            [batch, 1, 1, 1], generator=generator, device=_gen_device(generator, device)
        )
        return (rnd_normal * self.P_std + self.P_mean).exp().to(device)

    def __call__(
        self,
        net: nn.Module,
        y: torch.Tensor,
        cond: torch.Tensor | None = None,
        emb: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-element loss λ(σ) (D(y + n; σ) - y)² with n ~ N(0, σ² I).

        Args:
            net: a denoiser ``D(x, sigma, cond, emb)`` (e.g. :class:`EDMPrecond`).
            y: clean training samples (B, C, H, W) (normalized residuals).
            cond, emb: passed through to ``net``.
            generator: optional torch.Generator for σ and the noise (reproducible tests).

        Returns:
            unreduced loss (B, C, H, W), float32; the caller reduces (mean) it.
        """
        sigma = self.sample_sigma(y.shape[0], y.device, generator)
        weight = self.weight(sigma)
        n = (
            torch.randn(y.shape, generator=generator, device=_gen_device(generator, y.device)).to(
                y.device
            )
            * sigma
        )
        D_yn = net(y + n, sigma, cond, emb)
        return weight * (D_yn.to(torch.float32) - y.to(torch.float32)) ** 2


def _gen_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    """Draw on the generator's own device (a CPU generator cannot fill a CUDA tensor)."""
    return generator.device if generator is not None else fallback
