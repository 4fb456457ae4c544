"""Mean-scale hyperprior on HEALPix faces: contract, bytes, determinism, archives, bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import xarray as xr

from kmscale.autoencoders import load_autoencoder
from kmscale.autoencoders.archive import compress_dataset, decompress_archive
from kmscale.autoencoders.hyperprior import (
    HyperpriorAutoencoder,
    HyperpriorOutput,
    fit_hyperprior,
    rate_distortion_loss,
)
from kmscale.errors import ConfigError, GridError, SchemaError
from kmscale.sphere import HealpixGrid

NSIDE = 16
STATS = {"t2m": {"mean": 280.0, "std": 15.0}}


def _smooth_fields(t=4, seed=0):
    g = HealpixGrid(NSIDE)
    lat, lon = np.radians(g.lat), np.radians(g.lon)
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(t, 3))
    x = (
        280
        + 25 * np.cos(lat)[None]
        + 3 * (a[:, :1] * np.sin(lon) + a[:, 1:2] * np.cos(2 * lon) + a[:, 2:] * np.sin(lat))
    )
    return torch.tensor(x[:, None], dtype=torch.float32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = HyperpriorAutoencoder(
        variables=["t2m"],
        input_stats=STATS,
        nside=NSIDE,
        channels=8,
        latent_channels=4,
        levels=2,
        hyper_levels=1,
    )
    fields = m.normalize_input(_smooth_fields(8))
    history = fit_hyperprior(m, fields, lmbda=50.0, steps=40, batch_size=4, lr=3e-3)
    assert np.mean(history[-5:]) < np.mean(history[:5])
    return m


def test_forward_contract(model):
    x = model.normalize_input(_smooth_fields(2))
    out = model(x)
    assert isinstance(out, HyperpriorOutput) and out.sample.shape == x.shape
    assert set(out.likelihoods) == {"y", "z"}
    terms = rate_distortion_loss(out, x, 10.0)
    assert terms["bpv"] > 0 and terms["mse"] >= 0
    z = model.encode(_smooth_fields(2))
    assert z.shape == (2, 4, 12 * (NSIDE // 4) ** 2)
    assert model.decode(z).shape == (2, 1, 12 * NSIDE**2)


def test_compress_decompress_equals_the_rounded_forward(model):
    x = _smooth_fields(2, seed=3)
    strings = model.compress(x)
    rec = model.decompress(strings, (12 * NSIDE**2,))
    with torch.no_grad():
        ref = model.denormalize_output(model(model.normalize_input(x)).sample)
    torch.testing.assert_close(rec, ref, rtol=0, atol=1e-4)
    assert all(len(s) < 12 * NSIDE**2 * 4 / 4 for s in strings)  # well under float32 size


def test_save_load_keeps_fingerprint_and_bytes(model, tmp_path):
    model.save_pretrained(tmp_path / "hp")
    back = load_autoencoder(tmp_path / "hp", expect="hyperprior")
    assert back.fingerprint() == model.fingerprint()
    x = _smooth_fields(1, seed=5)
    assert back.compress(x) == model.compress(x)


_DECODE = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(2)
    from kmscale.autoencoders import load_autoencoder
    m = load_autoencoder(sys.argv[1])
    data = open(sys.argv[2], "rb").read()
    sys.stdout.buffer.write(m.decompress([data], (int(sys.argv[3]),)).numpy().tobytes())
""")


def test_decode_with_two_threads_in_another_process_is_bit_exact(model, tmp_path):
    torch.set_num_threads(1)
    model.save_pretrained(tmp_path / "hp")
    x = _smooth_fields(1, seed=7)
    (data,) = model.compress(x)
    (tmp_path / "s.bin").write_bytes(data)
    here = model.decompress([data], (12 * NSIDE**2,)).numpy().tobytes()
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            _DECODE,
            str(tmp_path / "hp"),
            str(tmp_path / "s.bin"),
            str(12 * NSIDE**2),
        ],
        capture_output=True,
        check=True,
    )
    assert res.stdout == here


def test_corrupt_stream_is_detected(model):
    (data,) = model.compress(_smooth_fields(1))
    bad = bytearray(data)
    bad[4] ^= 0xFF  # the CRC of the scale indexes
    with pytest.raises(Exception, match="scale indexes"):
        model.decompress([bytes(bad)], (12 * NSIDE**2,))


def test_bad_configs():
    with pytest.raises(SchemaError):
        HyperpriorAutoencoder(nside=24)
    with pytest.raises(ConfigError, match="nside >="):
        HyperpriorAutoencoder(nside=4, levels=2, hyper_levels=1)


def _latlon(fields: torch.Tensor, lat, lon) -> xr.Dataset:
    from kmscale.sphere import healpix_to_latlon

    x = healpix_to_latlon(fields[:, 0].numpy(), NSIDE, lat, lon).astype(np.float32)
    times = np.array(["2026-03-01T00", "2026-03-01T06", "2026-03-01T12"], "datetime64[ns]")
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), x, {"units": "K"})},
        coords={"time": times, "lat": lat, "lon": lon},
    )


def test_global_latlon_archive_with_error_bound_and_nan_mask(model, tmp_path):
    lat, lon = np.linspace(-90, 90, 37), np.arange(0, 360, 5.0)
    ds = _latlon(_smooth_fields(3, seed=9), lat, lon)
    ds["t2m"].values[1, 10:12, 20:30] = np.nan  # e.g. a missing swath
    res = compress_dataset(model, ds, tmp_path / "a.kmsc", max_error=0.1)
    out, failed = decompress_archive(res.path, model)
    assert failed == [] and out["t2m"].dims == ("time", "lat", "lon")
    truth = ds["t2m"].values
    np.testing.assert_array_equal(np.isnan(out["t2m"].values), np.isnan(truth))
    assert np.nanmax(np.abs(out["t2m"].values - truth)) <= 0.1


def test_healpix_dataset_archive_and_regional_grid_refused(model, tmp_path):
    from kmscale.sphere.regrid import healpix_coords

    x = _smooth_fields(2)[:, 0].numpy()
    ds = xr.Dataset(
        {"t2m": (("time", "cell"), x, {"units": "K"})},
        coords={
            "time": np.array(["2026-03-01", "2026-03-02"], "datetime64[ns]"),
            **healpix_coords(NSIDE),
        },
        attrs=HealpixGrid(NSIDE).attrs(),
    )
    res = compress_dataset(model, ds, tmp_path / "h.kmsc")
    out, _ = decompress_archive(res.path, model)
    ref = model.decompress(model.compress(torch.from_numpy(x[:, None])), (12 * NSIDE**2,))
    np.testing.assert_array_equal(out["t2m"].values, ref[:, 0].numpy())
    region = _latlon(_smooth_fields(3), np.linspace(40, 60, 11), np.arange(0, 360, 5.0))
    with pytest.raises(GridError, match="covering the sphere"):
        compress_dataset(model, region, tmp_path / "r.kmsc")
    assert not (tmp_path / "r.kmsc").exists()


def test_smaller_step_spends_more_bytes_for_less_error(model):
    x = _smooth_fields(2, seed=11)
    res = {}
    for step in (0.25, 1.0, 4.0):
        strings = model.compress(x, step)
        err = (model.decompress(strings, (12 * NSIDE**2,)) - x).pow(2).mean().sqrt()
        res[step] = (sum(map(len, strings)), float(err))
    assert res[0.25][0] > res[1.0][0] > res[4.0][0]
    assert res[0.25][1] < res[4.0][1]
    with pytest.raises(ConfigError):
        model.compress(x, 0.0)


def test_field_mean_is_removed_and_restored():
    m = HyperpriorAutoencoder(
        variables=["t2m"],
        input_stats=STATS,
        nside=NSIDE,
        channels=8,
        latent_channels=4,
        levels=2,
        hyper_levels=1,
    )
    x = _smooth_fields(2)
    m.set_field_mean(x[0])
    z = m.normalize_input(x)
    assert torch.allclose(z[0], torch.zeros_like(z[0]), atol=1e-6)
    torch.testing.assert_close(m.denormalize_output(z), x)
    with pytest.raises(SchemaError):
        m.set_field_mean(torch.zeros(1, 5))
