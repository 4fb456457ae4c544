"""Entropy models for learned compression, after CompressAI's maths (Ballé et al. 2018).

Two priors over quantized latents, each with a differentiable ``forward`` for training
(additive uniform noise stands in for rounding; returns the likelihoods whose
-log2 sum is the rate in bits) and ``compress``/``decompress`` to real bytes through
integer frequency tables (:mod:`kmscale.codecs.coding`):

- :class:`EntropyBottleneck`: a factorized (per-channel, i.i.d.) density for the
  hyper-latents z. Its cumulative c(z) is a small monotone network of softplus matrices,
  biases and tanh gates, "Variational image compression with a scale hyperprior",
  Ballé, Minnen, Singh, Hwang, Johnston, ICLR 2018, appendix 6.1:

      p(z_hat) = sigmoid(c(z_hat + 1/2)) - sigmoid(c(z_hat - 1/2)).

- :class:`GaussianConditional`: y_hat ~ N(mu, sigma^2) convolved with U(-1/2, 1/2), with
  mu and sigma predicted by a hyper-decoder (Minnen, Ballé, Toderici, "Joint
  autoregressive and hierarchical priors for learned image compression", NeurIPS 2018,
  eq. 4 without the context model):

      p(y_hat | mu, sigma) = Phi((y_hat - mu + 1/2) / sigma) - Phi((y_hat - mu - 1/2) / sigma).

  For coding, sigma is replaced by the index of the smallest entry of a fixed scale table
  that is >= sigma (:meth:`GaussianConditional.build_indexes`), and the probabilities come
  from integer tables computed once per table entry: the coder never sees a float that
  the hyper-decoder produced, only an integer index.

Every table is a persistent buffer of fixed shape, saved with the weights, so a decoder
elsewhere reads the encoder's integers instead of recomputing them with its own float
library. Call ``update()`` after training (and before saving) to fill them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import ndtr, ndtri
from torch import nn

from kmscale.codecs import coding
from kmscale.errors import ConfigError, SchemaError


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows where it pushes x up (CompressAI's
    ``LowerBound``): a likelihood clipped at the bound keeps learning."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        pass_through = (x >= ctx.bound) | (grad < 0)
        return grad * pass_through.to(grad.dtype), None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    """max(x, bound) with CompressAI's straight-through gradient."""
    return _LowerBound.apply(x, bound)


def noisy_or_rounded(x: torch.Tensor, means: torch.Tensor | None, training: bool) -> torch.Tensor:
    """Training: x + U(-1/2, 1/2); inference: round(x - mu) + mu (mu = 0 when None)."""
    if training:
        return x + torch.empty_like(x).uniform_(-0.5, 0.5)
    if means is None:
        return torch.round(x)
    return torch.round(x - means) + means


def bits(likelihoods: torch.Tensor) -> torch.Tensor:
    """Rate in bits: -sum log2 p."""
    return -torch.log2(likelihoods).sum()


class EntropyBottleneck(nn.Module):
    """Factorized prior for z (B, C, *spatial); one learned density per channel."""

    def __init__(
        self,
        channels: int,  # C
        filters: Sequence[int] = (3, 3, 3, 3),  # widths of the cumulative-logits network
        init_scale: float = 10.0,  # initial spread of the density (latent units)
        tail_mass: float = 1e-9,  # mass outside [quantile_lo, quantile_hi], escaped in coding
        likelihood_bound: float = 1e-9,  # floor of the likelihood in the rate
        max_symbols: int = 256,  # table length per channel; symbols beyond it are escaped
    ):
        super().__init__()
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        self.tail_mass = float(tail_mass)
        self.likelihood_bound = float(likelihood_bound)
        dims = (1,) + self.filters + (1,)
        scale = init_scale ** (1 / (len(self.filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(self.filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(
                nn.Parameter(torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5))
            )
            if i < len(self.filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        # quantiles[:, 0, :] = (lower tail, median, upper tail), learned by loss()
        init_q = torch.tensor([-init_scale, 0.0, init_scale])
        self.quantiles = nn.Parameter(init_q.repeat(channels, 1, 1))
        target = math.log(2 / self.tail_mass - 1)
        self.register_buffer("target", torch.tensor([-target, 0.0, target]))
        self.register_buffer("freqs", torch.zeros(channels, max_symbols + 1, dtype=torch.int32))
        self.register_buffer("offsets", torch.zeros(channels, dtype=torch.int32))
        self.register_buffer("lengths", torch.zeros(channels, dtype=torch.int32))

    @property
    def max_symbols(self) -> int:
        return self.freqs.shape[1] - 1

    def medians(self) -> torch.Tensor:
        """(C,) median of each channel's density."""
        return self.quantiles[:, 0, 1]

    def _logits_cumulative(self, x: torch.Tensor, stop_gradient: bool) -> torch.Tensor:
        """c(x) for x (C, 1, N) -> (C, 1, N); monotone in x (softplus weights)."""
        logits = x
        for i, matrix in enumerate(self.matrices):
            bias = self.biases[i]
            if stop_gradient:
                matrix, bias = matrix.detach(), bias.detach()
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self.factors):
                factor = self.factors[i].detach() if stop_gradient else self.factors[i]
                logits = logits + torch.tanh(factor) * torch.tanh(logits)
        return logits

    def _likelihood(self, x: torch.Tensor, stop_gradient: bool = False):
        lower = self._logits_cumulative(x - 0.5, stop_gradient)
        upper = self._logits_cumulative(x + 0.5, stop_gradient)
        # sigmoid(u) - sigmoid(l), evaluated on the side of the median where it does not
        # cancel (the sign flip keeps tail probabilities accurate)
        sign = -torch.sign(lower + upper).detach()
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        like = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        return like, lower, upper

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, C, *spatial) -> (z_hat, likelihoods), both (B, C, *spatial)."""
        if z.ndim < 2 or z.shape[1] != self.channels:
            raise SchemaError(
                f"EntropyBottleneck: expected (batch, {self.channels}, ...), found {tuple(z.shape)}"
            )
        values = z.transpose(0, 1).reshape(self.channels, 1, -1)
        med = self.medians().detach().reshape(-1, 1, 1)
        out = noisy_or_rounded(values, med, self.training)
        like, _, _ = self._likelihood(out)
        like = lower_bound(like, self.likelihood_bound)
        shape = (self.channels, z.shape[0]) + tuple(z.shape[2:])
        return (
            out.reshape(shape).transpose(0, 1).contiguous(),
            like.reshape(shape).transpose(0, 1).contiguous(),
        )

    def loss(self) -> torch.Tensor:
        """Auxiliary loss: moves ``quantiles`` to c^-1 of the tail targets (the network's
        own weights are not touched by it)."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.target).sum()

    @torch.no_grad()
    def update(self) -> None:
        """Fill the integer tables from the current density (float64, once; CompressAI's
        ``EntropyBottleneck.update``). The table of channel c covers the integers from
        the lower to the upper tail quantile around its median, at most ``max_symbols``."""
        q = self.quantiles.detach().double()[:, 0, :]
        med = q[:, 1]
        minima = torch.clamp(torch.ceil(med - q[:, 0]), min=0).long()
        maxima = torch.clamp(torch.ceil(q[:, 2] - med), min=0).long()
        minima = minima.clamp(max=self.max_symbols // 2)
        maxima = torch.minimum(maxima, self.max_symbols - 1 - minima)
        lengths = minima + maxima + 1
        n_max = int(lengths.max())
        samples = (med - minima).reshape(-1, 1, 1) + torch.arange(n_max, dtype=torch.float64)
        like, lower, upper = copy.deepcopy(self).double()._likelihood(samples, stop_gradient=True)
        freqs = np.zeros(tuple(self.freqs.shape), dtype=np.int64)
        for c in range(self.channels):
            n = int(lengths[c])
            tail = float(torch.sigmoid(lower[c, 0, 0]) + torch.sigmoid(-upper[c, 0, n - 1]))
            freqs[c, : n + 1] = coding.pmf_to_freqs(like[c, 0, :n].numpy(), tail)
        self.freqs.copy_(torch.from_numpy(freqs).to(torch.int32))
        self.offsets.copy_((-minima).to(torch.int32))
        self.lengths.copy_(lengths.to(torch.int32))

    def _check_tables(self) -> None:
        if int(self.lengths.min()) <= 0:
            raise ConfigError(
                "EntropyBottleneck: integer tables are empty; call update() "
                "after training (and before save_pretrained)"
            )

    def symbols(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C, *spatial) -> integers round(z - median) (int64)."""
        med = self.medians().detach().reshape((1, -1) + (1,) * (z.ndim - 2))
        return torch.round(z - med).long()

    def compress(self, z: torch.Tensor) -> list[bytes]:
        """z (B, C, *spatial) -> one byte string per batch element."""
        self._check_tables()
        sym = self.symbols(z).cpu().numpy()
        idx = np.broadcast_to(
            np.arange(self.channels).reshape((-1,) + (1,) * (z.ndim - 2)), sym.shape[1:]
        )
        tables = self._tables()
        return [coding.encode(s, idx, *tables) for s in sym]

    def decompress(self, strings: Sequence[bytes], spatial: Sequence[int]) -> torch.Tensor:
        """Byte strings + spatial shape -> z_hat (len(strings), C, *spatial)."""
        self._check_tables()
        shape = (self.channels,) + tuple(spatial)
        idx = np.broadcast_to(np.arange(self.channels).reshape((-1,) + (1,) * len(spatial)), shape)
        tables = self._tables()
        sym = np.stack([coding.decode(s, idx, *tables).reshape(shape) for s in strings])
        med = self.medians().detach().reshape((1, -1) + (1,) * len(spatial))
        return torch.from_numpy(sym).to(med.dtype) + med

    def _tables(self):
        return (
            self.freqs.cpu().numpy().astype(np.int64),
            self.offsets.cpu().numpy().astype(np.int64),
            self.lengths.cpu().numpy().astype(np.int64),
        )


def default_scale_table(lo: float = 0.11, hi: float = 256.0, levels: int = 64) -> list[float]:
    """Log-spaced scales (CompressAI's ``get_scale_table``)."""
    return np.exp(np.linspace(math.log(lo), math.log(hi), levels)).tolist()


class GaussianConditional(nn.Module):
    """Conditional Gaussian prior for y given (mu, sigma) from a hyper-decoder."""

    def __init__(
        self,
        scale_table: Sequence[float] | None = None,  # increasing scales; None: default table
        scale_bound: float = 0.11,  # lower bound on sigma (latent units)
        tail_mass: float = 1e-9,  # mass outside each table, escaped in coding
        likelihood_bound: float = 1e-9,  # floor of the likelihood in the rate
    ):
        super().__init__()
        table = np.asarray(
            default_scale_table() if scale_table is None else scale_table, np.float64
        )
        if table.size < 1 or np.any(table <= 0) or np.any(np.diff(table) <= 0):
            raise ConfigError(
                f"GaussianConditional: expected a positive increasing scale table, "
                f"found {table.tolist()}"
            )
        if scale_bound <= 0:
            raise ConfigError(f"GaussianConditional: expected scale_bound > 0, found {scale_bound}")
        self.scale_bound = float(scale_bound)
        self.tail_mass = float(tail_mass)
        self.likelihood_bound = float(likelihood_bound)
        self.register_buffer("scale_table", torch.tensor(table, dtype=torch.float32))
        freqs, offsets, lengths = self._build_tables(table)
        self.register_buffer("freqs", torch.from_numpy(freqs).to(torch.int32))
        self.register_buffer("offsets", torch.from_numpy(offsets).to(torch.int32))
        self.register_buffer("lengths", torch.from_numpy(lengths).to(torch.int32))

    def _build_tables(self, table: np.ndarray):
        """Integer tables for each scale s_k: symbols -c_k..c_k,
        c_k = ceil(s_k * Phi^-1(1 - t/2))."""
        multiplier = -ndtri(self.tail_mass / 2)
        centers = np.ceil(table * multiplier).astype(np.int64)
        lengths = 2 * centers + 1
        freqs = np.zeros((table.size, int(lengths.max()) + 1), np.int64)
        for k, (s, c) in enumerate(zip(table, centers, strict=True)):
            v = np.abs(np.arange(2 * c + 1) - c).astype(np.float64)
            upper = ndtr((0.5 - v) / s)
            lower = ndtr((-0.5 - v) / s)
            freqs[k, : 2 * c + 2] = coding.pmf_to_freqs(upper - lower, 2 * lower[0])
        return freqs, -centers, lengths

    @staticmethod
    def _cumulative(x: torch.Tensor) -> torch.Tensor:
        # Phi(x) through erfc keeps precision in the lower tail
        return 0.5 * torch.erfc(-(2**-0.5) * x)

    def likelihood(
        self, y_hat: torch.Tensor, scales: torch.Tensor, means: torch.Tensor | None = None
    ) -> torch.Tensor:
        """p(y_hat | mu, sigma) elementwise, sigma lower-bounded (Minnen 2018, eq. 4)."""
        v = torch.abs(y_hat - means) if means is not None else torch.abs(y_hat)
        s = lower_bound(scales, self.scale_bound)
        like = self._cumulative((0.5 - v) / s) - self._cumulative((-0.5 - v) / s)
        return lower_bound(like, self.likelihood_bound)

    def forward(
        self, y: torch.Tensor, scales: torch.Tensor, means: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """y, sigma, mu (same shape) -> (y_hat, likelihoods)."""
        y_hat = noisy_or_rounded(y, means, self.training)
        return y_hat, self.likelihood(y_hat, scales, means)

    def build_indexes(self, scales: torch.Tensor) -> torch.Tensor:
        """sigma -> int64 index of the smallest table scale >= max(sigma, bound) (the last
        index for larger sigma): what the coder uses instead of sigma."""
        s = scales.detach().float().clamp_min(self.scale_bound).contiguous()
        table = self.scale_table[:-1].to(s.device).contiguous()
        return torch.searchsorted(table, s, right=False)

    def compress(
        self, y: torch.Tensor, indexes: torch.Tensor, means: torch.Tensor | None = None
    ) -> list[bytes]:
        """y (B, ...) with table indexes (B, ...) -> one byte string per batch element."""
        if indexes.shape != y.shape:
            raise SchemaError(
                f"GaussianConditional.compress: expected indexes of shape "
                f"{tuple(y.shape)}, found {tuple(indexes.shape)}"
            )
        v = y - means if means is not None else y
        sym = torch.round(v).long().cpu().numpy()
        idx = indexes.cpu().numpy()
        tables = self._tables()
        return [coding.encode(s, i, *tables) for s, i in zip(sym, idx, strict=True)]

    def decompress(
        self, strings: Sequence[bytes], indexes: torch.Tensor, means: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Byte strings + indexes (B, ...) -> y_hat (B, ...) = symbols + mu."""
        if len(strings) != indexes.shape[0]:
            raise SchemaError(
                f"GaussianConditional.decompress: expected {indexes.shape[0]} "
                f"strings, found {len(strings)}"
            )
        idx = indexes.cpu().numpy()
        tables = self._tables()
        sym = np.stack(
            [
                coding.decode(s, i, *tables).reshape(i.shape)
                for s, i in zip(strings, idx, strict=True)
            ]
        )
        out = torch.from_numpy(sym).float()
        return out + means.detach().cpu() if means is not None else out

    def _tables(self):
        return (
            self.freqs.cpu().numpy().astype(np.int64),
            self.offsets.cpu().numpy().astype(np.int64),
            self.lengths.cpu().numpy().astype(np.int64),
        )
