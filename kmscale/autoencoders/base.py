"""The Autoencoder contract every compressor in kmscale satisfies.

An autoencoder maps physical fields to normalized latents and back::

    x  (B, C, *spatial)   physical units, C == len(variables), NaN where masked
     │  standardize each variable (transform + mean/std in ``config.input_stats``)
     ▼
    _encode_normalized  ──►  z_raw (B, latent_channels, *latent_spatial)
     │  (z_raw - latent_mean) / latent_std   (``config.latent_mean/std``)
     ▼
    z  roughly zero-mean, unit-variance: what the diffusion model sees

and ``decode`` inverts each step. ``spatial`` is ``(H, W)`` for grid models and
``(npix,)`` (nested ordering) for HEALPix models; ``latent_spatial`` comes from
:meth:`latent_shape`. Implementations override only ``_encode_normalized`` and
``_decode_normalized`` (and ``latent_shape`` if not a plain stride). ``compress`` /
``decompress`` turn fields into bytes for every model (quantized latents, range coded);
codecs with a learned entropy model override them. Several input
variables may map to one latent field (pseudo-precipitation encoders).

Masked points (NaN in ``x``) are filled with the standardized value 0 before
encoding; restoring the mask after decoding is the caller's job (the latent store
keeps the mask), because a latent pixel mixes masked and unmasked inputs.

Models are diffusers ``ModelMixin`` + ``ConfigMixin``: the constructor arguments are
the config, saved with the weights by ``save_pretrained`` (config.json +
safetensors) and restored by :func:`kmscale.autoencoders.registry.load_autoencoder`.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin

from kmscale.codecs import coding
from kmscale.data import transforms
from kmscale.errors import CorruptFileError, SchemaError

LATENT_STEP = 0.05  # default quantization step of normalized latents in compress()


@dataclass
class AutoencoderOutput:
    """What :meth:`Autoencoder.forward` (the training pass) returns."""

    sample: torch.Tensor  # reconstruction, standardized (B, C, *spatial)
    latent_dist: Any = None  # q(z|x) of a variational model (a DiagonalGaussianDistribution)


class Autoencoder(ModelMixin, ConfigMixin):
    """Abstract base class. Subclasses decorate ``__init__`` with ``@register_to_config``
    and must accept (and pass on to the config) ``variables``, ``input_stats``,
    ``latent_mean`` and ``latent_std``.

    Class attributes a subclass sets:
        registry_name: the name it is registered under (set by ``@register``).
        spatial_dims: 2 for (H, W) grids, 1 for HEALPix pixel vectors.
    """

    config_name = "config.json"
    registry_name: str = ""
    spatial_dims: int = 2

    # ---- what a subclass provides -------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        """Linear reduction per spatial dimension (HEALPix: per side, i.e. 2**N)."""
        raise NotImplementedError

    @property
    def latent_channels(self) -> int:
        raise NotImplementedError

    def _encode_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Standardized (B, C, *spatial) -> raw latent (B, latent_channels, *latent_spatial)."""
        raise NotImplementedError

    def _decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latent -> standardized (B, C, *spatial)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> AutoencoderOutput:
        """Training pass on standardized x (B, C, *spatial): encode, decode (no latent
        normalization). Variational models override it to return their posterior too."""
        return AutoencoderOutput(self._decode_normalized(self._encode_normalized(x)))

    # ---- derived, shared by all ---------------------------------------------------
    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(self.config.variables)

    @property
    def in_channels(self) -> int:
        return len(self.config.variables)

    @property
    def compression_factor(self) -> float:
        """Input values per latent value (float32 to float32).

        E.g. 3 * 8**2 / 4 = 48 for 3 variables, 8x down, 4 latent channels."""
        return self.in_channels * self.downsample_factor**self.spatial_dims / self.latent_channels

    def latent_shape(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial shape of the latent for an input of ``spatial_shape``."""
        f = self.downsample_factor
        bad = [s for s in spatial_shape if s % f]
        if bad:
            raise SchemaError(
                f"{type(self).__name__}: expected spatial sizes divisible by {f}, "
                f"found {tuple(spatial_shape)}"
            )
        return tuple(s // f for s in spatial_shape)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise SchemaError unless ``x`` is (B, len(variables), *spatial)."""
        want = 2 + self.spatial_dims
        if x.ndim != want or x.shape[1] != self.in_channels:
            raise SchemaError(
                f"{type(self).__name__} for variables {list(self.variables)}: expected a tensor "
                f"(batch, {self.in_channels}, {'H, W' if self.spatial_dims == 2 else 'npix'}), "
                f"found shape {tuple(x.shape)}"
            )

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Physical -> standardized, per variable; NaN (masked) points become 0."""
        stats = self.config.input_stats or {}
        out = torch.empty_like(x, dtype=torch.float32)
        for c, name in enumerate(self.variables):
            xc = x[:, c].float()
            out[:, c] = transforms.standardize(xc, stats[name]) if name in stats else xc
        return torch.nan_to_num(out, nan=0.0)

    def denormalize_output(self, y: torch.Tensor) -> torch.Tensor:
        stats = self.config.input_stats or {}
        out = torch.empty_like(y)
        for c, name in enumerate(self.variables):
            out[:, c] = transforms.destandardize(y[:, c], stats[name]) if name in stats else y[:, c]
        return out

    def _latent_stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        mean, std = self.config.latent_mean, self.config.latent_std
        if mean is None or std is None:
            return None
        shape = (1, -1) + (1,) * (z.ndim - 2)
        m = torch.as_tensor(mean, dtype=z.dtype, device=z.device).reshape(shape)
        s = torch.as_tensor(std, dtype=z.dtype, device=z.device).reshape(shape)
        return m, s

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Physical fields (B, C, *spatial) -> normalized latents (B, latent_channels, ...)."""
        self.check_input(x)
        z = self._encode_normalized(self.normalize_input(x))
        stats = self._latent_stats(z)
        return z if stats is None else (z - stats[0]) / stats[1]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalized latents -> physical fields (B, C, *spatial)."""
        return self.denormalize_output(self.decode_standardized(z))

    def decode_standardized(self, z: torch.Tensor) -> torch.Tensor:
        """Normalized latents -> standardized fields (B, C, *spatial): what training losses
        compare with ``normalize_input(x)``."""
        if z.ndim != 2 + self.spatial_dims or z.shape[1] != self.latent_channels:
            raise SchemaError(
                f"{type(self).__name__}: expected latents (batch, {self.latent_channels}, ...) "
                f"with {self.spatial_dims} spatial dims, found shape {tuple(z.shape)}"
            )
        stats = self._latent_stats(z)
        if stats is not None:
            z = z * stats[1] + stats[0]
        return self._decode_normalized(z)

    def decoder_modules(self) -> list[torch.nn.Module]:
        """The modules that turn latents into fields (none for models without weights)."""
        return []

    def set_latent_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Record per-channel latent normalization (fitted on training latents)."""
        if len(mean) != self.latent_channels or len(std) != self.latent_channels:
            raise SchemaError(
                f"latent stats: expected {self.latent_channels} values each, "
                f"found {len(mean)} means and {len(std)} stds"
            )
        self.register_to_config(
            latent_mean=[float(m) for m in mean], latent_std=[float(s) for s in std]
        )

    def set_input_stats(self, stats: Mapping[str, Mapping]) -> None:
        """Record per-variable input statistics (schema of kmscale.data.stats)."""
        missing = [v for v in self.variables if v not in stats]
        if missing:
            raise SchemaError(
                f"input stats: expected entries for {list(self.variables)}, missing {missing}"
            )
        self.register_to_config(input_stats={v: dict(stats[v]) for v in self.variables})

    # ---- bitstreams ----------------------------------------------------------------
    def compress(self, x: torch.Tensor, step: float | None = None) -> list[bytes]:
        """Physical fields (B, C, *spatial) -> one byte string per field.

        The default codec: normalized latents quantized, q = round(z / step), and range
        coded with a per-channel table fitted to each field (a factorized model without
        learned parameters, :func:`kmscale.codecs.coding.encode_adaptive`). Codecs with a
        learned prior (the hyperprior) override this. Masked points are not restored
        here: :mod:`kmscale.autoencoders.archive` carries the masks.

        Args:
            x: (B, C, *spatial) in physical units.
            step: latent quantization step (normalized units), default :data:`LATENT_STEP`.
        """
        step = LATENT_STEP if step is None else step
        if not (step > 0):
            raise SchemaError(f"{type(self).__name__}.compress: expected a step > 0, found {step}")
        with torch.no_grad():
            z = self.encode(x)
        q = torch.round(z / step).long().cpu().numpy()
        head = struct.pack("<d", float(step))
        return [head + coding.encode_adaptive(qb.reshape(qb.shape[0], -1)) for qb in q]

    def decompress(self, strings: Sequence[bytes], spatial_shape: Sequence[int]) -> torch.Tensor:
        """Byte strings from :meth:`compress` + the fields' spatial shape -> (B, C, *spatial)."""
        latent = (self.latent_channels,) + self.latent_shape(spatial_shape)
        zs = []
        for s in strings:
            (step,) = struct.unpack_from("<d", s)
            q = coding.decode_adaptive(s[8:])
            if q.size != math.prod(latent):
                raise CorruptFileError(
                    f"{type(self).__name__}.decompress: expected {latent} "
                    f"latents, found {q.size} values"
                )
            zs.append(torch.from_numpy(q.reshape(latent)).float() * step)
        with torch.no_grad():
            return self.decode(torch.stack(zs).to(self.device))

    # ---- identity of a trained model ----------------------------------------------
    def _fingerprint_config(self) -> dict:
        """The config entries the fingerprint hashes."""
        return {k: v for k, v in dict(self.config).items() if not k.startswith("_")}

    def fingerprint(self) -> str:
        """SHA-256 over the config and the weights: what a latent store records."""
        return self._hash(skip=())

    def encoder_fingerprint(self) -> str:
        """SHA-256 over the config and every weight outside :meth:`decoder_modules`: the
        identity of the latents. A decoder fine-tuned afterwards (the LDM recipe's
        ``decoder_refinement``) changes :meth:`fingerprint` but still reads the same
        latents, which latent stores check with this."""
        return self._hash(skip=self.decoder_modules())

    def _hash(self, skip: Sequence[torch.nn.Module]) -> str:
        prefixes = tuple(
            name + "." for name, mod in self.named_modules() if any(mod is m for m in skip)
        )
        h = hashlib.sha256()
        h.update(json.dumps(self._fingerprint_config(), sort_keys=True, default=str).encode())
        for name, tensor in sorted(self.state_dict().items()):
            if prefixes and name.startswith(prefixes):
                continue
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
