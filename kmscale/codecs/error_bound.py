"""Error-bounded residual coding: |x - x_out| <= bound for every value, checked at encode.

Given a reconstruction x_rec (a learned decoder's output, which the decoder reproduces),
the residual is quantized uniformly with step Delta = 2 (b - m):

    q = round((x - x_rec) / Delta),     x_out = x_rec + q Delta,
    |x - x_out| <= Delta / 2 = b - m < b.

The margin m = max(1e-3 b, 4 float32 spacings of max |x|) absorbs the float32 rounding of
x_out and the last-bit differences a reconstruction may show on another machine; Delta is
stored with the residual (float64), so the decoder does not recompute it. The integers q are
coded with a per-field adaptive table (:func:`kmscale.codecs.coding.encode_adaptive`),
either as they are (masked points, NaN in x, are then skipped: the decoder knows the
mask) or, when that is smaller, after the 2-D Lorenzo transform over the last two axes
(the predictor of SZ-type codecs, applied losslessly to the integers: masked points count
as 0, and the decoder inverts it with two cumulative sums),

    d[i, j] = q[i, j] - q[i-1, j] - q[i, j-1] + q[i-1, j-1],

which removes what is left of the reconstruction's smooth, spatially coherent error.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from kmscale.codecs import coding
from kmscale.errors import ConfigError, SchemaError

MARGIN = 1e-3  # relative reserve of the bound for float32 rounding and decoder noise
ULPS = 4  # float32 spacings of the largest value also kept in reserve
_HEAD = struct.Struct("<dB")  # step, mode (0: plain, 1: Lorenzo)
PLAIN, LORENZO = 0, 1


def check_bound(bound: float) -> float:
    """The bound as a float; ConfigError unless it is finite and > 0."""
    b = float(bound)
    if not math.isfinite(b) or b <= 0:
        raise ConfigError(f"max error: expected a finite bound > 0, found {bound}")
    return b


def step(bound: float, largest: float) -> float:
    """Quantization step Delta = 2 (b - m) for values up to ``largest`` in magnitude;
    ConfigError when float32 cannot resolve the bound (Delta <= 0)."""
    b = check_bound(bound)
    margin = max(MARGIN * b, ULPS * float(np.spacing(np.float32(largest))))
    if b - margin <= 0:
        raise ConfigError(
            f"max error {bound}: below what float32 resolves for values near "
            f"{largest:.4g} (spacing {np.spacing(np.float32(largest)):.3g})"
        )
    return 2.0 * (b - margin)


def encode_residual(
    x: np.ndarray, x_rec: np.ndarray, bound: float, *, where: str = "field"
) -> tuple[bytes, np.ndarray]:
    """Field x and its reconstruction (same shape; NaN in x = masked) -> (bytes, x_out).

    ``x_out`` (float32, NaN where x is NaN) is what :func:`decode_residual` returns.
    Raises ConfigError if float32 cannot hold the bound (|x - x_out| > b somewhere).
    """
    x = np.asarray(x, np.float32)
    x_rec = np.asarray(x_rec, np.float32)
    if x.shape != x_rec.shape:
        raise SchemaError(
            f"{where}: expected a reconstruction of shape {x.shape}, found {x_rec.shape}"
        )
    valid = np.isfinite(x)
    if not np.all(np.isfinite(x_rec[valid])):
        raise SchemaError(
            f"{where}: expected a finite reconstruction at unmasked points, found NaN or inf"
        )
    d = step(bound, float(np.max(np.abs(x[valid]), initial=0.0)))
    q = np.rint((x[valid].astype(np.float64) - x_rec[valid]) / d).astype(np.int64)
    x_out = _apply(x_rec, valid, q, d)
    err = float(np.max(np.abs(x_out[valid].astype(np.float64) - x[valid]), initial=0.0))
    if err > bound:
        raise ConfigError(
            f"{where}: max error {bound} cannot be met in float32 (found "
            f"{err:.3g} after rounding; values near {np.nanmax(np.abs(x)):.4g} "
            f"have a float32 spacing of {np.spacing(np.nanmax(np.abs(x))):.3g})"
        )
    plain = coding.encode_adaptive(q[None])
    if x.ndim >= 2:
        full = np.zeros(x.shape, np.int64)
        full[valid] = q
        lorenzo = coding.encode_adaptive(_lorenzo(full).reshape(1, -1))
        if len(lorenzo) < len(plain):
            return _HEAD.pack(d, LORENZO) + lorenzo, x_out
    return _HEAD.pack(d, PLAIN) + plain, x_out


def _lorenzo(q: np.ndarray) -> np.ndarray:
    """2-D Lorenzo differences over the last two axes (zero outside the array)."""
    p = np.pad(q, [(0, 0)] * (q.ndim - 2) + [(1, 0), (1, 0)])
    return p[..., 1:, 1:] - p[..., :-1, 1:] - p[..., 1:, :-1] + p[..., :-1, :-1]


def _inverse_lorenzo(dq: np.ndarray) -> np.ndarray:
    return np.cumsum(np.cumsum(dq, axis=-1), axis=-2)


def decode_residual(data: bytes, x_rec: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Bytes + reconstruction + mask of valid points -> x_out (float32, NaN where masked)."""
    d, mode = _HEAD.unpack_from(data)
    q = coding.decode_adaptive(data[_HEAD.size :])[0]
    if mode == LORENZO:
        if q.size != valid.size:
            raise SchemaError(f"residual: expected {valid.size} Lorenzo values, found {q.size}")
        q = _inverse_lorenzo(q.reshape(valid.shape))[valid]
    if q.size != int(np.count_nonzero(valid)):
        raise SchemaError(
            f"residual: expected {int(np.count_nonzero(valid))} values for the "
            f"unmasked points, found {q.size}"
        )
    return _apply(np.asarray(x_rec, np.float32), valid, q, d)


def _apply(x_rec: np.ndarray, valid: np.ndarray, q: np.ndarray, d: float) -> np.ndarray:
    out = np.full(x_rec.shape, np.nan, np.float32)
    out[valid] = (x_rec[valid].astype(np.float64) + q * d).astype(np.float32)
    return out
