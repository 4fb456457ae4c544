"""A small denoiser backbone for HEALPix fields: residual blocks on neighbour-padded faces.

``F(x_in (B, C_in, npix, 1), c_noise (B,), emb None) -> (B, C_out, npix, 1)`` (nested cells;
the trailing unit dim because the EDM loss draws sigma as (B, 1, 1, 1)), the backbone
signature of :class:`kmscale.diffusion.edm.EDMPrecond`, so the EDM loss and sampler run on
HEALPix latents (compressed-field diffusion) unchanged. The noise level enters every block
as a scale and shift of its normalized activations (FiLM, as the ADM/EDM U-Nets do).
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import GaussianFourierProjection
from torch import nn

from kmscale.sphere import FaceConv2d, from_faces, to_faces


class _Block(nn.Module):
    def __init__(self, ch: int, emb_dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(8, ch), nn.GroupNorm(8, ch)
        self.conv1, self.conv2 = FaceConv2d(ch, ch, 3), FaceConv2d(ch, ch, 3)
        self.film = nn.Linear(emb_dim, 2 * ch)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x.flatten(2)).view_as(x)))
        scale, shift = self.film(emb)[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h.flatten(2)).view_as(h) * (1 + scale) + shift
        return x + self.conv2(self.act(h))


class FaceDenoiser(ModelMixin, ConfigMixin):
    """Residual face-convolution network with noise-level FiLM."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 1,
        channels: int = 32,
        blocks: int = 4,
        emb_dim: int = 64,
    ):
        super().__init__()
        # random Fourier features of c_noise = ln(sigma) / 4 (NCSN++ style, EDM Table 1)
        self.noise_embed = nn.Sequential(
            GaussianFourierProjection(emb_dim // 2, scale=4.0, log=False),
            nn.Linear(emb_dim, emb_dim),
            nn.SiLU(),
        )
        self.conv_in = FaceConv2d(in_channels, channels, 3)
        self.res_blocks = nn.ModuleList([_Block(channels, emb_dim) for _ in range(blocks)])
        self.conv_out = FaceConv2d(channels, out_channels, 3)
        nn.init.zeros_(self.conv_out.conv.weight)
        nn.init.zeros_(self.conv_out.conv.bias)

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        e = self.noise_embed(c_noise)
        h = self.conv_in(to_faces(x[..., 0]))
        for block in self.res_blocks:
            h = block(h, e)
        return from_faces(self.conv_out(h))[..., None]
