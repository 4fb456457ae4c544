"""Training losses of the VAE: Charbonnier reconstruction + beta(t) KL + optional spectral term.

    L = E_valid[ rho(x_hat - x) ] + beta(t) * KL(q(z|x) || N(0, I)) / n_pixels
        + lambda_s * E_k[ (log(1 + |F x_hat|_k) - log(1 + |F x|_k))^2 ]   (or another spectral mode)

with the Charbonnier penalty rho(e) = sqrt(e^2 + eps^2) - eps (a smooth L1: quadratic
for |e| << eps, linear beyond, so rare large errors do not dominate), the KL weight
ramped linearly from 0 to ``kl_weight`` over the first ``kl_warmup_samples`` samples
(KL annealing, Bowman et al. 2016: without it the posterior collapses before the
decoder learns), and the spectral term comparing log amplitude spectra of each
variable so that the smallest scales keep their power (a pure pixel loss blurs them).

Everything is computed on standardized fields. Masked points (``mask`` False, e.g.
outside a radar composite) take no part in the reconstruction loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution


def charbonnier(error: torch.Tensor, eps: float) -> torch.Tensor:
    """rho(e) = sqrt(e^2 + eps^2) - eps, elementwise (0 at e = 0)."""
    return torch.sqrt(error * error + eps * eps) - eps


def log_amplitude_spectrum(x: torch.Tensor) -> torch.Tensor:
    """log(1 + |rfft2(x)|) / sqrt(H W) for x (..., H, W): (..., H, W//2 + 1)."""
    h, w = x.shape[-2:]
    return torch.log1p(torch.fft.rfft2(x.float(), norm="ortho").abs() / (h * w) ** 0.5)


def log_power_spectrum(x: torch.Tensor, floor: float) -> torch.Tensor:
    """log(|rfft2(x)|^2 + floor) for x (..., H, W) (orthonormal FFT): (..., H, W//2 + 1).

    Every wavenumber counts alike whatever its power, so the faint smallest scales,
    which a pixel loss and the amplitude spectrum hardly see, must keep their power;
    ``floor`` (standardized units squared) stops the log from chasing noise below it.
    """
    return torch.log(torch.fft.rfft2(x.float(), norm="ortho").abs().square() + floor)


def windowed_line_power(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Power |F_k|^2, k = 1..n//2, of every line of x (B, C, H, W) along ``dim`` (-1 or -2),
    after removing each line's least-squares linear trend and applying a Hann window:
    (B, C, lines, n//2).

    The same spectrum as :func:`kmscale.evaluation.spectra.zonal_power_spectrum` (the
    skill metric), in torch so that it has gradients: without the detrending and window,
    the jump between the two ends of a non-periodic line leaks into every wavenumber and
    swamps the faint smallest scales.
    """
    x = x.float().transpose(dim, -1)
    n = x.shape[-1]
    t = torch.arange(n, dtype=x.dtype, device=x.device) - (n - 1) / 2.0
    x = (
        x
        - x.mean(-1, keepdim=True)
        - (x * t).sum(-1, keepdim=True) / (t * t).sum().clamp(min=1e-12) * t
    )
    w = torch.sin(torch.pi * torch.arange(n, dtype=x.dtype, device=x.device) / n) ** 2
    x = x * (w / w.square().mean().sqrt())
    return torch.fft.rfft(x, norm="ortho").abs().square()[..., 1:]


def mean_log_power_distance(x_hat: torch.Tensor, x: torch.Tensor, floor: float) -> torch.Tensor:
    """Distance of the log batch-mean spectra, zonal plus meridional, averaged over
    wavenumbers and variables (scalar; squared up to a log ratio of 1, then linear);
    x_hat, x (B, C, H, W).

    Lines of the whole batch are averaged (per variable) before the log: the target is then the true
    mean power at each wavenumber, which a decoder that cannot know the phase of every
    small-scale wiggle still can match with texture of the right amount. Matching each
    line's log power instead aims at the geometric mean of a chi-square variable, about
    0.56x the mean power for a complex coefficient and 0.28x at the Nyquist wavenumber,
    so it leaves the smallest scales too weak.
    """
    total = x_hat.new_zeros((), dtype=torch.float32)
    for dim in (-1, -2):
        p_hat = windowed_line_power(x_hat, dim).mean((0, 2))
        p = windowed_line_power(x, dim).mean((0, 2))
        d = torch.log(p_hat + floor) - torch.log(p + floor)
        # d^2 for |d| <= 1, 2|d| - 1 beyond (twice the Huber loss): a decoder whose spectrum
        # is far off (a 300x power deficit was measured on a short-trained model) gets a
        # bounded gradient, instead of a square that outweighs the pixel loss and wrecks
        # the fields.
        total = total + 2.0 * torch.nn.functional.huber_loss(d, torch.zeros_like(d), delta=1.0)
    return total


SPECTRAL_MODES = ("log_amplitude", "log_power", "mean_log_power")


@dataclass
class VAELoss:
    """Per-sample VAE loss parts; ``total`` is what the optimizer sees.

    Args (the loss's hyperparameters):
        charbonnier_eps: eps of the Charbonnier penalty, in standardized units.
        kl_weight: final beta multiplying the per-pixel KL (small: we want a codec,
            not a generative prior; 1e-6..1e-4 in latent-diffusion first stages).
        kl_warmup_samples: samples seen over which beta ramps linearly from 0.
        spectral_weight: lambda_s; 0 disables the spectral term.
        spectral_mode: "log_amplitude" (log(1 + |F x|), dominated by the large scales) or
            "log_power" (log(|F x|^2 + spectral_floor): every wavenumber alike, for
            decoders that must keep the power of the smallest scales) or
            "mean_log_power" (:func:`mean_log_power_distance`: the batch's mean detrended,
            Hann-windowed line spectra along both axes; one value for the batch,
            repeated per sample; what a decoder needs to keep the smallest scales' power
            at their true level).
        spectral_floor: see :func:`log_power_spectrum`.
    """

    charbonnier_eps: float = 1e-3
    kl_weight: float = 1e-6
    kl_warmup_samples: int = 10_000
    spectral_weight: float = 0.0
    spectral_mode: str = "log_amplitude"
    spectral_floor: float = 1e-4

    def __post_init__(self):
        if self.spectral_mode not in SPECTRAL_MODES:
            raise ValueError(
                f"VAELoss.spectral_mode: expected one of {SPECTRAL_MODES}, found "
                f"{self.spectral_mode!r}"
            )

    def beta(self, samples_seen: int) -> float:
        """KL weight after ``samples_seen`` training samples (linear warm-up)."""
        if self.kl_warmup_samples <= 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, samples_seen / self.kl_warmup_samples)

    def __call__(
        self,
        x_hat: torch.Tensor,
        x: torch.Tensor,
        posterior: DiagonalGaussianDistribution,
        mask: torch.Tensor | None = None,
        samples_seen: int = 0,
        weight: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Unreduced loss parts.

        Args:
            x_hat, x: reconstruction and target, standardized, (B, C, H, W).
            posterior: q(z|x) from the encoder, (B, latent_channels, h, w).
            mask: optional bool (B, C, H, W) or (B, 1, H, W), True where x is valid.
            samples_seen: training samples seen so far (for the KL warm-up).
            weight: optional non-negative float (B, C, H, W) or (B, 1, H, W) multiplying the
                per-pixel penalty, e.g. more weight on wet pixels of a precipitation field
                (which a plain mean lets a decoder blur away); the reconstruction term is
                the weighted mean over valid points.

        Returns:
            dict of (B,) tensors: ``recon``, ``kl`` (per input pixel), ``spectral``, ``total``.
        """
        err = charbonnier(x_hat.float() - x.float(), self.charbonnier_eps)
        if weight is not None and bool((weight < 0).any()):
            raise ValueError("VAELoss: expected non-negative weights, found negative values")
        if mask is not None or weight is not None:
            w = torch.ones_like(err) if mask is None else mask.expand_as(err).float()
            if weight is not None:
                w = w * weight.float().expand_as(err)
            # Normalized by the summed weight (>= 1 valid point) so the loss scale does not
            # depend on the weighting; clamp keeps an all-masked sample at 0, not NaN.
            recon = (err * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp(min=1e-6)
        else:
            recon = err.flatten(1).mean(1)
        n_pixels = x[0].numel()
        kl = posterior.kl().float() / n_pixels
        total = recon + self.beta(samples_seen) * kl
        if self.spectral_weight > 0:
            target = x if mask is None else torch.where(mask.expand_as(x), x, x_hat.detach())
            if self.spectral_mode == "mean_log_power":
                spectral = mean_log_power_distance(x_hat, target, self.spectral_floor).expand(
                    x.shape[0]
                )
            else:
                if self.spectral_mode == "log_power":
                    diff = log_power_spectrum(x_hat, self.spectral_floor) - log_power_spectrum(
                        target, self.spectral_floor
                    )
                else:
                    diff = log_amplitude_spectrum(x_hat) - log_amplitude_spectrum(target)
                spectral = (diff * diff).flatten(1).mean(1)
            total = total + self.spectral_weight * spectral
        else:
            spectral = torch.zeros_like(recon)
        return {"recon": recon, "kl": kl, "spectral": spectral, "total": total}
