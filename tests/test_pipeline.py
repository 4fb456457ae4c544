"""Sampling pipeline: tiny end-to-end sample -> store, resume of an interrupted run,
per-member seeds independent of batching, and the ``kmscale sample`` command."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_bundle import make_bundle  # noqa: E402

from kmscale.data.store import open_store, partial_path  # noqa: E402
from kmscale.diffusion.pipeline import SEAM_KEY, DownscalingPipeline, SamplerSettings  # noqa: E402
from kmscale.errors import BundleError, ConfigError, StoreError  # noqa: E402

FAST = dict(members=3, steps=3, time_chunk=2)


@pytest.fixture(scope="module")
def setup():
    bundle, coarse = make_bundle()
    return DownscalingPipeline(bundle), coarse.isel(time=slice(0, 4))


def test_sample_writes_cf_store_with_provenance(setup, tmp_path):
    pipe, pred = setup
    path = pipe.run(pred, tmp_path / "ens.zarr", SamplerSettings(**FAST), progress=False)
    ds = open_store(path, kind="ensemble")
    assert ds["t2m"].dims == ("time", "member", "lat", "lon") and ds["t2m"].shape == (4, 3, 16, 24)
    assert ds["t2m"].attrs["units"] == "K" and ds["t2m"].attrs["standard_name"] == "air_temperature"
    assert ds.attrs["kmscale_member_seeds"] == [0, 1, 2]
    assert ds.attrs["kmscale_bundle_fingerprint"] == pipe.bundle.fingerprint()
    assert (
        "seed(t, m)" in ds.attrs["kmscale_seed_rule"]
        and '"steps": 3' in ds.attrs["kmscale_sampler"]
    )
    values = ds["t2m"].values
    assert np.isfinite(values).all() and values.std(axis=1).mean() > 0  # members differ


def test_interrupted_sample_resumes_to_the_same_store(setup, tmp_path):
    pipe, pred = setup
    full = pipe.run(pred, tmp_path / "full.zarr", SamplerSettings(**FAST), progress=False)
    out = tmp_path / "resumed.zarr"
    assert pipe.run(pred, out, SamplerSettings(**FAST), progress=False, max_chunks=1) is None
    assert partial_path(out).exists() and not out.exists()
    with pytest.raises(StoreError, match="interrupted"):
        open_store(out)
    # Different settings must not resume someone else's partial store.
    with pytest.raises(StoreError, match="another run"):
        pipe.run(pred, out, SamplerSettings(**{**FAST, "steps": 4}), progress=False)
    pipe.run(pred, out, SamplerSettings(**FAST), progress=False)
    np.testing.assert_array_equal(open_store(out)["t2m"].values, open_store(full)["t2m"].values)


def test_members_do_not_depend_on_member_batch_or_chunking(setup, tmp_path):
    pipe, pred = setup
    a = pipe.run(pred, tmp_path / "a.zarr", SamplerSettings(**FAST, member_batch=1), progress=False)
    b = pipe.run(
        pred,
        tmp_path / "b.zarr",
        SamplerSettings(**{**FAST, "time_chunk": 4}, member_batch=3),
        progress=False,
    )
    np.testing.assert_allclose(
        open_store(a)["t2m"].values, open_store(b)["t2m"].values, rtol=1e-5, atol=1e-4
    )


def test_centred_members_are_recentred_on_the_regression_mean(setup, tmp_path):
    from kmscale.diffusion.regression import predict_mean

    pipe, pred = setup
    one = pred.isel(time=[0])
    ens = open_store(
        pipe.run(
            one, tmp_path / "c.zarr", SamplerSettings(**FAST, center_residuals=True), progress=False
        )
    )
    plain = open_store(pipe.run(one, tmp_path / "r.zarr", SamplerSettings(**FAST), progress=False))
    centred, raw = ens["t2m"].values[0], plain["t2m"].values[0]  # (M, H, W)
    z_mean = predict_mean(pipe.regression, pipe.conditioning(one), progress=False)
    regression = pipe.autoencoder.decode(z_mean)[0, 0].detach().numpy()
    # identity autoencoder: the members' mean is the regression mean, the deviations are
    # the plain members' deviations times sqrt(M / (M - 1))
    np.testing.assert_allclose(centred.mean(0), regression, atol=1e-3)
    np.testing.assert_allclose(centred - centred.mean(0), (raw - raw.mean(0)) * 1.5**0.5, atol=1e-3)
    assert '"center_residuals": true' in ens.attrs["kmscale_sampler"]


def test_patchwise_sampling_runs(setup, tmp_path):
    pipe, pred = setup
    path = pipe.run(
        pred.isel(time=[0]),
        tmp_path / "p.zarr",
        SamplerSettings(members=2, steps=2, patch=[8, 16], overlap=[4, 8]),
        progress=False,
    )
    ds = open_store(path)
    assert np.isfinite(ds["t2m"].values).all()
    # the seam diagnostic of the patch edges is in the store's metadata
    ratio = ds.attrs[SEAM_KEY]["t2m"]
    assert isinstance(ratio, float) and 0 < ratio < 10


def test_members_are_written_one_at_a_time_in_member_chunks(setup, tmp_path, monkeypatch):
    """The bounded-memory path: each (time, member) field goes to the store as it is decoded,
    into zarr chunks of one time x one member; nothing (members, C, H, W) is handed over."""
    from kmscale.diffusion import ensemble_store

    pipe, pred = setup
    written = []
    real = ensemble_store.write_member

    def spy(partial, variables, t, m, fields):
        written.append((t, m, fields.shape))
        real(partial, variables, t, m, fields)

    monkeypatch.setattr(ensemble_store, "write_member", spy)
    path = pipe.run(pred, tmp_path / "m.zarr", SamplerSettings(**FAST), progress=False)
    assert sorted(w[:2] for w in written) == [(t, m) for t in range(4) for m in range(3)]
    assert {w[2] for w in written} == {(1, 16, 24)}
    import zarr

    assert zarr.open_array(str(path / "t2m"), mode="r").chunks == (1, 1, 16, 24)
    assert open_store(path).attrs[SEAM_KEY] == {"t2m": None}  # no patches, no decode tiles


def test_tiled_decode_and_streaming_give_the_whole_field_result(setup, tmp_path):
    """Decode tiles (blended) give the untiled store for a local decoder (the identity here;
    kmscale.autoencoders.tiling: exact when 3/8 of the overlap covers the receptive field),
    and the in-memory ``sample_time`` equals what the streamed run writes (float32 ulps: the
    regression runs on a one-time batch here, on two-time chunks in the run)."""
    pipe, pred = setup
    whole = open_store(pipe.run(pred, tmp_path / "w.zarr", SamplerSettings(**FAST), progress=False))
    tiled_settings = SamplerSettings(**FAST, decode_tile=[8, 8], decode_overlap=[4, 4])
    tiled = open_store(pipe.run(pred, tmp_path / "t.zarr", tiled_settings, progress=False))
    np.testing.assert_allclose(tiled["t2m"].values, whole["t2m"].values, rtol=2e-6)  # float32 ulps
    ratio = tiled.attrs[SEAM_KEY]["t2m"]
    assert 0.5 < ratio < 2  # decode tile edges measured, no seam introduced by the tiling
    from kmscale.diffusion.pipeline import time_seeds

    data = pipe.conditioning(pred.isel(time=[0]))
    from kmscale.diffusion.regression import predict_mean

    z_mean = predict_mean(pipe.regression, data, progress=False)
    seeds = time_seeds(whole.attrs["kmscale_member_seeds"], data.time[0])
    members = pipe.sample_time(data[0], z_mean[0], seeds, SamplerSettings(**FAST)).numpy()
    np.testing.assert_allclose(members[:, 0], whole["t2m"].values[0], rtol=2e-6)


def test_bad_requests(setup, tmp_path):
    pipe, pred = setup
    with pytest.raises(BundleError):
        pipe.run(
            pred.rename(t2m="d2m"), tmp_path / "x.zarr", SamplerSettings(**FAST), progress=False
        )
    with pytest.raises(ConfigError):
        pipe.run(pred, tmp_path / "x.zarr", SamplerSettings(members=0), progress=False)
    assert not (tmp_path / "x.zarr").exists()


def test_kmscale_sample_command(tmp_path):
    from kmscale.cli import main

    bundle, coarse = make_bundle()
    bundle.save(tmp_path / "bundle")
    coarse.isel(time=slice(0, 2)).to_netcdf(tmp_path / "pred.nc", engine="netcdf4")
    args = [
        "sample",
        "--bundle",
        str(tmp_path / "bundle"),
        "--predictors",
        str(tmp_path / "pred.nc"),
        "--members",
        "2",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "ens.zarr"),
    ]
    assert main(args) == 0
    assert open_store(tmp_path / "ens.zarr", kind="ensemble")["t2m"].shape == (2, 2, 16, 24)
    assert main(args) == 1  # a complete store is never overwritten without --overwrite
    assert main(args + ["--overwrite"]) == 0


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path, capsys):
    """`kmscale demo --size tiny`: prepare ... report, on the built-in demo data (~1 min)."""
    import json

    from kmscale.cli import main

    assert main(["demo", "--out", str(tmp_path / "demo"), "--size", "tiny", "--threads", "1"]) == 0
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert list(summary["stages"]) == [
        "prepare",
        "train_autoencoder",
        "encode",
        "train_models",
        "sample",
        "score_report",
    ]
    assert (tmp_path / "demo" / "report" / "report.md").is_file()
    assert summary["groups"] == [["t2m"], ["u10", "v10"], ["tp"]]
    checks = summary["demo_checks"]  # tiny budgets: the checks are reported, pass or fail
    assert set(checks["tp"]["values"]) == {
        "crps_fair",
        "regression_mae",
        "bilinear_mae",
        "spread_skill",
        "wet_fraction_ratio",
        "q99_ratio",
    }
    assert isinstance(checks["all_passed"], bool)
    assert "demo checks on the validation hours" in capsys.readouterr().out
    # the validation truth went through the HRCLDAS files
    assert (
        len(list((tmp_path / "demo" / "data" / "hrcldas_validation").glob("*HOR-TAIR-*.GRB2"))) == 2
    )
    assert (
        open_store(tmp_path / "demo" / "ensemble.zarr", kind="ensemble")["t2m"].sizes["member"] == 2
    )


def test_kmscale_sample_refuses_another_target_grid(tmp_path, capsys):
    from kmscale.cli import main

    bundle, coarse = make_bundle()
    bundle.save(tmp_path / "bundle")
    coarse.isel(time=slice(0, 1)).to_netcdf(tmp_path / "pred.nc", engine="netcdf4")
    other = bundle.grid.isel(lat=slice(0, 8))
    other.to_netcdf(tmp_path / "grid.nc", engine="netcdf4")
    args = [
        "sample",
        "--bundle",
        str(tmp_path / "bundle"),
        "--predictors",
        str(tmp_path / "pred.nc"),
        "--members",
        "2",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "ens.zarr"),
        "--target-grid",
        str(tmp_path / "grid.nc"),
    ]
    assert main(args) == 1
    assert "target grid mismatch" in capsys.readouterr().err
    assert not (tmp_path / "ens.zarr").exists()
