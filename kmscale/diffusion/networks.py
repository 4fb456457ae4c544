"""The U-Net backbone shared by the regression model and the diffusion denoiser.

:class:`ConditionalUNet` is a thin wrapper over diffusers ``UNet2DModel`` giving it the
backbone signature the EDM wrapper expects::

    F(x_in (B, C_in, H, W), c_noise (B,), emb (B, E) | None) -> (B, C_out, H, W)

What it adds to ``UNet2DModel``:

* any grid size: H and W are padded (edge replication) up to a multiple of
  2**(levels - 1), the total down-sampling of the U-Net, and the output is cropped back,
  so 8 x 12 or 33 x 49 grids work;
* an optional embedding vector ``emb`` (lead time, time of day, ...): a two-layer MLP
  maps it to the time-embedding width and ``UNet2DModel``'s ``class_embed_type="identity"``
  adds it to the noise embedding, which conditions every residual block;
* configuration by levels: ``block_out_channels`` (one entry per level),
  ``attention_levels`` (which levels carry self-attention), ``norm_num_groups``.

The noise level enters through ``UNet2DModel``'s sinusoidal ("positional") timestep
embedding of ``c_noise`` (EDM's ln(σ)/4, as NVlabs/edm feeds its positional embedding);
the regression U-Net passes a constant ``c_noise`` (see :meth:`ConditionalUNet.regress`).

:class:`CrossAttentionUNet` (diffusers ``UNet2DConditionModel``) is the optional
cross-attention variant with the same signature: it also reads the conditioning channels
as tokens through cross-attention, so it drops into ``EDMPrecond`` unchanged.

The constructor arguments are the config (diffusers ``ConfigMixin``), saved next to the
weights by ``save_pretrained`` and restored by ``<Class>.from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F_nn
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel, UNet2DModel
from diffusers.configuration_utils import register_to_config
from torch import nn

from kmscale.errors import ConfigError, GridError, describe


@dataclass
class UNetSettings:
    """Width and depth of a U-Net backbone (in/out channels come from the data); the
    defaults of :class:`ConditionalUNet` and :class:`CrossAttentionUNet` are these."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    layers_per_block: int = 1
    attention_levels: list[bool] | None = None  # None: attention at the coarsest level only
    mid_attention: bool = True
    norm_num_groups: int = 8
    attention_head_dim: int = 8
    dropout: float = 0.0


TERRAIN_MODULATORS = ("h", "dh_dx", "dh_dy", "dh_dx^2", "dh_dy^2", "dh_dx*dh_dy", "|grad h|")


class LinearSkip(nn.Conv2d):
    """Per-pixel linear map ``A x + b``, optionally with terrain-modulated coefficients.

    With ``terrain_channel`` (the input channel holding the elevation) and ``dynamic``
    (the channels whose coefficients may vary with terrain: the predictors), the map is
    ``A x + Σ_k B_k (x_D ⊙ m_k) + b`` with the modulators ``m`` of
    :data:`TERRAIN_MODULATORS`: the elevation, its centred finite-difference slopes along
    the grid and their second-order products. A coefficient that varies linearly with
    slope and aspect is what the km-scale response to a coarse flow needs: deflection along
    the contours and channelling are products of the flow with the slope components,
    forced ascent (orographic rain) the flow dotted with the slope, lapse-rate corrections
    the elevation itself. Without ``terrain_channel`` it is a 1 x 1 convolution (the
    parameters are those of the 1 x 1 convolution over :meth:`features`, so a plain skip's
    checkpoint keys are those of ``nn.Conv2d``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        terrain_channel: int | None = None,
        dynamic: Sequence[int] = (),
    ) -> None:
        dynamic = [int(c) for c in dynamic] if terrain_channel is not None else []
        bad = [c for c in [*dynamic, terrain_channel] if c is not None]
        bad = [c for c in bad if not 0 <= c < in_channels]
        if bad:
            raise ConfigError(
                describe(
                    f"skip channels within the {in_channels} input channels",
                    bad,
                    where="LinearSkip",
                )
            )
        super().__init__(in_channels + len(dynamic) * len(TERRAIN_MODULATORS), out_channels, 1)
        self.terrain_channel = terrain_channel
        self.dynamic = dynamic

    def modulators(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) terrain modulators from the elevation channel (edge-replicated)."""
        h = x[:, self.terrain_channel : self.terrain_channel + 1]
        hp = F_nn.pad(h, (1, 1, 1, 1), mode="replicate")
        dx = 0.5 * (hp[..., 1:-1, 2:] - hp[..., 1:-1, :-2])
        dy = 0.5 * (hp[..., 2:, 1:-1] - hp[..., :-2, 1:-1])
        return torch.cat([h, dx, dy, dx * dx, dy * dy, dx * dy, torch.sqrt(dx * dx + dy * dy)], 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_features, H, W): the inputs, then each dynamic channel times each
        modulator (channel-major)."""
        if not self.dynamic:
            return x
        m = self.modulators(x)
        d = x[:, self.dynamic]
        prod = d[:, :, None] * m[:, None]  # (B, D, K, H, W)
        return torch.cat([x, prod.flatten(1, 2)], 1)

    def expand(self, channels: Sequence[int]) -> list[int]:
        """Feature indices that belong to input ``channels``: the channels themselves and
        the products of those among them that are dynamic."""
        k = len(TERRAIN_MODULATORS)
        base = self.in_channels - len(self.dynamic) * k
        out = list(channels)
        for i, c in enumerate(self.dynamic):
            if c in channels:
                out += range(base + i * k, base + (i + 1) * k)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.features(x))


def _pad(
    x: torch.Tensor, multiple: int, mode: str
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad (B, C, H, W) on all sides up to a multiple of ``multiple``; returns the padding
    (left, right, top, bottom) for :func:`_crop`."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    if ph or pw:
        if mode == "reflect" and (ph >= H or pw >= W):
            mode = "replicate"  # reflection cannot pad by more than the field size
        x = F_nn.pad(x, pad, mode=mode)
    return x, pad


def _crop(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = pad
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


PAD_MODES = ("replicate", "reflect", "constant")


def _widths(model: ConfigMixin, block_out_channels: Sequence[int] | None) -> tuple[int, ...]:
    """The level widths (``UNetSettings``' when None), recorded in the model's config."""
    widths = tuple(int(c) for c in (block_out_channels or UNetSettings().block_out_channels))
    model.register_to_config(block_out_channels=widths)  # the config names them
    return widths


def _level_flags(
    flags: Sequence[bool] | None, default: Sequence[bool], name: str, where: str
) -> tuple[bool, ...]:
    """One bool per U-Net level (``default`` when None); a clear error on another count."""
    out = tuple(bool(a) for a in (default if flags is None else flags))
    if len(out) != len(default):
        raise ConfigError(
            describe(
                f"{len(default)} {name} (one per block_out_channels entry)", len(out), where=where
            )
        )
    return out


def _noise_vector(
    x_in: torch.Tensor, c_noise: torch.Tensor | float, in_channels: int, where: str
) -> torch.Tensor:
    """Check the input is (B, in_channels, H, W); returns c_noise as a float32 (B,) vector."""
    if x_in.ndim != 4 or x_in.shape[1] != in_channels:
        raise GridError(describe(f"input (B, {in_channels}, H, W)", tuple(x_in.shape), where=where))
    c = torch.as_tensor(c_noise, dtype=torch.float32, device=x_in.device)
    return c.reshape(-1).expand(x_in.shape[0])


def _check_pad_mode(pad_mode: str, where: str) -> None:
    if pad_mode not in PAD_MODES:
        raise ConfigError(describe(f"pad_mode in {PAD_MODES}", repr(pad_mode), where=where))


def _check_widths(widths: Sequence[int], where: str, **divisors: int) -> None:
    """Every level width divisible by each named divisor (GroupNorm groups, attention heads)."""
    if any(c % d for c in widths for d in divisors.values()):
        named = " and ".join(f"{k}={v}" for k, v in divisors.items())
        raise ConfigError(describe(f"block_out_channels divisible by {named}", widths, where=where))


def _check_embedding(emb: torch.Tensor | None, batch: int, dim: int | None, where: str) -> None:
    """``emb`` must be (batch, dim) when the model has an embedding (dim), else None."""
    if bool(dim) != (emb is not None) or (emb is not None and tuple(emb.shape) != (batch, dim)):
        raise GridError(
            describe(
                f"emb shaped ({batch}, {dim})"
                if dim
                else "emb=None (model built without embedding_dim)",
                None if emb is None else tuple(emb.shape),
                where=where,
            )
        )


class _PaddedUNet(ModelMixin, ConfigMixin):
    """What the two U-Nets share: a diffusers config and padding of H, W to the U-Net's
    total down-sampling."""

    config_name = "config.json"
    _supports_gradient_checkpointing = True

    @property
    def pad_multiple(self) -> int:
        """H and W are padded to a multiple of this (the U-Net's total down-sampling)."""
        return 2 ** (len(self.config.block_out_channels) - 1)


class ConditionalUNet(_PaddedUNet):
    """U-Net backbone ``F(x_in, c_noise, emb)`` on diffusers ``UNet2DModel``.

    Args:
        in_channels: C_in, all input channels (for the denoiser: the noisy residual
            channels plus every conditioning channel).
        out_channels: C_out (for the denoiser: the residual channels).
        block_out_channels: width of each level, finest first; the U-Net down-samples
            by 2 between consecutive levels.
        layers_per_block: residual blocks per level.
        attention_levels: one bool per level, True where the level has self-attention.
            Defaults to attention at the coarsest level only.
        mid_attention: self-attention in the bottleneck.
        norm_num_groups: GroupNorm groups; must divide every entry of block_out_channels.
        attention_head_dim: channels per attention head.
        embedding_dim: E, length of the optional embedding vector; None for no embedding.
        dropout: dropout in the residual blocks.
        pad_mode: how H, W are padded to a multiple of 2**(levels-1) ("replicate",
            "reflect", "constant").
        linear_skip: add a per-pixel affine map of the input, ``F(x) = U(x) + A x + b``,
            with the U-Net's output layer zero at initialisation, so that the model starts
            as the linear map (fitted by :func:`kmscale.diffusion.regression.fit_linear_skip`)
            and the U-Net learns the non-linear correction. For the regression, whose input
            holds the interpolated predictors and the static fields, this makes the starting
            point a linear downscaling (interpolation with terrain terms), not zero.
        skip_terrain_channel, skip_dynamic_channels: terrain-modulated skip coefficients
            (see :class:`LinearSkip`): the elevation input channel and the channels whose
            coefficients vary with it. None: a plain 1 x 1 map.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int] | None = None,  # None: UNetSettings'
        layers_per_block: int = UNetSettings.layers_per_block,
        attention_levels: Sequence[bool] | None = UNetSettings.attention_levels,
        mid_attention: bool = UNetSettings.mid_attention,
        norm_num_groups: int = UNetSettings.norm_num_groups,
        attention_head_dim: int = UNetSettings.attention_head_dim,
        embedding_dim: int | None = None,
        dropout: float = UNetSettings.dropout,
        pad_mode: str = "replicate",
        linear_skip: bool = False,
        skip_terrain_channel: int | None = None,
        skip_dynamic_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        block_out_channels = _widths(self, block_out_channels)
        levels = len(block_out_channels)
        if levels < 1 or in_channels < 1 or out_channels < 1:
            raise ConfigError(
                describe(
                    "at least one level and positive channel counts",
                    (in_channels, out_channels, block_out_channels),
                    where="ConditionalUNet",
                )
            )
        attention_levels = _level_flags(
            attention_levels,
            [i == levels - 1 for i in range(levels)],
            "attention_levels",
            "ConditionalUNet",
        )
        _check_widths(block_out_channels, "ConditionalUNet", norm_num_groups=norm_num_groups)
        _check_pad_mode(pad_mode, "ConditionalUNet")
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels))
        self.unet = UNet2DModel(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            attention_head_dim=attention_head_dim,
            add_attention=mid_attention,
            dropout=dropout,
            time_embedding_type="positional",
            flip_sin_to_cos=True,
            freq_shift=0,
            # The embedding vector, mapped by emb_proj below, is added to the noise embedding.
            class_embed_type="identity" if embedding_dim else None,
        )
        time_embed_dim = block_out_channels[0] * 4  # UNet2DModel's time-embedding width
        self.emb_proj = (
            nn.Sequential(
                nn.Linear(embedding_dim, time_embed_dim),
                nn.SiLU(),
                nn.Linear(time_embed_dim, time_embed_dim),
            )
            if embedding_dim
            else None
        )
        self.skip = (
            LinearSkip(in_channels, out_channels, skip_terrain_channel, skip_dynamic_channels or ())
            if linear_skip
            else None
        )
        if linear_skip:  # zero output layer: the model starts as the linear map (ControlNet)
            nn.init.zeros_(self.unet.conv_out.weight)
            nn.init.zeros_(self.unet.conv_out.bias)

    def forward(
        self,
        x_in: torch.Tensor,
        c_noise: torch.Tensor | float,
        emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            x_in: (B, C_in, H, W), any H, W >= 1.
            c_noise: noise conditioning (B,) or a scalar (EDM: ln(σ)/4).
            emb: (B, E) embedding vectors, required iff the model was built with embedding_dim.

        Returns:
            (B, C_out, H, W).
        """
        c_noise = _noise_vector(x_in, c_noise, self.config.in_channels, "ConditionalUNet")
        _check_embedding(emb, x_in.shape[0], self.config.embedding_dim, "ConditionalUNet")
        class_labels = None
        if self.emb_proj is not None:
            class_labels = self.emb_proj(emb.to(self.emb_proj[0].weight.dtype))
        x_pad, pad = _pad(x_in, self.pad_multiple, self.config.pad_mode)
        out = _crop(self.unet(x_pad.to(self.dtype), c_noise, class_labels=class_labels).sample, pad)
        if self.skip is not None:
            out = out + self.skip(x_in.to(self.dtype))
        return out

    def regress(self, x_in: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """Deterministic use (regression U-Net): ``F(x_in, c_noise=0, emb)``."""
        return self(x_in, 0.0, emb)


def _sincos_2d(h: int, w: int, dim: int, device: torch.device) -> torch.Tensor:
    """Fixed 2-D sine/cosine position code of an h x w token grid, (h * w, dim).

    Coordinates are normalized to [0, 1] so the code means "where in the domain"
    whatever the grid size (a model trained on patches sees consistent positions).
    """
    quarter = dim // 4
    freqs = torch.pi * 2.0 ** torch.arange(
        quarter, device=device, dtype=torch.float32
    )  # pi, 2pi, 4pi, ...
    ys = torch.linspace(0, 1, h, device=device) if h > 1 else torch.zeros(1, device=device)
    xs = torch.linspace(0, 1, w, device=device) if w > 1 else torch.zeros(1, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    ay, ax = gy.reshape(-1, 1) * freqs, gx.reshape(-1, 1) * freqs
    code = torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1)
    return F_nn.pad(code, (0, dim - code.shape[1]))


class CrossAttentionUNet(_PaddedUNet):
    """Backbone with the same signature as :class:`ConditionalUNet` that ALSO reads the
    conditioning through cross-attention (diffusers ``UNet2DConditionModel``).

    The last ``cond_channels`` input channels (the conditioning that
    :class:`~kmscale.diffusion.edm.EDMPrecond` concatenates after c_in scaling) are cut
    into ``token_patch`` x ``token_patch`` patches, embedded by a strided convolution plus
    a fixed 2-D position code, and attended to from the U-Net's cross-attention levels.
    With ``concat_cond`` they are also kept as input channels (concatenation stays the
    default conditioning path; cross-attention adds non-local access to it).

    Args:
        in_channels: all input channels, sample channels first, then cond_channels.
        out_channels: output channels.
        cond_channels: how many trailing input channels are conditioning (> 0).
        concat_cond: also feed the conditioning channels to the U-Net input.
        token_patch: side of the conditioning patches that become tokens.
        cross_attention_dim: token width.
        block_out_channels, layers_per_block, norm_num_groups, embedding_dim, dropout,
            pad_mode: as in :class:`ConditionalUNet`.
        cross_attention_levels: one bool per level, True where the level cross-attends
            (default: all but the finest). The bottleneck always does.
        attention_heads: heads of every attention layer.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_channels: int,
        concat_cond: bool = True,
        token_patch: int = 4,
        cross_attention_dim: int = 64,
        block_out_channels: Sequence[int] | None = None,  # None: UNetSettings'
        layers_per_block: int = UNetSettings.layers_per_block,
        cross_attention_levels: Sequence[bool] | None = None,
        norm_num_groups: int = UNetSettings.norm_num_groups,
        attention_heads: int = 4,
        embedding_dim: int | None = None,
        dropout: float = UNetSettings.dropout,
        pad_mode: str = "replicate",
    ) -> None:
        super().__init__()
        block_out_channels = _widths(self, block_out_channels)
        levels = len(block_out_channels)
        if not 0 < cond_channels < in_channels:
            raise ConfigError(
                describe(
                    f"0 < cond_channels < in_channels={in_channels}",
                    cond_channels,
                    where="CrossAttentionUNet",
                )
            )
        cross_attention_levels = _level_flags(
            cross_attention_levels,
            [i > 0 or levels == 1 for i in range(levels)],
            "cross_attention_levels",
            "CrossAttentionUNet",
        )
        _check_widths(
            block_out_channels,
            "CrossAttentionUNet",
            norm_num_groups=norm_num_groups,
            attention_heads=attention_heads,
        )
        _check_pad_mode(pad_mode, "CrossAttentionUNet")
        unet_in = in_channels if concat_cond else in_channels - cond_channels
        self.unet = UNet2DConditionModel(
            in_channels=unet_in,
            out_channels=out_channels,
            down_block_types=tuple(
                "CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cross_attention_levels
            ),
            up_block_types=tuple(
                "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cross_attention_levels)
            ),
            mid_block_type="UNetMidBlock2DCrossAttn",
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            cross_attention_dim=cross_attention_dim,
            # diffusers' legacy name: this is the number of heads
            attention_head_dim=attention_heads,
            dropout=dropout,
            # The embedding vector goes through diffusers' own MLP and is added to the noise
            # embedding.
            class_embed_type="projection" if embedding_dim else None,
            projection_class_embeddings_input_dim=embedding_dim or None,
        )
        self.tokenizer = nn.Conv2d(
            cond_channels, cross_attention_dim, token_patch, stride=token_patch
        )
        self.token_norm = nn.LayerNorm(cross_attention_dim)

    def tokens(self, cond: torch.Tensor) -> torch.Tensor:
        """Conditioning (B, C_cond, H, W) -> tokens (B, N, cross_attention_dim)."""
        cond, _ = _pad(cond, self.config.token_patch, "replicate")
        t = self.tokenizer(cond.to(self.tokenizer.weight.dtype))  # (B, D, h, w)
        B, D, h, w = t.shape
        t = t.flatten(2).transpose(1, 2) + _sincos_2d(h, w, D, t.device).to(t.dtype)
        return self.token_norm(t)

    def forward(
        self, x_in: torch.Tensor, c_noise: torch.Tensor | float, emb: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Same contract as :meth:`ConditionalUNet.forward`."""
        cfg = self.config
        c_noise = _noise_vector(x_in, c_noise, cfg.in_channels, "CrossAttentionUNet")
        _check_embedding(emb, x_in.shape[0], cfg.embedding_dim, "CrossAttentionUNet")
        cond = x_in[:, cfg.in_channels - cfg.cond_channels :]
        tokens = self.tokens(cond)
        sample = x_in if cfg.concat_cond else x_in[:, : cfg.in_channels - cfg.cond_channels]
        sample, pad = _pad(sample, self.pad_multiple, cfg.pad_mode)
        out = self.unet(
            sample.to(self.dtype),
            c_noise,
            encoder_hidden_states=tokens,
            class_labels=None if emb is None else emb.to(self.dtype),
        ).sample
        return _crop(out, pad)
