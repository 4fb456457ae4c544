"""Archive container, Autoencoder.compress/decompress, error-bounded mode, CLI errors."""

from __future__ import annotations

import struct

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from kmscale.autoencoders.archive import compress_dataset, decompress_archive
from kmscale.autoencoders.identity import IdentityAutoencoder
from kmscale.cli import main
from kmscale.codecs import container, error_bound
from kmscale.errors import ConfigError, CorruptFileError, StoreError


def _fields(nan=True, t=3, shape=(16, 24), seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 3, shape[0]), np.linspace(0, 5, shape[1]), indexing="ij")
    data = 280 + 5 * np.sin(x + y)[None] + rng.normal(0, 0.3, (t, *shape))
    data = data.astype(np.float32)
    if nan:
        data[:, :3, :4] = np.nan
    times = pd.date_range("2026-03-01", periods=t, freq="6h")
    return xr.Dataset(
        {"t2m": (("time", "y", "x"), data, {"units": "K"})},
        coords={"time": times, "y": np.arange(shape[0]), "x": np.arange(shape[1])},
    )


def _identity():
    return IdentityAutoencoder(variables=["t2m"], input_stats={"t2m": {"mean": 280.0, "std": 5.0}})


# ---- container -------------------------------------------------------------------
def test_container_round_trip_truncation_and_corruption_named(tmp_path):
    path = tmp_path / "a.kmsc"
    with container.ArchiveWriter(path, {"codec": "x"}) as w:
        w.add("one", b"1" * 100)
        w.add("two", b"2" * 50)
    a = container.Archive(path)
    assert a.header["codec"] == "x" and a.read("one") == b"1" * 100 and a.names == ["one", "two"]
    raw = bytearray(path.read_bytes())
    (tmp_path / "cut.kmsc").write_bytes(raw[:-10])
    cut = container.Archive(tmp_path / "cut.kmsc")
    assert cut.read("one") == b"1" * 100
    with pytest.raises(CorruptFileError, match="'two' is truncated"):
        cut.read("two")
    raw[-60] ^= 0xFF  # inside "one"
    (tmp_path / "bad.kmsc").write_bytes(raw)
    bad = container.Archive(tmp_path / "bad.kmsc")
    with pytest.raises(CorruptFileError, match="'one' is corrupt"):
        bad.read("one")
    assert bad.read("two") == b"2" * 50


def test_container_refuses_newer_versions_and_foreign_files(tmp_path):
    path = tmp_path / "a.kmsc"
    with container.ArchiveWriter(path, {}) as w:
        w.add("c", b"x")
    raw = bytearray(path.read_bytes())
    raw[8:10] = struct.pack("<H", container.FORMAT_VERSION + 1)
    (tmp_path / "new.kmsc").write_bytes(raw)
    with pytest.raises(StoreError, match="newer"):
        container.Archive(tmp_path / "new.kmsc")
    (tmp_path / "x.kmsc").write_bytes(b"PK\x03\x04 not an archive")
    with pytest.raises(CorruptFileError, match="magic"):
        container.Archive(tmp_path / "x.kmsc")
    with pytest.raises(StoreError, match="overwrite"):
        container.ArchiveWriter(path, {})


def test_failed_write_leaves_no_archive(tmp_path):
    path = tmp_path / "a.kmsc"
    with pytest.raises(RuntimeError):
        with container.ArchiveWriter(path, {}) as w:
            w.add("c", b"x")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


# ---- datasets through any autoencoder ------------------------------------------------
def test_error_bounded_archive_holds_the_bound_and_the_mask(tmp_path):
    ds = _fields()
    model = _identity()
    for bound in (0.5, 0.05, 0.001):
        res = compress_dataset(model, ds, tmp_path / f"{bound}.kmsc", max_error=bound)
        out, failed = decompress_archive(res.path, model)
        assert failed == []
        truth, dec = ds["t2m"].values, out["t2m"].values
        np.testing.assert_array_equal(np.isnan(dec), np.isnan(truth))
        assert np.nanmax(np.abs(dec - truth)) <= bound
        assert res.max_abs_error <= bound
        assert out["t2m"].attrs["units"] == "K"
        assert (out["time"].values == ds["time"].values).all()


def test_latents_only_archive_matches_compress_decompress(tmp_path):
    ds = _fields(nan=False)
    model = _identity()
    res = compress_dataset(model, ds, tmp_path / "a.kmsc", step=0.01)
    out, _ = decompress_archive(res.path, model)
    x = torch.from_numpy(ds["t2m"].values[:, None])
    direct = model.decompress(model.compress(x, 0.01), x.shape[2:])
    np.testing.assert_array_equal(out["t2m"].values, direct[:, 0].numpy())
    assert np.abs(out["t2m"].values - ds["t2m"].values).max() <= 0.01 * 5.0 / 2 + 1e-4


def test_damaged_chunk_is_named_and_the_rest_decodes(tmp_path):
    ds = _fields()
    model = _identity()
    res = compress_dataset(model, ds, tmp_path / "a.kmsc", max_error=0.1)
    a = container.Archive(res.path)
    name = "fields/2026-03-01T06:00:00"
    c = a.chunks[name]
    raw = bytearray(res.path.read_bytes())
    raw[a._data_start + c.offset + 5] ^= 0x55
    res.path.write_bytes(raw)
    out, failed = decompress_archive(res.path, model)
    assert len(failed) == 1 and name in failed[0]
    assert np.isnan(out["t2m"].values[1]).all()
    assert np.nanmax(np.abs(out["t2m"].values[[0, 2]] - ds["t2m"].values[[0, 2]])) <= 0.1


def test_archive_from_another_model_is_refused(tmp_path):
    ds = _fields()
    res = compress_dataset(_identity(), ds, tmp_path / "a.kmsc")
    other = IdentityAutoencoder(variables=["t2m"], input_stats={"t2m": {"mean": 0.0, "std": 1.0}})
    with pytest.raises(StoreError, match="fingerprint"):
        decompress_archive(res.path, other)


@pytest.mark.parametrize("bound", [0.0, -1.0, float("nan")])
def test_bad_bounds_are_refused(tmp_path, bound):
    with pytest.raises(ConfigError, match="bound > 0"):
        compress_dataset(_identity(), _fields(), tmp_path / "a.kmsc", max_error=bound)
    assert not (tmp_path / "a.kmsc").exists()


def test_bound_below_float32_resolution_is_an_error():
    x = np.full(10, 300.0, np.float32) + np.arange(10, dtype=np.float32) * 1e-3
    with pytest.raises(ConfigError, match="float32 resolves"):
        error_bound.encode_residual(x, x + 0.1, 1e-7)


# ---- command line -----------------------------------------------------------------
def test_cli_compress_decompress_and_errors(tmp_path, capsys):
    ds = _fields()
    src = tmp_path / "in.nc"
    ds.to_netcdf(src)
    ae = tmp_path / "ae"
    _identity().save_pretrained(ae)
    arc = tmp_path / "a.kmsc"
    assert (
        main(
            [
                "compress",
                "--codec",
                "identity",
                "--autoencoder",
                str(ae),
                "--input",
                str(src),
                "--out",
                str(arc),
                "--max-error",
                "0.05",
            ]
        )
        == 0
    )
    assert "ratio" in capsys.readouterr().out
    out = tmp_path / "out.nc"
    assert (
        main(["decompress", "--autoencoder", str(ae), "--input", str(arc), "--out", str(out)]) == 0
    )
    dec = xr.open_dataset(out)
    assert np.nanmax(np.abs(dec["t2m"].values - ds["t2m"].values)) <= 0.05
    assert (
        main(
            [
                "compress",
                "--codec",
                "identity",
                "--autoencoder",
                str(ae),
                "--input",
                str(src),
                "--out",
                str(tmp_path / "b.kmsc"),
                "--max-error",
                "0",
            ]
        )
        == 1
    )
    assert "bound > 0" in capsys.readouterr().err
    assert (
        main(
            [
                "compress",
                "--codec",
                "vae",
                "--autoencoder",
                str(ae),
                "--input",
                str(src),
                "--out",
                str(tmp_path / "c.kmsc"),
            ]
        )
        == 1
    )
    assert "expected a 'vae' checkpoint" in capsys.readouterr().err
    assert (
        main(
            [
                "compress",
                "--autoencoder",
                str(ae),
                "--input",
                str(src),
                "--out",
                str(tmp_path / "d.zarr"),
                "--max-error",
                "0.1",
            ]
        )
        == 1
    )
    assert "--codec" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.kmsc", "ae", "in.nc", "out.nc"]


def test_vae_archive_round_trip(tmp_path):
    from kmscale.autoencoders.vae import VAEAutoencoder

    torch.manual_seed(0)
    vae = VAEAutoencoder(
        variables=["t2m"],
        input_stats={"t2m": {"mean": 280.0, "std": 5.0}},
        block_out_channels=(8, 8),
        latent_channels=2,
        norm_num_groups=4,
    ).eval()
    ds = _fields(t=2)
    res = compress_dataset(vae, ds, tmp_path / "v.kmsc", max_error=0.2)
    out, failed = decompress_archive(res.path, vae)
    assert failed == []
    assert np.nanmax(np.abs(out["t2m"].values - ds["t2m"].values)) <= 0.2
    x = torch.from_numpy(np.nan_to_num(ds["t2m"].values[:, None], nan=280.0))
    rec = vae.decompress(vae.compress(x), x.shape[2:])
    assert rec.shape == x.shape and torch.isfinite(rec).all()


@pytest.mark.parametrize("smooth", [True, False])
def test_residual_modes_round_trip_within_the_bound(smooth):
    rng = np.random.default_rng(1)
    x = np.cumsum(np.cumsum(rng.normal(0, 0.3, (30, 40)), 0), 1).astype(np.float32) + 280
    x[3:5, 7:20] = np.nan
    noise = rng.normal(0, 0.05, x.shape)
    rec = np.nan_to_num(np.float32(280) if smooth else x + noise, nan=0.0).astype(np.float32)
    rec = np.broadcast_to(rec, x.shape).copy()
    data, x_out = error_bound.encode_residual(x, rec, 0.01)
    assert data[8] == (error_bound.LORENZO if smooth else error_bound.PLAIN)
    valid = np.isfinite(x)
    y = error_bound.decode_residual(data, rec, valid)
    np.testing.assert_array_equal(y, x_out)
    assert np.nanmax(np.abs(y - x)) <= 0.01 and np.array_equal(np.isnan(y), ~valid)
