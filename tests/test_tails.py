"""Tail side information: per-field quantile offsets restore the extremes a decoder flattens."""

from __future__ import annotations

import numpy as np
import pytest

from kmscale.autoencoders.latent_store import decode_store, encode_to_store, open_latents
from kmscale.autoencoders.tails import TAIL_PROBS, correct_tails, tail_offsets
from kmscale.data.store import open_store
from kmscale.errors import ConfigError, SchemaError
from tests.test_latent_store import targets, vae


def _q(a, p):
    return np.nanquantile(a, p, axis=(-2, -1))


def test_offsets_restore_flattened_tails_and_leave_the_bulk():
    rng = np.random.default_rng(0)
    truth = 280 + 3 * rng.standard_normal((4, 32, 48))
    recon = 280 + 0.9 * (truth - 280)  # tails pulled in by 0.3-1 K
    off = tail_offsets(truth, recon, resolution=0.01)
    assert off.shape == (4, len(TAIL_PROBS)) and off.dtype == np.int8
    fixed = correct_tails(recon, off, resolution=0.01)
    for p in (0.001, 0.01, 0.99, 0.999):
        assert np.abs(_q(fixed, p) - _q(truth, p)).max() <= 0.011
        assert np.abs(_q(recon, p) - _q(truth, p)).min() > 0.2
    assert np.sqrt(np.mean((fixed - truth) ** 2)) < np.sqrt(np.mean((recon - truth) ** 2))
    # monotone: the order of the values within each field is kept
    for f, r in zip(fixed, recon, strict=True):
        assert np.all(np.diff(f.ravel()[np.argsort(r.ravel())]) >= -1e-9)
    # tails only: anchors at 10 and 90 % leave the bulk untouched
    probs, anchors = (0.0, 0.001, 0.01, 0.99, 0.999, 1.0), (0.1, 0.9)
    fixed = correct_tails(recon, tail_offsets(truth, recon, probs, anchors), probs, anchors)
    bulk = (recon > _q(recon, 0.1)[:, None, None]) & (recon < _q(recon, 0.9)[:, None, None])
    np.testing.assert_array_equal(fixed[bulk], recon[bulk])
    assert np.abs(_q(fixed, 0.999) - _q(truth, 0.999)).max() <= 0.011


def test_offsets_clip_nan_and_bad_input():
    truth = 5.0 + np.linspace(0, 1, 64).reshape(1, 8, 8).repeat(2, axis=0)
    truth[1] = np.nan  # an all-masked field: no offsets, stays NaN
    recon = truth - 3.0
    off = tail_offsets(truth, recon, resolution=0.01)
    assert (off[0] == 127).all() and not off[1].any()  # 3 K > 1.27 K: clipped
    out = correct_tails(recon, off, resolution=0.01)
    assert np.isnan(out[1]).all()
    assert np.isclose(out[0].min(), recon[0].min() + 1.27) and np.isclose(
        out[0].max(), recon[0].max() + 1.27
    )
    with pytest.raises(SchemaError, match="one shape"):
        tail_offsets(truth, recon[:1])
    with pytest.raises(SchemaError, match="expected shape"):
        correct_tails(recon, off[:, :3])
    with pytest.raises(ConfigError, match="positive resolution"):
        tail_offsets(truth, recon, resolution=0)
    with pytest.raises(ConfigError, match="distinct values"):
        tail_offsets(truth, recon, probs=(0.5, 0.9))


def test_store_with_tail_offsets(tmp_path):
    ds = targets(n_time=6, shape=(16, 24), mask=True)
    model = vae().eval()
    plain = decode_store(
        encode_to_store(
            model, ds, tmp_path / "p.zarr", chunk=4, quantization_step=0.1, progress=False
        ),
        model,
        tmp_path / "dp.zarr",
        progress=False,
    )
    out = encode_to_store(
        model,
        ds,
        tmp_path / "t.zarr",
        chunk=4,
        quantization_step=0.1,
        tail_resolution=0.01,
        progress=False,
    )
    lat = open_latents(out, model)
    assert lat["tail_offset"].dtype == np.int8 and lat["tail_offset"].shape == (
        6,
        1,
        len(TAIL_PROBS),
    )
    got = open_store(decode_store(out, model, tmp_path / "dt.zarr", progress=False))["t2m"].values
    ref = open_store(plain)["t2m"].values
    truth = ds["t2m"].values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(truth))
    # an untrained decoder: offsets beyond 1.27 K are clipped, yet every tail nears the truth
    for p in (0.001, 0.999):
        assert np.all(np.abs(_q(got, p) - _q(truth, p)) <= np.abs(_q(ref, p) - _q(truth, p)) + 1e-6)
    # nothing already written is replaced (the offsets are also part of the resume fingerprint)
    from kmscale.errors import StoreError

    with pytest.raises(StoreError, match="expected no store"):
        encode_to_store(
            model, ds, tmp_path / "t.zarr", chunk=4, quantization_step=0.1, progress=False
        )


def test_cli_tails(tmp_path, capsys):
    from kmscale.cli import main

    targets(n_time=4, shape=(16, 24)).to_netcdf(tmp_path / "t.nc", engine="netcdf4")
    vae().save_pretrained(tmp_path / "ae")
    assert (
        main(
            [
                "compress",
                "--autoencoder",
                str(tmp_path / "ae"),
                "--no-progress",
                "--input",
                str(tmp_path / "t.nc"),
                "--out",
                str(tmp_path / "l.zarr"),
                "--tails",
                "0.01",
                "--verify",
                "2",
            ]
        )
        == 0
    )
    assert "verify t2m" in capsys.readouterr().out
    assert "tail_offset" in open_latents(tmp_path / "l.zarr")
