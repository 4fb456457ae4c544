"""Pixel space as an autoencoder: the baseline every latent model is compared with.

With the ``IdentityAutoencoder`` the whole pipeline (regression U-Net, residual
diffusion, sampling) runs on standardized physical fields, CorrDiff-style.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import register_to_config

from kmscale.autoencoders.base import Autoencoder
from kmscale.autoencoders.registration import register


@register("identity")
class IdentityAutoencoder(Autoencoder):
    """z = standardized x; downsample factor 1, one latent channel per variable."""

    @register_to_config
    def __init__(
        self,
        variables: Sequence[str] = ("t2m",),  # physical variables, in channel order
        input_stats: dict | None = None,  # per-variable transform/mean/std (kmscale.data.stats)
        latent_mean: list[float] | None = None,  # per-channel latent normalization
        latent_std: list[float] | None = None,
        spatial_dims: int = 2,  # 2 for (H, W) grids, 1 for HEALPix pixel vectors
    ):
        super().__init__()
        self.spatial_dims = spatial_dims
        # ModelMixin needs one tensor to infer device/dtype and to write a weights file.
        self.register_buffer("_anchor", torch.zeros(()))

    @property
    def downsample_factor(self) -> int:
        return 1

    @property
    def latent_channels(self) -> int:
        return len(self.config.variables)

    def _encode_normalized(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        return z
