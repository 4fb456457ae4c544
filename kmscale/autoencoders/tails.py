"""Tail side information: per-field quantile offsets that restore the extremes a decoder flattens.

A decoder trained on a mean-type loss pulls the warmest and coldest few pixels of a
field towards the bulk (the 99.9 % quantile of a reconstructed ERA5 t2m field sits a few
hundredths to half a kelvin below the truth's). The encoder knows both the field and
what the decoder will make of it, so it can store, for every field, how far a handful
of the reconstruction's quantiles are from the truth's: a few dozen bytes per field, next to
the latents. The decoder side then moves its values through a monotone piecewise-linear
map whose knots are the reconstruction's own quantiles:

    y = r + interp(r, [q_p(r)], [delta_p])

with ``delta_p = q_p(truth) - q_p(r)`` stored at the probabilities ``probs`` and
``delta = 0`` at the ``anchors`` (the median by default). The default is 24 knots, dense
in the tails (0.05 % to 10 % and their mirrors), sparser in the bulk, plus the minimum
and maximum: 24 bytes per field before zstd. They were chosen on a validation split
(ERA5 UK t2m, VAEs trained on 1-17 March 2019, evaluated on 18-20 March, 4x and 8x models,
six quantization steps each; the ``tail_knots`` candidates of ``benchmarks/compression.py``):
the 99.9 % quantile of the whole block was within ZFP's error at equal RMSE at 9 of 12
points with these knots, 7 with 15 knots dense in the upper tail only, 4 with 12 knots
and 0 with the 0.1/1/99/99.9 % quantiles alone; between the knots of the few warmest
fields, where a block's extreme quantile falls, sparse knots misplace it. Beyond the
outermost knots the offset is constant. The offsets are stored as int8 multiples of
``resolution`` (physical units); the map is deterministic, so encoder and decoder compute
the same knots from the same decoded field.

This is side information in the sense of classical codecs (it is counted in the bytes
on disk); it restores the quantiles of each field, not the position of its extremes.
"""

from __future__ import annotations

import numpy as np

from kmscale.errors import ConfigError, SchemaError

TAIL_PROBS = (
    0.0,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.6,
    0.7,
    0.8,
    0.9,
    0.95,
    0.98,
    0.99,
    0.995,
    0.998,
    0.999,
    0.9995,
    1.0,
)
ANCHORS = (0.5,)


def _check(probs, anchors) -> np.ndarray:
    allp = np.asarray(sorted((*probs, *anchors)), np.float64)
    if np.any(np.diff(allp) <= 0) or allp[0] < 0 or allp[-1] > 1:
        raise ConfigError(
            f"tail probabilities: expected distinct values in [0, 1], found probs={probs}, "
            f"anchors={anchors}"
        )
    return allp


def _quantiles(fields: np.ndarray, allp: np.ndarray) -> np.ndarray:
    """Quantiles (N, len(allp)) of each field (N, H, W), ignoring NaN; all-NaN fields give NaN."""
    flat = fields.reshape(len(fields), -1)
    out = np.full((len(flat), len(allp)), np.nan)
    for i, f in enumerate(flat):
        f = f[np.isfinite(f)]
        if f.size:
            out[i] = np.quantile(f.astype(np.float64), allp)
    return out


def tail_offsets(
    truth: np.ndarray,
    recon: np.ndarray,
    probs=TAIL_PROBS,
    anchors=ANCHORS,
    resolution: float = 0.01,
) -> np.ndarray:
    """Offsets ``q_p(truth) - q_p(recon)`` of every field, as int8 multiples of ``resolution``.

    Args:
        truth, recon: fields (..., H, W), same shape; NaN (masked) points are ignored.
        probs: the tail probabilities stored; ``anchors``: probabilities with offset 0.
        resolution: the offsets' step, in the fields' units (0.01 K: offsets up to 1.27 K).

    Returns:
        int8 array (..., len(probs)). Offsets beyond +-127 steps are clipped.
    """
    truth, recon = np.asarray(truth), np.asarray(recon)
    if truth.shape != recon.shape or truth.ndim < 2:
        raise SchemaError(
            f"tail offsets: expected truth and reconstruction of one shape (..., H, W), found "
            f"{truth.shape} and {recon.shape}"
        )
    if not resolution > 0:
        raise ConfigError(f"tail offsets: expected a positive resolution, found {resolution}")
    allp = _check(probs, anchors)
    lead = truth.shape[:-2]
    tq = _quantiles(truth.reshape(-1, *truth.shape[-2:]), allp)
    rq = _quantiles(recon.reshape(-1, *recon.shape[-2:]), allp)
    stored = np.isin(allp, probs)
    delta = np.nan_to_num((tq - rq)[:, stored] / resolution)
    return np.clip(np.rint(delta), -127, 127).astype(np.int8).reshape(*lead, len(probs))


def correct_tails(
    recon: np.ndarray,
    offsets: np.ndarray,
    probs=TAIL_PROBS,
    anchors=ANCHORS,
    resolution: float = 0.01,
) -> np.ndarray:
    """Apply stored :func:`tail_offsets` to decoded fields (..., H, W); NaN stays NaN."""
    recon, offsets = np.asarray(recon), np.asarray(offsets)
    if offsets.shape != (*recon.shape[:-2], len(probs)):
        raise SchemaError(
            f"tail offsets: expected shape {(*recon.shape[:-2], len(probs))} for fields "
            f"{recon.shape} and {len(probs)} probabilities, found {offsets.shape}"
        )
    allp = _check(probs, anchors)
    fields = recon.reshape(-1, *recon.shape[-2:])
    rq = _quantiles(fields, allp)
    stored = np.isin(allp, probs)
    out = np.array(fields, dtype=np.result_type(recon.dtype, np.float32), copy=True)
    for i, (knots, off) in enumerate(zip(rq, offsets.reshape(-1, len(probs)), strict=True)):
        if not np.all(np.isfinite(knots)):
            continue
        delta = np.zeros(len(allp))
        delta[stored] = off.astype(np.float64) * resolution
        # Corrected knots must not cross (quantization of nearly equal quantiles could):
        # keep the map monotone.
        delta = np.maximum.accumulate(knots + delta) - knots
        f = out[i]
        ok = np.isfinite(f)
        f[ok] = f[ok] + np.interp(f[ok], knots, delta)
    return out.reshape(recon.shape)
