"""Convolutional VAE on diffusers' ``AutoencoderKL``: one model per variable group.

Architecture (Rombach et al. 2022, "High-resolution image synthesis with latent
diffusion models", the first-stage KL autoencoder)::

    x (B, C, H, W) standardized
      │ conv_in ─ [ResNet blocks (GroupNorm, SiLU) + stride-2 conv] x n_down ─ mid ─
      │ GroupNorm ─ SiLU ─ conv_out ─ quant_conv
      ▼
    posterior q(z|x) = N(mu, sigma^2)   (B, 2 * latent_channels, H / 2^n, W / 2^n)
      │ archive: z = mu (the mode);   training: z = mu + sigma * eps
      ▼
    decoder (mirror image, nearest upsampling + conv) ─► x_hat (B, C, H, W)

``len(block_out_channels)`` blocks give ``n_down = len - 1`` stride-2 downsamplings,
so ``downsample_factor = 2 ** n_down``; the default (4 blocks, 4 latent channels) is
the usual 8x, 4-channel latent. The mid-block self-attention of the image VAE is off
by default: it makes every latent depend on the whole field, which defeats tiled
encoding of fields far larger than memory (see :mod:`kmscale.autoencoders.tiling`).

Normalization (``norm_type``): diffusers builds the blocks with ``nn.GroupNorm``, whose
statistics span the whole spatial extent of a sample, so a field encoded in tiles
disagrees with the field encoded whole. ``norm_type="pixel"`` (the default)
swaps every GroupNorm, right after ``AutoencoderKL`` is built, for a
:class:`~kmscale.autoencoders.norms.PixelGroupNorm` over all channels of each pixel
(one group: with GroupNorm's 16 groups the 16-32-channel blocks would have 1-2
channels per group, where per-pixel statistics are degenerate: 1 channel normalizes
to the bias alone, 2 to the sign of their difference). The network is then local and
tiles exactly, given an overlap covering the receptive field (``auto_tiling``).
State-dict keys and shapes are those of the GroupNorm model. ``norm_type="group"``
keeps diffusers' GroupNorm (and allows the bottleneck self-attention); it does not
tile exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from kmscale.autoencoders.base import Autoencoder, AutoencoderOutput
from kmscale.autoencoders.norms import swap_group_norms
from kmscale.autoencoders.registration import register
from kmscale.errors import ConfigError

NORM_TYPES = ("pixel", "group")


@dataclass
class VAESettings:
    """Width and depth of a :class:`VAEAutoencoder` (``model:`` of the autoencoder recipe);
    the variables and statistics come from the data. The constructor's defaults are these."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])  # 8x down
    layers_per_block: int = 1  # ResNet blocks per level (the decoder uses one more)
    latent_channels: int = 4  # channels of z
    norm_num_groups: int = 16  # GroupNorm groups; must divide every block width
    norm_type: str = "pixel"  # "pixel": per-pixel channel norm (tiles exactly); "group": GroupNorm


@register("vae")
class VAEAutoencoder(Autoencoder):
    """KL-regularized convolutional autoencoder for a group of gridded variables.

    Example::

        vae = VAEAutoencoder(variables=["u10", "v10"], block_out_channels=(32, 64, 64),
                             latent_channels=4)          # 4x down, 4 channels
        z = vae.encode(x)        # x (B, 2, H, W) in m s-1 -> (B, 4, H/4, W/4)
        x_hat = vae.decode(z)    # -> (B, 2, H, W) in m s-1
    """

    @register_to_config
    def __init__(
        self,
        variables: Sequence[str] = ("t2m",),  # physical variables of the group, in channel order
        input_stats: dict | None = None,  # per-variable transform/mean/std (kmscale.data.stats)
        latent_mean: list[float] | None = None,  # per-channel latent normalization
        latent_std: list[float] | None = None,
        block_out_channels: Sequence[int] | None = None,  # width per level (None: VAESettings')
        layers_per_block: int = VAESettings.layers_per_block,
        latent_channels: int = VAESettings.latent_channels,
        norm_num_groups: int = VAESettings.norm_num_groups,
        mid_block_attention: bool = False,  # bottleneck global self-attention (breaks tiling)
        norm_type: str = VAESettings.norm_type,
    ):
        super().__init__()
        widths = [int(w) for w in block_out_channels or VAESettings().block_out_channels]
        self.register_to_config(block_out_channels=tuple(widths))  # the config names the widths
        if not widths:
            raise ConfigError("vae: expected at least one entry in block_out_channels, found none")
        bad = [w for w in widths if w % norm_num_groups]
        if bad:
            raise ConfigError(
                f"vae: expected block_out_channels divisible by norm_num_groups={norm_num_groups}, "
                f"found {widths}"
            )
        if norm_type not in NORM_TYPES:
            raise ConfigError(f"vae: expected norm_type in {NORM_TYPES}, found {norm_type!r}")
        if norm_type == "pixel" and mid_block_attention:
            raise ConfigError(
                "vae: expected mid_block_attention=False with norm_type='pixel', found True: "
                "self-attention is global over the field, so tiles can never match the whole "
                "field; use norm_type='group' for an attention model (it does not tile exactly)"
            )
        channels = len(variables)
        if channels < 1:
            raise ConfigError("vae: expected at least one variable, found none")
        self.vae = AutoencoderKL(
            in_channels=channels,
            out_channels=channels,
            down_block_types=("DownEncoderBlock2D",) * len(widths),
            up_block_types=("UpDecoderBlock2D",) * len(widths),
            block_out_channels=tuple(widths),
            layers_per_block=int(layers_per_block),
            act_fn="silu",
            latent_channels=int(latent_channels),
            norm_num_groups=int(norm_num_groups),
            mid_block_add_attention=bool(mid_block_attention),
        )
        if norm_type == "pixel":
            # In place, keeping attribute names: the state dict is that of the GroupNorm model.
            swap_group_norms(self.vae, num_groups=1)

    # ---- contract ------------------------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.config.latent_channels)

    def posterior(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """Standardized x (B, C, H, W) -> q(z|x), mean/logvar (B, latent_channels, h, w)."""
        return self.vae.encode(x).latent_dist

    def _encode_normalized(self, x: torch.Tensor) -> torch.Tensor:
        # Archive the posterior mode: deterministic, and the best point estimate.
        return self.posterior(x).mode()

    def _decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample

    # ---- training ------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
        quant_step: float = 0.0,
    ) -> AutoencoderOutput:
        """Training pass on standardized x (B, C, H, W): x_hat (standardized) and the posterior.

        With ``sample_posterior`` the decoder sees z = mu + sigma * eps (the
        reparameterization trick); otherwise z = mu.

        ``quant_step`` > 0 is quantization-aware training (Balle et al. 2017, "End-to-end
        optimized image compression"): the decoder sees z = mu + u * Delta * s_c with
        u ~ U(-1/2, 1/2), the additive-noise proxy of rounding the normalized latent
        (z - m_c) / s_c with step Delta (:func:`kmscale.autoencoders.quantize.quantize`).
        s_c is the recorded ``latent_std`` if set, else the batch's per-channel std of mu
        (detached: the scale is a measurement, not something to shrink). The noise
        replaces posterior sampling, whose sigma the tiny KL weight lets collapse.
        """
        post = self.posterior(x)
        if quant_step < 0:
            raise ConfigError(f"vae.forward: expected quant_step >= 0, found {quant_step}")
        if quant_step > 0:
            mu = post.mode()
            stats = self._latent_stats(mu)
            scale = stats[1] if stats is not None else mu.detach().std(dim=(0, 2, 3), keepdim=True)
            u = torch.rand(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype) - 0.5
            z = mu + u * quant_step * scale
        else:
            z = post.sample(generator=generator) if sample_posterior else post.mode()
        return AutoencoderOutput(self._decode_normalized(z), post)

    def decoder_modules(self) -> list[torch.nn.Module]:
        """The modules that turn latents into fields: what an archive must ship to read
        latents, and what the decoder stage trains."""
        return [m for m in (self.vae.decoder, self.vae.post_quant_conv) if m is not None]

    def train_decoder_only(self) -> None:
        """Freeze every parameter but the decoder's (``requires_grad``): the decoder stage."""
        self.requires_grad_(False)
        for m in self.decoder_modules():
            m.requires_grad_(True)

    def decoder_nbytes(self) -> int:
        """Bytes of the decoder weights in float32 (what an archive must ship to read latents)."""
        return sum(p.numel() * 4 for m in self.decoder_modules() for p in m.parameters())
