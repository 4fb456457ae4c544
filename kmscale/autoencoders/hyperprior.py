"""Mean-scale hyperprior codec on the 12 HEALPix base faces.

Minnen, Ballé, Toderici, "Joint autoregressive and hierarchical priors for learned image
compression", NeurIPS 2018 (the mean-scale hyperprior, without the context model), after
Ballé et al., "Variational image compression with a scale hyperprior", ICLR 2018; the
transforms run on the base faces with neighbour-correct padding
(:class:`kmscale.sphere.FaceConv2d`), so there are no seams at face edges::

    x (B, C, npix) standardized, nested ─ to_faces ─► (B, C, 12, n, n)
      g_a: [FaceConv2d stride 2, GELU] x levels            ─► y (B, M, 12, n/2^L, n/2^L)
      h_a: FaceConv2d, GELU, [FaceConv2d stride 2, GELU]    ─► z (B, N, 12, n/2^(L+H), ...)
      z_hat = Q(z) ~ EntropyBottleneck (factorized)
      h_s: [FaceUpsample, GELU] x H, FaceConv2d             ─► (mu, sigma) of y
      y_hat = Q(y - mu) + mu ~ GaussianConditional(mu, sigma)
      g_s: [FaceUpsample, GELU] x levels, FaceConv2d        ─► x_hat (B, C, 12, n, n)

GELU stands in for GDN: the faces are small and the training budget short, and GELU
trained as well in our runs. Training minimizes R + lambda D (Ballé 2018, eq. 2):
R = -sum log2 p(y_hat) - sum log2 p(z_hat) in bits per input value, D the mean squared
error of the standardized field (:func:`rate_distortion_loss`).

As an :class:`Autoencoder` (``spatial_dims`` = 1), ``encode`` gives the continuous y on
the nested latent grid (npix / 4^L cells) and ``decode`` runs g_s; ``compress`` /
``decompress`` give bytes through the two entropy models (:mod:`kmscale.codecs`).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from kmscale.autoencoders.base import Autoencoder, AutoencoderOutput
from kmscale.autoencoders.healpix_model import HealpixAutoencoder
from kmscale.autoencoders.registration import register
from kmscale.codecs.entropy_models import EntropyBottleneck, GaussianConditional, bits
from kmscale.errors import ConfigError, CorruptFileError, SchemaError
from kmscale.sphere import FaceConv2d, FaceUpsample, check_nside, from_faces, to_faces

_HEAD = struct.Struct("<IId")  # length of the z string, CRC-32 of the scale indexes, step


@dataclass
class HyperpriorOutput(AutoencoderOutput):
    """What ``forward`` returns: the standardized reconstruction ``sample`` (B, C, npix)
    and the likelihoods the rate is computed from."""

    # "y": (B, M, ...), "z": (B, N, ...)
    likelihoods: dict[str, torch.Tensor] = field(default_factory=dict)


def _down(ch_in: int, ch_out: int) -> list[nn.Module]:
    return [FaceConv2d(ch_in, ch_out, 3, stride=2), nn.GELU()]


@register("hyperprior")
class HyperpriorAutoencoder(HealpixAutoencoder):
    """Mean-scale hyperprior codec for global HEALPix fields (nested, any power-of-two nside
    of at least 2^(levels + hyper_levels))."""

    @register_to_config
    def __init__(
        self,
        variables: Sequence[str] = ("t2m",),  # physical variables, in channel order
        input_stats: dict | None = None,  # per-variable transform/mean/std (kmscale.data.stats)
        latent_mean: list[float] | None = None,  # per-channel latent normalization
        latent_std: list[float] | None = None,
        nside: int = 64,  # HEALPix resolution of the fields
        channels: int = 48,  # N: width of the transforms and of z
        latent_channels: int = 32,  # M: channels of y
        levels: int = 3,  # stride-2 steps of g_a (y has nside / 2^levels per face side)
        hyper_levels: int = 2,  # stride-2 steps of h_a
    ):
        super().__init__()
        check_nside(nside)
        if nside < 2 ** (levels + hyper_levels):
            raise ConfigError(
                f"hyperprior: expected nside >= 2^(levels + hyper_levels) = "
                f"{2 ** (levels + hyper_levels)}, found nside {nside}"
            )
        c, n, m = len(variables), channels, latent_channels
        g_a = _down(c, n)
        for i in range(1, levels):
            g_a += _down(n, n) if i < levels - 1 else [FaceConv2d(n, m, 3, stride=2)]
        if levels == 1:
            g_a = [FaceConv2d(c, m, 3, stride=2)]
        self.g_a = nn.Sequential(*g_a)
        g_s = []
        for i in range(levels):
            g_s += [FaceUpsample(m if i == 0 else n, n), nn.GELU()]
        self.g_s = nn.Sequential(*g_s, FaceConv2d(n, c, 3))
        h_a = [FaceConv2d(m, n, 3), nn.GELU()]
        for i in range(hyper_levels):
            h_a += _down(n, n) if i < hyper_levels - 1 else [FaceConv2d(n, n, 3, stride=2)]
        self.h_a = nn.Sequential(*h_a)
        h_s = []
        for _ in range(hyper_levels):
            h_s += [FaceUpsample(n, n), nn.GELU()]
        self.h_s = nn.Sequential(*h_s, FaceConv2d(n, 2 * m, 3))
        self.entropy_bottleneck = EntropyBottleneck(n)
        self.gaussian_conditional = GaussianConditional()
        # standardized per-cell mean (e.g. of the training fields), removed before g_a and
        # restored after g_s; zero unless set_field_mean is called
        self.register_buffer("field_mean", torch.zeros(c, 12 * nside**2))

    def set_field_mean(self, mean: torch.Tensor) -> None:
        """Record a per-cell mean field (C, npix) in physical units (NaN-free)."""
        mean = torch.as_tensor(mean, dtype=torch.float32)
        if mean.shape != self.field_mean.shape or not torch.isfinite(mean).all():
            raise SchemaError(
                f"hyperprior field mean: expected finite values of shape "
                f"{tuple(self.field_mean.shape)}, found {tuple(mean.shape)}"
            )
        self.field_mean.copy_(Autoencoder.normalize_input(self, mean[None])[0])

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Physical -> standardized anomaly from the field mean; masked points become 0."""
        z = super().normalize_input(x) - self.field_mean.to(x.device)
        return torch.where(torch.isnan(x), torch.zeros_like(z), z)

    def denormalize_output(self, y: torch.Tensor) -> torch.Tensor:
        return super().denormalize_output(y + self.field_mean.to(y.device))

    # ---- Autoencoder contract (grid and level checks: HealpixAutoencoder) --------
    def _encode_normalized(self, x: torch.Tensor) -> torch.Tensor:
        return from_faces(self.g_a(to_faces(x)))

    def _decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        return from_faces(self.g_s(to_faces(z)))

    def decoder_modules(self) -> list[nn.Module]:
        return [self.g_s, self.h_s, self.entropy_bottleneck, self.gaussian_conditional]

    def decoder_nbytes(self) -> int:
        """Bytes of everything a decoder needs (weights and integer tables)."""
        return sum(
            t.numel() * t.element_size()
            for mod in self.decoder_modules()
            for t in list(mod.parameters()) + list(mod.buffers())
        )

    # ---- training ---------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> HyperpriorOutput:
        """Standardized x (B, C, npix) -> reconstruction and likelihoods (noise in training,
        rounding in eval)."""
        y = self.g_a(to_faces(x))
        z = self.h_a(y)
        z_hat, z_like = self.entropy_bottleneck(z)
        scales, means = self.h_s(z_hat).chunk(2, dim=1)
        y_hat, y_like = self.gaussian_conditional(y, scales, means)
        return HyperpriorOutput(from_faces(self.g_s(y_hat)), likelihoods={"y": y_like, "z": z_like})

    def update(self) -> None:
        """Fill the entropy bottleneck's integer tables (after training, before saving)."""
        self.entropy_bottleneck.update()

    # ---- bytes --------------------------------------------------------------------
    def _hyper(self, z_hat: torch.Tensor, step: float) -> tuple[torch.Tensor, torch.Tensor]:
        """z_hat -> (scale table indexes, means) of y / step."""
        scales, means = self.h_s(z_hat).chunk(2, dim=1)
        return self.gaussian_conditional.build_indexes(scales / step), means / step

    def compress(self, x: torch.Tensor, step: float | None = None) -> list[bytes]:
        """Physical fields (B, C, npix) -> one byte string per field:
        ``u32 len(z) | u32 CRC-32(indexes) | f64 step | z string | y string``.

        ``step`` (default 1, the training bin) quantizes y / step instead of y: a smaller
        step spends more bits for less distortion with the same weights (a variable-rate
        gain, cf. Cui et al., "Asymmetric gained deep image compression", CVPR 2021)."""
        self.check_input(x)
        step = 1.0 if step is None else float(step)
        if not step > 0:
            raise ConfigError(f"hyperprior.compress: expected a step > 0, found {step}")
        with torch.no_grad():
            y = self.g_a(to_faces(self.normalize_input(x)))
            z = self.h_a(y)
            z_strings = self.entropy_bottleneck.compress(z)
            z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[2:])
            indexes, means = self._hyper(z_hat, step)
            y_strings = self.gaussian_conditional.compress(y / step, indexes, means)
        return [
            _HEAD.pack(len(zs), _crc(i), step) + zs + ys
            for zs, ys, i in zip(z_strings, y_strings, indexes, strict=True)
        ]

    def decompress(self, strings: Sequence[bytes], spatial_shape: Sequence[int]) -> torch.Tensor:
        """Byte strings from :meth:`compress` -> physical fields (B, C, npix).

        The scale indexes recomputed here from z_hat are checked against the encoder's
        CRC-32: a hyper-decoder that rounds differently on this machine is reported
        instead of silently desynchronising the range decoder."""
        self.latent_shape(spatial_shape)
        f = self.config.nside // 2 ** (self.config.levels + self.config.hyper_levels)
        out = []
        with torch.no_grad():
            for s in strings:
                n, crc, step = _HEAD.unpack_from(s)
                z_end = _HEAD.size + n
                z_hat = self.entropy_bottleneck.decompress([s[_HEAD.size : z_end]], (12, f, f))
                indexes, means = self._hyper(z_hat, step)
                if _crc(indexes[0]) != crc:
                    raise CorruptFileError(
                        "hyperprior: the scale indexes recomputed from z differ "
                        "from the encoder's (corrupt stream, or a hyper-decoder "
                        "that is not reproducible here)"
                    )
                y_hat = step * self.gaussian_conditional.decompress([s[z_end:]], indexes, means)
                out.append(self.denormalize_output(from_faces(self.g_s(y_hat))))
        return torch.cat(out)


def _crc(indexes: torch.Tensor) -> int:
    return zlib.crc32(np.ascontiguousarray(indexes.cpu().numpy().astype("<i2")).tobytes())


def rate_distortion_loss(out: HyperpriorOutput, x: torch.Tensor, lmbda: float) -> dict:
    """L = R + lambda D (Ballé 2018, eq. 2); R in bits per input value, D the MSE of the
    standardized field. Returns the loss and both terms."""
    rate = sum(bits(like) for like in out.likelihoods.values()) / x.numel()
    mse = torch.mean((out.sample - x) ** 2)
    return {"loss": rate + lmbda * mse, "bpv": rate, "mse": mse}


def fit_hyperprior(
    model: HyperpriorAutoencoder,
    fields: torch.Tensor,
    *,
    lmbda: float,
    steps: int,
    batch_size: int = 4,
    lr: float = 1e-3,
    aux_lr: float = 1e-2,
    seed: int = 0,
    callback: Callable[[int], None] | None = None,
    callback_every: int = 0,
) -> list[float]:
    """Train on standardized fields (T, C, npix) for ``steps`` Adam steps of R + lambda D,
    with the entropy bottleneck's quantiles on their own optimizer (CompressAI's auxiliary
    loss); then fill the integer tables. Returns the loss per step.

    ``callback(step)`` runs every ``callback_every`` steps and after the last, with the
    model in eval mode and its tables filled (e.g. to score a validation split).

    A loop of its own rather than :mod:`kmscale.autoencoders.train`: the objective has the
    rate term and the auxiliary quantile loss that the VAE loop does not know."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    main = [p for n, p in model.named_parameters() if not n.endswith("quantiles")]
    opt = torch.optim.Adam(main, lr=lr)
    aux = torch.optim.Adam([model.entropy_bottleneck.quantiles], lr=aux_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    history = []
    for _ in range(steps):
        idx = torch.randint(0, fields.shape[0], (batch_size,), generator=g)
        x = fields[idx]
        terms = rate_distortion_loss(model(x), x, lmbda)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        sched.step()
        aux.zero_grad()
        model.entropy_bottleneck.loss().backward()
        aux.step()
        history.append(float(terms["loss"].detach()))
        done = len(history)
        if callback is not None and done < steps and callback_every and done % callback_every == 0:
            model.eval()
            model.update()
            callback(done)
            model.train()
    model.eval()
    model.update()
    if callback is not None:
        callback(steps)
    return history
