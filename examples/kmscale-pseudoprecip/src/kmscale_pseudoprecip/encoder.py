"""A pseudo-precipitation encoder written against kmscale's public Autoencoder contract only.

The network is the published per-pixel fully connected encoder-decoder (Radhakrishnan et
al. 2024, arXiv:2412.14620) written with 1 x 1 convolutions, which apply the same fully
connected layers to every pixel::

    x (B, C, H, W) standardized [tp, companions...]
      Conv1x1(C, W) ─ SiLU ─ [Conv1x1(W, W) ─ SiLU] x (L-1) ─ Conv1x1(W, 1) ──► PP
      Conv1x1(1, W) ─ SiLU ─ [Conv1x1(W, W) ─ SiLU] x (L-1) ─ Conv1x1(W, C) ──► x_hat

It plugs into kmscale through the ``kmscale.autoencoders`` entry point in pyproject.toml
(name ``pseudo-precip-conv``) and trains with kmscale's recipe::

    python recipes/train_pseudo_precip.py --config ... model.name=pseudo-precip-conv

which needs ``forward(x) -> (pp, x_hat_standardized, x_standardized)`` and the
constructor arguments ``variables``, ``precip_variable``, ``hidden_width``, ``hidden_layers``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from kmscale.autoencoders.base import Autoencoder
from kmscale.errors import ConfigError, SchemaError


def _pointwise_mlp(n_in: int, n_out: int, width: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Conv2d(n_in, width, 1), nn.SiLU()]
    for _ in range(layers - 1):
        mods += [nn.Conv2d(width, width, 1), nn.SiLU()]
    mods.append(nn.Conv2d(width, n_out, 1))
    return nn.Sequential(*mods)


class ConvPseudoPrecip(Autoencoder):
    """[tp, companions] (B, C, H, W) -> PP (B, 1, H, W) -> [tp >= 0, companions]."""

    @register_to_config
    def __init__(
        self,
        variables: Sequence[str] = ("tp", "q850"),  # precipitation and its companion fields
        input_stats: dict | None = None,  # per-variable transform/mean/std (kmscale schema)
        latent_mean: list[float] | None = None,  # PP normalization
        latent_std: list[float] | None = None,
        precip_variable: str = "tp",  # the variable decoded >= 0
        hidden_width: int = 32,  # channels of the hidden 1 x 1 layers
        hidden_layers: int = 2,  # hidden layers per network
    ):
        super().__init__()
        if precip_variable not in variables or len(variables) < 2:
            raise ConfigError(
                f"pseudo-precip-conv: expected {precip_variable!r} and at least one companion, "
                f"found {list(variables)}"
            )
        self.encoder = _pointwise_mlp(len(variables), 1, hidden_width, hidden_layers)
        self.decoder = _pointwise_mlp(1, len(variables), hidden_width, hidden_layers)

    @property
    def downsample_factor(self) -> int:
        return 1

    @property
    def latent_channels(self) -> int:
        return 1

    @property
    def precip_index(self) -> int:
        return self.variables.index(self.config.precip_variable)

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        if bool((x[:, self.precip_index] < 0).any()):
            raise SchemaError(
                f"pseudo-precip-conv: expected {self.config.precip_variable} >= 0, "
                f"found negative values"
            )

    def _encode_normalized(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def _decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Physical x -> (PP, standardized reconstruction, standardized x): the training pass."""
        xs = self.normalize_input(x)
        pp = self._encode_normalized(xs)
        return pp, self._decode_normalized(pp), xs

    def denormalize_output(self, y: torch.Tensor) -> torch.Tensor:
        out = super().denormalize_output(y)
        out[:, self.precip_index] = out[:, self.precip_index].clamp(min=0.0)
        return out

    def dry_level(self) -> float:
        """Standardized value of 0 precipitation (the recipe's censored loss uses it)."""
        from kmscale.data import transforms

        stat = (self.config.input_stats or {}).get(self.config.precip_variable)
        return 0.0 if stat is None else float(transforms.standardize(0.0, stat))

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder]
