"""Entropy models and range coding: round trips, determinism across threads/processes, rate."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from kmscale.codecs import coding
from kmscale.codecs.entropy_models import EntropyBottleneck, GaussianConditional, bits
from kmscale.errors import ConfigError, CorruptFileError, SchemaError


def _gaussian_case(seed=0, shape=(2, 4, 1024)):
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.randn(shape, generator=g)) * 1.5
    means = torch.randn(shape, generator=g) * 3
    y = means + scales * torch.randn(shape, generator=g)
    return y, scales, means


def test_pmf_to_freqs_sums_to_precision_and_keeps_every_symbol():
    freqs = coding.pmf_to_freqs(np.array([0.5, 0.5 - 1e-12, 1e-12, 0.0]), 0.0)
    assert freqs.sum() == 1 << coding.PRECISION
    assert freqs.min() >= 1 and freqs.size == 5


def test_coder_round_trip_with_escapes():
    rng = np.random.default_rng(0)
    freqs = np.stack(
        [coding.pmf_to_freqs(np.full(5, 0.2), 1e-3), coding.pmf_to_freqs(np.full(5, 0.2), 1e-3)]
    )
    offsets, lengths = np.array([-2, 0]), np.array([5, 5])
    symbols = rng.integers(-2, 5, 500)
    symbols[::97] = 10_000  # far outside every table: escaped
    indexes = rng.integers(0, 2, 500)
    data = coding.encode(symbols, indexes, freqs, offsets, lengths)
    np.testing.assert_array_equal(coding.decode(data, indexes, freqs, offsets, lengths), symbols)
    with pytest.raises(CorruptFileError):
        coding.decode(data[:-3], indexes, freqs, offsets, lengths)


def test_gaussian_conditional_round_trip_and_rate():
    y, scales, means = _gaussian_case()
    gc = GaussianConditional().eval()
    idx = gc.build_indexes(scales)
    strings = gc.compress(y, idx, means)
    y_hat = gc.decompress(strings, idx, means)
    assert torch.equal(y_hat, torch.round(y - means) + means)
    _, like = gc(y, scales, means)
    est, real = bits(like).item() / 8, sum(len(s) for s in strings)
    assert abs(real - est) / est < 0.03  # table scales round sigma up: a little over


def test_build_indexes_picks_the_smallest_table_scale_not_below_sigma():
    gc = GaussianConditional(scale_table=[0.5, 1.0, 2.0], scale_bound=0.5)
    idx = gc.build_indexes(torch.tensor([0.1, 0.5, 0.7, 1.0, 1.5, 9.0]))
    assert idx.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ConfigError):
        GaussianConditional(scale_table=[1.0, 0.5])


def test_entropy_bottleneck_round_trip_rate_and_update_required():
    torch.manual_seed(0)
    eb = EntropyBottleneck(3)
    z = torch.randn(2, 3, 16, 16) * 3
    with pytest.raises(ConfigError, match="update"):
        eb.compress(z)
    eb.update()
    strings = eb.compress(z)
    eb.eval()
    z_hat, like = eb(z)
    assert torch.equal(eb.decompress(strings, (16, 16)), z_hat)
    est, real = bits(like).item() / 8, sum(len(s) for s in strings)
    assert abs(real - est) < 0.05 * est + 16  # + the 8-byte header per string
    with pytest.raises(SchemaError):
        eb(torch.zeros(1, 2, 4))


def test_entropy_bottleneck_learns_its_quantiles():
    torch.manual_seed(0)
    eb = EntropyBottleneck(1)
    opt = torch.optim.Adam(eb.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        _, like = eb(torch.randn(64, 1, 8) * 2)
        (bits(like) / 512 + eb.loss()).backward()
        opt.step()
    lo, med, hi = eb.quantiles[0, 0].tolist()
    assert lo < -2 < 2 < hi and abs(med) < 1.0


_DECODE_SCRIPT = textwrap.dedent("""
    import pickle, sys, torch
    torch.set_num_threads(2)
    from kmscale.codecs.entropy_models import GaussianConditional
    state, strings, scales, means = pickle.load(sys.stdin.buffer)
    gc = GaussianConditional()
    gc.load_state_dict(state)
    out = gc.decompress(strings, gc.build_indexes(scales), means)
    sys.stdout.buffer.write(pickle.dumps(out.numpy()))
""")


def test_decode_in_another_process_with_two_threads_is_bit_exact():
    y, scales, means = _gaussian_case(seed=1)
    torch.set_num_threads(1)
    gc = GaussianConditional().eval()
    strings = gc.compress(y, gc.build_indexes(scales), means)
    here = gc.decompress(strings, gc.build_indexes(scales), means).numpy()
    payload = pickle.dumps((gc.state_dict(), strings, scales, means))
    res = subprocess.run(
        [sys.executable, "-c", _DECODE_SCRIPT], input=payload, capture_output=True, check=True
    )
    there = pickle.loads(res.stdout)
    assert there.tobytes() == here.tobytes()
