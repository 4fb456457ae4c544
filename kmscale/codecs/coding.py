"""Range coding of integer symbols with fixed integer frequency tables (constriction).

An entropy model hands the coder a table of integer frequencies per model index k,

    freqs[k, 0 : L_k + 1],  sum_j freqs[k, j] = 2**precision,  freqs >= 1,

where entry j < L_k stands for the symbol ``j + offset[k]`` and entry L_k is the escape
(the tail mass outside the table). A symbol outside ``[offset_k, offset_k + L_k)`` is coded
as the escape and its value is appended raw (int32) after the range-coded words: it is
rare (the tables cover all but ~1e-9 of the model's mass), and this keeps decoding exact
for any input. This follows CompressAI's ``pmf_to_quantized_cdf`` + escape scheme (its
rANS coder is a C++ extension that cannot be installed here: it pins numpy<2).

The coder only ever sees integers from these tables, never a float probability computed
at run time, so encoder and decoder agree bit for bit on any machine, thread count or
process; constriction's ``Categorical`` receives the integer frequencies as exact floats
and rescales them to its own fixed-point precision with deterministic integer code.

Symbols are coded grouped by model index (all symbols of index 0 in flat order, then
index 1, ...): one vectorized constriction call per index instead of one per symbol. The
decoder, knowing the same indexes, reads the groups in the same order.

Byte layout of one stream::

    uint32 n_words | uint32 n_escapes | n_words x uint32 range-coder words (little endian)
    | n_escapes x int32 escaped values
"""

from __future__ import annotations

import struct

import constriction
import numpy as np

from kmscale.errors import CorruptFileError, SchemaError

# constriction is one compiled module whose submodules are attributes, not importable paths
Categorical = constriction.stream.model.Categorical
RangeEncoder = constriction.stream.queue.RangeEncoder
RangeDecoder = constriction.stream.queue.RangeDecoder

PRECISION = 16  # bits of the integer frequency tables (CompressAI's default)
_HEADER = struct.Struct("<II")


def pmf_to_freqs(pmf: np.ndarray, tail_mass: float, precision: int = PRECISION) -> np.ndarray:
    """Probabilities of L symbols plus the tail mass -> L + 1 integer frequencies.

    Every frequency is at least 1 (each symbol stays codable) and they sum to exactly
    ``2**precision``; the rounding surplus or deficit is taken from (given to) the largest
    entries, as CompressAI's ``pmf_to_quantized_cdf`` does.

    Args:
        pmf: (L,) non-negative probabilities of the in-table symbols.
        tail_mass: probability of the escape (everything outside the table).
    Returns:
        (L + 1,) int64 frequencies.
    """
    p = np.append(np.asarray(pmf, dtype=np.float64), float(tail_mass))
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise SchemaError(f"pmf_to_freqs: expected finite non-negative probabilities, found {p}")
    total = 1 << precision
    if p.size > total:
        raise SchemaError(f"pmf_to_freqs: expected at most {total} symbols, found {p.size}")
    freqs = np.maximum(np.rint(p / p.sum() * total).astype(np.int64), 1)
    surplus = int(freqs.sum()) - total
    order = np.argsort(-freqs, kind="stable")
    i = 0
    while surplus != 0:  # at most a few passes: each entry moves by at most one per pass
        k = order[i % order.size]
        step = 1 if surplus > 0 else -1
        if freqs[k] - step >= 1:
            freqs[k] -= step
            surplus -= step
        i += 1
    return freqs


def _model(freqs_row: np.ndarray, length: int) -> Categorical:
    return Categorical(freqs_row[: length + 1].astype(np.float64), perfect=False)


def encode(
    symbols: np.ndarray,
    indexes: np.ndarray,
    freqs: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
) -> bytes:
    """Integer symbols -> bytes.

    Args:
        symbols: (N,) integers.
        indexes: (N,) model index k of each symbol, 0 <= k < K.
        freqs: (K, max L + 1) integer frequencies (see the module docstring).
        offsets: (K,) value of table entry 0 for each model.
        lengths: (K,) number of in-table symbols L_k.
    """
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    indexes = np.asarray(indexes, dtype=np.int64).ravel()
    if symbols.shape != indexes.shape:
        raise SchemaError(
            f"encode: expected one index per symbol, found {symbols.shape} symbols "
            f"and {indexes.shape} indexes"
        )
    enc = RangeEncoder()
    escapes = []
    for k in np.unique(indexes):
        s = symbols[indexes == k] - int(offsets[k])
        outside = (s < 0) | (s >= int(lengths[k]))
        if outside.any():
            escapes.append(s[outside] + int(offsets[k]))
            s = np.where(outside, int(lengths[k]), s)
        enc.encode(s.astype(np.int32), _model(freqs[k], int(lengths[k])))
    words = np.asarray(enc.get_compressed(), dtype="<u4")
    esc = np.concatenate(escapes).astype("<i4") if escapes else np.zeros(0, "<i4")
    return _HEADER.pack(words.size, esc.size) + words.tobytes() + esc.tobytes()


def decode(
    data: bytes, indexes: np.ndarray, freqs: np.ndarray, offsets: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    """Bytes -> (N,) int64 symbols, for the same ``indexes`` and tables as :func:`encode`."""
    indexes = np.asarray(indexes, dtype=np.int64).ravel()
    if len(data) < _HEADER.size:
        raise CorruptFileError(
            f"entropy-coded stream: expected at least {_HEADER.size} bytes, found {len(data)}"
        )
    n_words, n_esc = _HEADER.unpack_from(data)
    want = _HEADER.size + 4 * (n_words + n_esc)
    if len(data) != want:
        raise CorruptFileError(f"entropy-coded stream: expected {want} bytes, found {len(data)}")
    words = np.frombuffer(data, dtype="<u4", count=n_words, offset=_HEADER.size).astype(np.uint32)
    esc = np.frombuffer(data, dtype="<i4", count=n_esc, offset=_HEADER.size + 4 * n_words)
    dec = RangeDecoder(words)
    out = np.empty(indexes.size, dtype=np.int64)
    used = 0
    for k in np.unique(indexes):
        where = indexes == k
        s = np.asarray(dec.decode(_model(freqs[k], int(lengths[k])), int(where.sum())), np.int64)
        outside = s == int(lengths[k])
        n_out = int(outside.sum())
        if used + n_out > esc.size:
            raise CorruptFileError("entropy-coded stream: more escapes than escaped values")
        s = s + int(offsets[k])
        s[outside] = esc[used : used + n_out]
        used += n_out
        out[where] = s
    if used != esc.size:
        raise CorruptFileError(f"entropy-coded stream: {esc.size} escaped values, {used} used")
    return out


MAX_TABLE = 4096  # in-table symbols per channel of an adaptive table; the rest are escaped
_TABLE = struct.Struct("<iI")


def encode_adaptive(q: np.ndarray) -> bytes:
    """Integers (C, N) -> bytes with a per-channel table fitted to ``q`` itself.

    The factorized model of the codecs that have no learned prior (quantized VAE latents,
    error-bounded residuals): channel c gets the histogram of its own values, stored in
    the stream as L_c + 1 uint16 frequencies, so decoding needs nothing but the bytes.
    """
    q = np.asarray(q, dtype=np.int64)
    if q.ndim != 2:
        raise SchemaError(f"encode_adaptive: expected (channels, values), found shape {q.shape}")
    parts = [struct.pack("<II", *q.shape)]
    offsets, lengths, rows = [], [], []
    for row in q:
        lo = int(np.min(row)) if row.size else 0
        length = min(int(np.max(row)) - lo + 1 if row.size else 1, MAX_TABLE)
        inside = row[(row >= lo) & (row < lo + length)] - lo
        counts = np.bincount(inside, minlength=length).astype(np.float64)
        if not row.size:
            counts[:] = 1.0  # an empty channel still needs a valid table
        freqs = pmf_to_freqs(counts, float(row.size - inside.size))
        parts.append(_TABLE.pack(lo, length) + freqs.astype("<u2").tobytes())
        offsets.append(lo)
        lengths.append(length)
        rows.append(freqs)
    table = np.zeros((len(rows), max(lengths, default=1) + 1), np.int64)
    for c, freqs in enumerate(rows):
        table[c, : freqs.size] = freqs
    idx = np.broadcast_to(np.arange(q.shape[0])[:, None], q.shape)
    parts.append(encode(q, idx, table, np.asarray(offsets), np.asarray(lengths)))
    return b"".join(parts)


def decode_adaptive(data: bytes) -> np.ndarray:
    """Bytes from :func:`encode_adaptive` -> (C, N) int64."""
    if len(data) < 8:
        raise CorruptFileError(f"adaptive stream: expected at least 8 bytes, found {len(data)}")
    channels, n = struct.unpack_from("<II", data)
    pos, offsets, lengths, rows = 8, [], [], []
    for _ in range(channels):
        if pos + _TABLE.size > len(data):
            raise CorruptFileError("adaptive stream: truncated inside its tables")
        lo, length = _TABLE.unpack_from(data, pos)
        pos += _TABLE.size
        if length > MAX_TABLE or pos + 2 * (length + 1) > len(data):
            raise CorruptFileError(f"adaptive stream: table of {length} symbols does not fit")
        rows.append(np.frombuffer(data, "<u2", length + 1, pos).astype(np.int64))
        pos += 2 * (length + 1)
        offsets.append(lo)
        lengths.append(length)
    table = np.zeros((channels, max(lengths, default=1) + 1), np.int64)
    for c, freqs in enumerate(rows):
        table[c, : freqs.size] = freqs
    idx = np.broadcast_to(np.arange(channels)[:, None], (channels, n))
    return decode(data[pos:], idx, table, np.asarray(offsets), np.asarray(lengths)).reshape(
        channels, n
    )
