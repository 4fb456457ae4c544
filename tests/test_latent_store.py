"""Latent store: write/read round trips, quantization, resume, refusal, corrupt stores, CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from kmscale.autoencoders import latent_store
from kmscale.autoencoders.identity import IdentityAutoencoder
from kmscale.autoencoders.latent_store import decode_store, encode_to_store, open_latents
from kmscale.autoencoders.vae import VAEAutoencoder
from kmscale.data.store import open_store, partial_path
from kmscale.errors import SchemaError, StoreError

STATS = {"t2m": {"mean": 280.0, "std": 5.0}, "tp": {"mean": 0.3, "std": 0.6, "transform": "log1p"}}


def targets(n_time=10, shape=(12, 20), seed=0, mask=False) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    t2m = (280 + 5 * rng.standard_normal((n_time, *shape))).astype(np.float32)
    tp = rng.gamma(0.5, 1.0, (n_time, *shape)).astype(np.float32)
    if mask:
        t2m[:, :3, :4] = np.nan
        tp[:, :3, :4] = np.nan
    return xr.Dataset(
        {
            "t2m": (
                ("time", "lat", "lon"),
                t2m,
                {"units": "K", "standard_name": "air_temperature"},
            ),
            "tp": (("time", "lat", "lon"), tp, {"units": "mm h-1", "long_name": "precipitation"}),
        },
        coords={
            "time": pd.date_range("2019-03-21", periods=n_time, freq="h"),
            "lat": np.linspace(50, 53, shape[0]),
            "lon": np.linspace(-5, 0, shape[1]),
        },
        attrs={"title": "test targets"},
    )


def identity():
    return IdentityAutoencoder(variables=["t2m", "tp"], input_stats=STATS)


def vae(seed=0):
    torch.manual_seed(seed)
    return VAEAutoencoder(
        variables=["t2m"],
        input_stats=STATS,
        block_out_channels=(8, 16),
        norm_num_groups=8,
        latent_channels=2,
    )


def test_round_trip_float16_cf_and_mask(tmp_path):
    ds = targets(mask=True)
    model = identity()
    out = encode_to_store(model, ds, tmp_path / "lat.zarr", chunk=4, progress=False)
    lat = open_latents(out, model)
    assert lat["latent"].dtype == np.float16 and lat["latent"].shape == (10, 2, 12, 20)
    assert lat.attrs["autoencoder_fingerprint"] == model.fingerprint()
    assert not lat["valid_mask"].values[:, :, :3, :4].any()
    dec = open_store(
        decode_store(out, model, tmp_path / "dec.zarr", progress=False), kind="targets"
    )
    assert (
        dec["t2m"].attrs["units"] == "K" and dec["t2m"].attrs["standard_name"] == "air_temperature"
    )
    assert dec.attrs["title"] == "test targets"
    np.testing.assert_array_equal(dec["time"].values, ds["time"].values)
    np.testing.assert_allclose(dec["lat"].values, ds["lat"].values)
    truth, got = ds["t2m"].values, dec["t2m"].values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(truth))  # masked points stay masked
    np.testing.assert_allclose(got, truth, atol=5 * 2e-3 * 4, equal_nan=True)  # float16 latents


def test_quantized_store_error_bounded_by_step(tmp_path):
    ds = targets()
    model = identity()
    step = 0.01
    out = encode_to_store(
        model, ds, tmp_path / "q.zarr", chunk=3, quantization_step=step, progress=False
    )
    assert open_latents(out)["latent"].dtype == np.int16
    dec = open_store(decode_store(out, model, tmp_path / "dq.zarr", progress=False))
    err = np.abs(dec["t2m"].values - ds["t2m"].values)
    assert err.max() <= STATS["t2m"]["std"] * step / 2 + 1e-3


def test_vae_store_with_tiling(tmp_path):
    ds = targets(n_time=3, shape=(32, 48))
    model = vae()
    out = encode_to_store(
        model, ds, tmp_path / "v.zarr", chunk=2, tile=16, overlap=8, progress=False
    )
    assert open_latents(out)["latent"].shape == (3, 2, 16, 24)
    dec = open_store(
        decode_store(out, model, tmp_path / "vd.zarr", tile=16, overlap=8, progress=False)
    )
    assert dec["t2m"].shape == (3, 32, 48) and np.isfinite(dec["t2m"].values).all()


def test_resume_after_interruption(tmp_path, monkeypatch):
    ds = targets()
    model = identity()
    path = tmp_path / "r.zarr"
    real = latent_store.tiled_encode
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during chunk 2
        return real(*args, **kwargs)

    monkeypatch.setattr(latent_store, "tiled_encode", flaky)
    with pytest.raises(KeyboardInterrupt):
        encode_to_store(model, ds, path, chunk=4, progress=False)
    assert partial_path(path).exists() and not path.exists()
    with pytest.raises(StoreError):  # another model must not touch the partial store
        encode_to_store(
            IdentityAutoencoder(variables=["t2m", "tp"]), ds, path, chunk=4, progress=False
        )
    calls["n"] = 10
    encode_to_store(model, ds, path, chunk=4, progress=False)
    assert calls["n"] == 12  # only the two missing chunks were encoded
    fresh = encode_to_store(model, ds, tmp_path / "fresh.zarr", chunk=4, progress=False)
    np.testing.assert_array_equal(
        open_latents(path)["latent"].values, open_latents(fresh)["latent"].values
    )


def test_store_of_another_autoencoder_is_refused(tmp_path):
    ds = targets(n_time=2, shape=(16, 16))
    out = encode_to_store(vae(0), ds, tmp_path / "a.zarr", progress=False)
    with pytest.raises(StoreError, match="expected latents written by autoencoder"):
        decode_store(out, vae(1), tmp_path / "b.zarr", progress=False)
    assert not (tmp_path / "b.zarr").exists()


def test_store_is_read_by_the_same_encoder_with_a_refined_decoder(tmp_path):
    """A decoder fine-tuned afterwards (LDM decoder refinement) reads the same latents,
    except from a store with tail offsets, which were measured against the decoder that wrote it."""
    ds = targets(n_time=2, shape=(16, 16))
    model = vae(0)
    plain = encode_to_store(model, ds, tmp_path / "a.zarr", progress=False)
    tails = encode_to_store(model, ds, tmp_path / "t.zarr", tail_resolution=0.01, progress=False)
    refined = vae(0)
    with torch.no_grad():
        for m in refined.decoder_modules():
            for p in m.parameters():
                p.add_(0.01)
    assert refined.fingerprint() != model.fingerprint()
    assert (
        refined.encoder_fingerprint() == model.encoder_fingerprint() != vae(1).encoder_fingerprint()
    )
    assert open_latents(plain, refined).sizes["time"] == 2
    with pytest.raises(StoreError, match="expected latents written by autoencoder"):
        open_latents(tails, refined)
    with pytest.raises(StoreError, match="expected latents written by autoencoder"):
        open_latents(plain, vae(1))


def test_corrupt_store_is_an_error_and_nothing_is_damaged(tmp_path):
    ds = targets(n_time=4)
    model = identity()
    out = encode_to_store(model, ds, tmp_path / "c.zarr", chunk=2, progress=False)
    chunk_files = sorted(p for p in (out / "latent" / "c").rglob("*") if p.is_file())
    chunk_files[0].write_bytes(b"\x00garbage")
    with pytest.raises(StoreError, match="corrupt"):
        decode_store(out, model, tmp_path / "d.zarr", progress=False)
    assert not (tmp_path / "d.zarr").exists()
    (out / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError):
        open_latents(out)


def test_bad_inputs(tmp_path):
    ds = targets()
    with pytest.raises(SchemaError, match="missing"):
        encode_to_store(
            IdentityAutoencoder(variables=["u10"]), ds, tmp_path / "x.zarr", progress=False
        )

    big = vae()
    big.set_latent_stats([0.0, 0.0], [1e-9, 1e-9])  # absurd latent scaling: |z| overflows float16
    with pytest.raises(SchemaError, match="float16 range"):
        encode_to_store(big, targets(shape=(16, 16)), tmp_path / "o.zarr", progress=False)
    assert not (tmp_path / "o.zarr").exists()


def test_time_varying_mask_round_trips(tmp_path):
    ds = targets(mask=True)
    ds["t2m"][5, 8, 8] = np.nan  # a radar footprint that changes from hour to hour
    ds["tp"][7, 1, 15] = np.nan
    model = identity()
    out = encode_to_store(model, ds, tmp_path / "m.zarr", chunk=4, progress=False)
    dec = open_store(decode_store(out, model, tmp_path / "dm.zarr", progress=False))
    for v in ("t2m", "tp"):
        np.testing.assert_array_equal(np.isnan(dec[v].values), np.isnan(ds[v].values))


def test_cli_compress_and_decode(tmp_path, capsys):
    from kmscale.cli import main

    ds = targets(n_time=6, shape=(16, 24))
    ds.to_netcdf(tmp_path / "t.nc", engine="netcdf4")
    model = vae()
    model.save_pretrained(tmp_path / "ae")
    vae(1).save_pretrained(tmp_path / "other")
    args = ["--autoencoder", str(tmp_path / "ae"), "--no-progress"]
    assert (
        main(
            [
                "compress",
                *args,
                "--input",
                str(tmp_path / "t.nc"),
                "--out",
                str(tmp_path / "l.zarr"),
                "--verify",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "raw float32" in out and "ratio" in out and "verify t2m" in out
    assert (
        main(
            [
                "decode",
                *args,
                "--input",
                str(tmp_path / "l.zarr"),
                "--out",
                str(tmp_path / "d.zarr"),
            ]
        )
        == 0
    )
    assert open_store(tmp_path / "d.zarr", kind="targets")["t2m"].shape == (6, 16, 24)
    code = main(
        [
            "decode",
            "--autoencoder",
            str(tmp_path / "other"),
            "--input",
            str(tmp_path / "l.zarr"),
            "--out",
            str(tmp_path / "e.zarr"),
        ]
    )
    assert code == 1 and "expected latents written by autoencoder" in capsys.readouterr().err


def test_training_reads_latents_from_the_store(tmp_path):
    """The latent store is the downscaling models' training data (data.latents)."""
    from kmscale.conditioning.dataset import encode_targets
    from kmscale.diffusion.train import target_latents
    from kmscale.errors import AlignmentError

    ds = targets(n_time=10)
    model = vae().eval()
    out = encode_to_store(model, ds, tmp_path / "lat.zarr", chunk=4, progress=False)
    part = ds.isel(time=slice(3, 9))
    z = target_latents(model, part, str(out))
    np.testing.assert_allclose(
        z.numpy(), encode_targets(model, part, progress=False).numpy(), atol=2e-3
    )
    later = targets(n_time=3).assign_coords(time=pd.date_range("2019-04-01", periods=3, freq="h"))
    with pytest.raises(AlignmentError, match="expected latents at every target valid time"):
        target_latents(model, later, str(out))
    with pytest.raises(StoreError, match="expected latents written by autoencoder"):
        target_latents(vae(seed=1).eval(), part, str(out))
