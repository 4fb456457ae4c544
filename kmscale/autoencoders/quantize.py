"""Latent quantization to integers plus lossless coding, with bit and byte accounting.

A normalized latent channel c is quantized with a uniform step Delta_c,

    q = round(z / Delta_c)  (integers),     z_hat = q * Delta_c,

so the quantization error is uniform in [-Delta_c / 2, Delta_c / 2] with RMS
Delta_c / sqrt(12). Latents are normalized to unit variance, so one relative step
(e.g. 0.05) fits every channel; the integers are small and highly repetitive, and a
lossless codec (zstd) turns that into bytes. This is where most of the compression
ratio of a learned codec comes from: a float16 latent costs 16 bits a value, a
quantized and zstd-coded one typically 2-5.

The rate is reported two ways: the real bytes after zstd, and the empirical entropy
H(q) (the rate an ideal entropy coder with a static per-channel model would reach).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kmscale.errors import SchemaError

DEFAULT_ZSTD_LEVEL = 19  # slow to write, fast to read: archives are written once


def _steps(step: float | Sequence[float], channels: int) -> np.ndarray:
    steps = np.broadcast_to(np.asarray(step, dtype=np.float64), (channels,)).copy()
    if not np.all(steps > 0):
        raise SchemaError(f"quantization step: expected positive values, found {steps.tolist()}")
    return steps


def int_dtype_for(q: np.ndarray) -> np.dtype:
    """Smallest signed integer dtype holding every value of ``q``."""
    lo, hi = (int(q.min()), int(q.max())) if q.size else (0, 0)
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    raise SchemaError(f"quantized latents: expected values within int32, found range [{lo}, {hi}]")


def quantize(
    z: np.ndarray,
    step: float | Sequence[float],
    channel_axis: int = 1,
    dtype: np.dtype | None = None,
) -> np.ndarray:
    """Normalized latents z (..., C, ...) -> integers round(z / Delta_c).

    Args:
        z: float array with the latent channel on ``channel_axis``.
        step: Delta, one value or one per channel (normalized units).
        dtype: integer dtype of the result; by default the smallest that fits.
    Raises:
        SchemaError: non-finite latents, or values that overflow ``dtype``.
    """
    z = np.asarray(z)
    if not np.all(np.isfinite(z)):
        raise SchemaError("quantize: expected finite latents, found NaN or inf")
    shape = [1] * z.ndim
    shape[channel_axis] = -1
    steps = _steps(step, z.shape[channel_axis]).reshape(shape)
    q = np.rint(z / steps)
    out_dtype = int_dtype_for(q) if dtype is None else np.dtype(dtype)
    info = np.iinfo(out_dtype)
    if q.size and (q.min() < info.min or q.max() > info.max):
        raise SchemaError(
            f"quantize: expected values within {out_dtype} [{info.min}, {info.max}], "
            f"found [{q.min():.0f}, {q.max():.0f}] (use a larger step or dtype)"
        )
    return q.astype(out_dtype)


def dequantize(q: np.ndarray, step: float | Sequence[float], channel_axis: int = 1) -> np.ndarray:
    """Integers -> float32 latents q * Delta_c."""
    q = np.asarray(q)
    shape = [1] * q.ndim
    shape[channel_axis] = -1
    steps = _steps(step, q.shape[channel_axis]).reshape(shape)
    return (q * steps).astype(np.float32)


def zstd_bytes(array: np.ndarray, level: int = DEFAULT_ZSTD_LEVEL) -> bytes:
    """The C-order bytes of ``array`` compressed with zstd (numcodecs)."""
    from numcodecs import Zstd

    return bytes(Zstd(level=level).encode(np.ascontiguousarray(array)))


def entropy_bits(q: np.ndarray, channel_axis: int = 1) -> float:
    """Total empirical entropy sum_c N_c H(q_c) in bits (static per-channel model)."""
    q = np.moveaxis(np.asarray(q), channel_axis, 0)
    total = 0.0
    for channel in q:
        _, counts = np.unique(channel, return_counts=True)
        p = counts / counts.sum()
        total += float(-(counts * np.log2(p)).sum())
    return total


@dataclass(frozen=True)
class Rate:
    """What a block of quantized latents costs."""

    values: int  # number of latent values
    zstd_bytes: int  # bytes after zstd
    entropy_bytes: float  # ideal rate, bytes
    dtype: str  # integer dtype stored

    @property
    def bits_per_value(self) -> float:
        return 8.0 * self.zstd_bytes / max(self.values, 1)


def measure_rate(q: np.ndarray, channel_axis: int = 1, level: int = DEFAULT_ZSTD_LEVEL) -> Rate:
    """Bytes of ``q`` after zstd and its empirical entropy."""
    return Rate(
        values=int(q.size),
        zstd_bytes=len(zstd_bytes(q, level)),
        entropy_bytes=entropy_bits(q, channel_axis) / 8.0,
        dtype=str(q.dtype),
    )


def zarr_compressors(level: int = DEFAULT_ZSTD_LEVEL) -> tuple:
    """zarr v3 compressor chain for latent arrays (xarray ``encoding['compressors']``)."""
    from zarr.codecs import ZstdCodec

    return (ZstdCodec(level=level),)
