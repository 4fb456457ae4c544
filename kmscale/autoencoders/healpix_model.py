"""What every autoencoder on nested HEALPix fields shares.

Input ``(B, V, 12 nside**2)`` in nested ordering; the latent lives ``levels`` coarser in
the nested hierarchy, so each latent cell stands for ``4**levels`` input cells. The
models' configs hold ``nside``, ``levels`` and ``latent_channels``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kmscale.autoencoders.base import Autoencoder
from kmscale.errors import SchemaError, describe


class HealpixAutoencoder(Autoencoder):
    """Base class of the HEALPix autoencoders (``fsae``, ``face_vae``, ``hyperprior``)."""

    spatial_dims = 1

    @property
    def downsample_factor(self) -> int:
        """Per face side: ``2**N`` (the cell count shrinks by ``4**N``)."""
        return 2**self.config.levels

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def npix(self) -> int:
        return 12 * self.config.nside**2

    @property
    def compression_factor(self) -> float:
        """Input values per latent value: ``V * 4**N / latent_channels``."""
        return self.in_channels * 4**self.config.levels / self.latent_channels

    def latent_shape(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        self._check_cells(spatial_shape[-1], self.npix, "input")
        return (self.npix // 4**self.config.levels,)

    def _check_cells(self, found: int, expected: int, what: str) -> None:
        if found != expected:
            raise SchemaError(
                describe(
                    f"{what} with {expected} cells (nested nside {self.config.nside}, the level "
                    "the model was built for)",
                    f"{found} cells",
                    where=self.registry_name,
                )
            )

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        self._check_cells(x.shape[-1], self.npix, "input")
