"""Pseudo-precipitation (PP) encoder: TP + continuous companions -> one Gaussian-like field.

Radhakrishnan et al. 2024, "Continuous latent representations for modeling precipitation
with deep learning" (arXiv:2412.14620): total precipitation TP is zero over much of a
field and heavy-tailed where it rains, so spectral truncation rings (Gibbs) and
diffusion models struggle with it. A small fully connected network, applied to each
pixel alone, blends TP with a continuous companion (VIMD, the vertically integrated
moisture divergence, in the paper) into pseudo-precipitation PP, trained so that PP's
marginal is close to N(0, 1); a second network returns TP from PP alone::

    x (B, C, *spatial)   C = [tp, companion_1, ...] physical units
      │ standardize (tp: log1p, companions: none; config.input_stats)
      ▼ per pixel: x_p in R^C
    E: Linear(C, W) ─ SiLU ─ [Linear(W, W) ─ SiLU] x (L - 1) ─ Linear(W, 1)  ──►  PP_p
      ▼
    z = (PP - latent_mean) / latent_std      (B, 1, *spatial), downsample factor 1
      │
    D: Linear(1, W) ─ SiLU ─ [Linear(W, W) ─ SiLU] x (L - 1) ─ Linear(W, C)
      ▼ destandardize; tp clamped at 0: exact zeros where D puts it below the dry level
    x_hat (B, C, *spatial)   tp >= 0 and the companions' reconstruction from PP

D sees PP clamped to its domain (``config.pp_range``: the training fields' range widened
by a margin, see PPModelConfig.range_margin): PP that a diffusion model generates beyond
it decodes to the domain's end values, not to an extrapolation of the MLP (which log1p's
inverse would turn into hundreds of mm h-1).

The decoder needs PP only (not the companions), so a diffusion model that generates PP
at high resolution can be decoded without high-resolution companions. Its companion
outputs exist to keep the Autoencoder contract (decode returns every input variable);
they are rough (one number per pixel cannot carry two fields) and are not what PP is
for. Being per pixel, the encoder is exactly local: tiles equal the whole field.

Training (:mod:`kmscale.autoencoders.pseudo_precip_train`): censored reconstruction loss
on standardized TP (dry pixels need only fall below the dry level) plus a quantile loss
pulling PP's batch quantiles to those of N(0, 1). The width W, depth L, quantile grid and
loss weights where the paper is silent are documented in benchmarks/BENCHMARKS.md
(chosen on held-out hours).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from kmscale.autoencoders.base import Autoencoder
from kmscale.autoencoders.registration import register
from kmscale.errors import ConfigError, SchemaError


def pixel_mlp(n_in: int, n_out: int, width: int, layers: int) -> nn.Sequential:
    """Fully connected network R^n_in -> R^n_out with ``layers`` hidden SiLU layers of ``width``."""
    mods: list[nn.Module] = [nn.Linear(n_in, width), nn.SiLU()]
    for _ in range(layers - 1):
        mods += [nn.Linear(width, width), nn.SiLU()]
    mods.append(nn.Linear(width, n_out))
    return nn.Sequential(*mods)


def per_pixel(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply ``net`` (last-dim features) to every pixel of x (B, C, *spatial)."""
    return net(x.movedim(1, -1)).movedim(-1, 1)


@register("pseudo_precip")
class PseudoPrecipMLP(Autoencoder):
    """Per-pixel MLP encoder-decoder: [tp, companions...] -> PP (1 channel) -> [tp, ...].

    Example::

        pp = PseudoPrecipMLP(variables=["tp", "vimd"])   # tp in mm h-1, vimd kg m-2 s-1
        pp.set_input_stats(stats)                              # tp with transform log1p
        z = pp.encode(x)          # (B, 2, H, W) -> (B, 1, H, W)
        tp = pp.decode(z)[:, 0]   # mm h-1, >= 0, exact zeros where dry
    """

    @register_to_config
    def __init__(
        self,
        variables: Sequence[str] = ("tp", "vimd"),  # tp first or anywhere; then companion fields
        input_stats: dict | None = None,  # per-variable transform/mean/std (kmscale.data.stats)
        latent_mean: list[float] | None = None,  # PP normalization fitted on training PP
        latent_std: list[float] | None = None,
        precip_variable: str = "tp",  # which variable is precipitation (decoded >= 0)
        hidden_width: int = 32,  # W: units per hidden layer (encoder and decoder)
        hidden_layers: int = 2,  # L: hidden layers per network
        spatial_dims: int = 2,  # 2 for (H, W) grids, 1 for HEALPix pixel vectors
        pp_range: list[float] | None = None,  # decoder domain [low, high] of raw PP (training)
    ):
        super().__init__()
        names = list(variables)
        if precip_variable not in names:
            raise ConfigError(
                f"pseudo_precip: expected the precipitation variable {precip_variable!r} among "
                f"variables, found {names}"
            )
        if len(names) < 2:
            raise ConfigError(
                f"pseudo_precip: expected {precip_variable!r} plus at least one continuous "
                f"companion "
                f"field (e.g. vimd, tcw, rain_edge_distance), found {names}"
            )
        if hidden_width < 1 or hidden_layers < 1:
            raise ConfigError(
                f"pseudo_precip: expected hidden_width >= 1 and hidden_layers >= 1, found "
                f"{hidden_width} and {hidden_layers}"
            )
        self.spatial_dims = spatial_dims
        self.encoder = pixel_mlp(len(names), 1, hidden_width, hidden_layers)
        self.decoder = pixel_mlp(1, len(names), hidden_width, hidden_layers)

    @property
    def downsample_factor(self) -> int:
        return 1

    @property
    def latent_channels(self) -> int:
        return 1

    @property
    def precip_index(self) -> int:
        """Channel of the precipitation variable."""
        return self.variables.index(self.config.precip_variable)

    def check_input(self, x: torch.Tensor) -> None:
        """Shape check of the contract, plus: precipitation must be >= 0 (NaN = masked)."""
        super().check_input(x)
        tp = x[:, self.precip_index]
        if bool((tp < 0).any()):
            raise SchemaError(
                f"{type(self).__name__}: expected {self.config.precip_variable} >= 0, found "
                f"{int((tp < 0).sum())} negative values (minimum {float(tp.min()):g})"
            )

    def _encode_normalized(self, x: torch.Tensor) -> torch.Tensor:
        return per_pixel(self.encoder, x)

    def _decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        # A generated PP outside the training range would make the MLP extrapolate
        # linearly and log1p's inverse exponentially (hundreds of mm h-1 from a diffusion
        # sample a few sigma out): the decoder saturates at the range's ends instead.
        rng = self.config.pp_range
        if rng is not None:
            z = z.clamp(min=rng[0], max=rng[1])
        return per_pixel(self.decoder, z)

    def set_pp_range(self, low: float, high: float) -> None:
        """Record the decoder's domain of raw PP (the training range plus a margin)."""
        if not low < high:
            raise ConfigError(f"pp_range: expected low < high, found [{low}, {high}]")
        self.register_to_config(pp_range=[float(low), float(high)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass on physical x (B, C, *spatial): (PP before latent normalization
        (B, 1, *spatial), standardized reconstruction (B, C, *spatial), standardized x)."""
        xs = self.normalize_input(x)
        pp = self._encode_normalized(xs)
        return pp, self._decode_normalized(pp), xs

    def denormalize_output(self, y: torch.Tensor) -> torch.Tensor:
        out = super().denormalize_output(y)
        i = self.precip_index
        # Exact zeros where dry, whatever the transform (log1p's inverse already clamps).
        out[:, i] = out[:, i].clamp(min=0.0)
        return out

    def dry_level(self) -> float:
        """Standardized value of precipitation 0: decoded values at or below it are dry."""
        from kmscale.data import transforms

        stat = (self.config.input_stats or {}).get(self.config.precip_variable)
        if stat is None:
            return 0.0
        return float(transforms.standardize(0.0, stat))

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder]
