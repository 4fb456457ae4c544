"""Per-pixel group normalization: the tile-consistent replacement for ``nn.GroupNorm``.

``nn.GroupNorm`` (Wu & He 2018) normalizes each group of channels with a mean and a
variance taken over the group's channels AND the whole spatial extent of the sample.
The output at one pixel therefore depends on every other pixel of the field: a field
encoded in tiles (:mod:`kmscale.autoencoders.tiling`) is normalized with each tile's
own statistics and disagrees with the same field encoded whole (by about the
reconstruction error itself for a trained VAE).

:class:`PixelGroupNorm` takes the statistics over the channels of each group at each
pixel only (no spatial reduction), as the channel LayerNorm of ConvNeXt does for one
group. Every operation of the network is then local, so the only difference between
tiles and the whole field is the receptive field reaching past a tile's border
(zero padding instead of the neighbours), which the overlap and the tapering blending
window of the tiling remove. The affine weight and bias have GroupNorm's shapes
(C,) and names, so a state dict keeps its keys.

For x (B, C, H, W) with G groups of C/G channels, group g at pixel (i, j)::

    mu_g(i, j)      = mean_{c in g} x_c(i, j)
    sigma_g^2(i, j) = mean_{c in g} (x_c(i, j) - mu_g(i, j))^2
    y_c(i, j)       = gamma_c (x_c(i, j) - mu_g(i, j)) / sqrt(sigma_g^2(i, j) + eps) + beta_c
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kmscale.errors import ConfigError


class PixelGroupNorm(nn.Module):
    """Group normalization with statistics per pixel over the channels of each group.

    Args:
        num_groups: G; must divide ``num_channels``. G = 1 is the channel LayerNorm.
        num_channels: C.
        eps: added to the variance, as in ``nn.GroupNorm``.
        affine: learnable per-channel scale gamma (``weight``) and shift beta (``bias``).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ConfigError(
                f"PixelGroupNorm: expected num_groups dividing num_channels={num_channels}, found "
                f"{num_groups}"
            )
        self.num_groups = int(num_groups)
        self.num_channels = int(num_channels)
        self.eps = float(eps)
        self.affine = bool(affine)
        if self.affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @classmethod
    def from_group_norm(cls, norm: nn.GroupNorm, num_groups: int | None = None) -> PixelGroupNorm:
        """The per-pixel counterpart of ``norm`` (same C, eps, affine; weights copied).

        ``num_groups`` overrides the group count (default: the GroupNorm's).
        """
        out = cls(num_groups or norm.num_groups, norm.num_channels, norm.eps, norm.affine)
        if norm.affine:
            with torch.no_grad():
                out.weight.copy_(norm.weight)
                out.bias.copy_(norm.bias)
        return out.to(device=norm.weight.device if norm.affine else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, *spatial) -> same shape, normalized per pixel and group."""
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"PixelGroupNorm: expected input (B, {self.num_channels}, ...), found "
                f"{tuple(x.shape)}"
            )
        b, c, *spatial = x.shape
        g = self.num_groups
        # Channels of a group moved last: F.layer_norm's fused kernel does the per-pixel
        # statistics (about 1.5x faster on CPU than var_mean over a middle axis).
        xg = x.reshape(b, g, c // g, *spatial).movedim(2, -1)
        y = F.layer_norm(xg, (c // g,), eps=self.eps).movedim(-1, 2).reshape(x.shape)
        if self.affine:
            shape = (1, c) + (1,) * len(spatial)
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


def swap_group_norms(module: nn.Module, num_groups: int | None = None) -> int:
    """Replace every ``nn.GroupNorm`` inside ``module`` by a :class:`PixelGroupNorm`, in place.

    The replacement keeps the attribute name, so state-dict keys do not change.
    Returns the number of modules replaced.
    """
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, PixelGroupNorm.from_group_norm(child, num_groups))
            count += 1
        else:
            count += swap_group_norms(child, num_groups)
    return count
