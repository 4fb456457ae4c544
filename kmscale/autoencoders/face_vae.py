"""Convolutional VAE on the 12 HEALPix base faces: the baseline of the field-space autoencoder.

    x (B, C, npix) nested -> to_faces -> (B, C, 12, n, n)
      -> FaceConv2d 3x3 -> [ResBlock, FaceConv2d 3x3 stride 2] x N -> ResBlock
      -> FaceConv2d 1x1 -> posterior N(mu, sigma^2) (B, 2 latent_channels, 12, n / 2**N, ...)
    z -> FaceConv2d 3x3 -> ResBlock -> [FaceUpsample x2, ResBlock] x N -> FaceConv2d 3x3
      -> from_faces -> x_hat (B, C, npix)

Every convolution runs on neighbour-padded faces (:mod:`kmscale.sphere.faces`), so there are
no seams at face edges. Latents are flattened back to nested order ``(B, latent_channels,
npix / 4**N)``, the same layout as the FS-AE's, so both fit the same latent store.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from kmscale.autoencoders.base import AutoencoderOutput
from kmscale.autoencoders.healpix_model import HealpixAutoencoder
from kmscale.autoencoders.registration import register
from kmscale.errors import ConfigError, describe
from kmscale.sphere import FaceConv2d, FaceUpsample, check_nside, from_faces, to_faces


class FaceResBlock(nn.Module):
    """x + conv(SiLU(GroupNorm(conv(SiLU(GroupNorm(x)))))) on face images."""

    def __init__(self, ch: int, groups: int = 8):
        super().__init__()
        self.n1, self.n2 = nn.GroupNorm(groups, ch), nn.GroupNorm(groups, ch)
        self.c1, self.c2 = FaceConv2d(ch, ch, 3), FaceConv2d(ch, ch, 3)
        self.act = nn.SiLU()

    def _norm(self, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        return norm(x.flatten(2)).view_as(x)  # statistics over all 12 faces of a sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(self.act(self._norm(self.n1, x)))
        return x + self.c2(self.act(self._norm(self.n2, h)))


@register("face_vae")
class FaceVAE(HealpixAutoencoder):
    """VAE on neighbour-padded HEALPix faces; input nested ``(B, V, 12 nside**2)``."""

    @register_to_config
    def __init__(
        self,
        variables: Sequence[str] = ("t2m",),
        input_stats: dict | None = None,
        latent_mean: list[float] | None = None,
        latent_std: list[float] | None = None,
        nside: int = 16,  # input resolution
        levels: int = 2,  # N stride-2 steps: 4**N cells per latent cell
        latent_channels: int = 1,
        channels: int = 32,  # width of every block
    ):
        super().__init__()
        check_nside(nside)
        if not 1 <= 2**levels <= nside:
            raise ConfigError(
                describe(f"1 <= 2**levels <= nside ({nside})", levels, where="face_vae.levels")
            )
        v, ch = len(variables), channels
        enc: list[nn.Module] = [FaceConv2d(v, ch, 3)]
        for _ in range(levels):
            enc += [FaceResBlock(ch), FaceConv2d(ch, ch, 3, stride=2)]
        enc += [FaceResBlock(ch), nn.SiLU(), FaceConv2d(ch, 2 * latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [FaceConv2d(latent_channels, ch, 3), FaceResBlock(ch)]
        for _ in range(levels):
            dec += [FaceUpsample(ch, ch), FaceResBlock(ch)]
        dec += [nn.SiLU(), FaceConv2d(ch, v, 3)]
        self.decoder = nn.Sequential(*dec)

    def posterior(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """q(z|x) with parameters ``(B, 2 L, npix / 4**N, 1)``: diffusers' KL sums over
        three trailing dims, hence the unit dim (``[..., 0]`` gives the nested latent)."""
        moments = self.encoder(to_faces(x))  # (B, 2 L, 12, h, h)
        return DiagonalGaussianDistribution(from_faces(moments)[..., None])

    def _encode_normalized(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x).mode()[..., 0]

    def _decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        return from_faces(self.decoder(to_faces(z)))

    def forward(
        self,
        x: torch.Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
        quant_step: float = 0.0,
    ) -> AutoencoderOutput:
        """Training pass on standardized ``x (B, V, npix)``.

        Returns ``AutoencoderOutput(x_hat, posterior)``."""
        post = self.posterior(x)
        z = (post.sample(generator) if sample_posterior else post.mode())[..., 0]
        if quant_step > 0:
            scale = z.detach().std(dim=(0, 2), keepdim=True)
            z = (
                z
                + (torch.rand(z.shape, generator=generator, device=z.device) - 0.5)
                * quant_step
                * scale
            )
        return AutoencoderOutput(self._decode_normalized(z), post)

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder]

    def train_decoder_only(self) -> None:
        self.requires_grad_(False)
        self.decoder.requires_grad_(True)
