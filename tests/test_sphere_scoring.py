"""``kmscale score`` on HEALPix stores: face-image layout, equal-area scores against a
brute-force reference, angular spectra against healpy, errors, CLI + report end to end."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kmscale.errors import AlignmentError
from kmscale.evaluation.scoring import ScoreOptions, score
from kmscale.evaluation.sphere_scoring import face_image, is_healpix
from kmscale.sphere import HealpixGrid, to_faces, write_healpix_store
from kmscale.sphere.regrid import healpix_coords

NSIDE = 4
NPIX = 12 * NSIDE**2


def _dataset(values: dict[str, np.ndarray], units: dict[str, str], nside: int = NSIDE):
    """HEALPix dataset; ``values[v]`` is (time, cell) or (time, member, cell)."""
    nt = next(iter(values.values())).shape[0]
    dv = {
        v: (("time", "cell") if x.ndim == 2 else ("time", "member", "cell"), x, {"units": units[v]})
        for v, x in values.items()
    }
    return xr.Dataset(
        dv,
        coords={
            "time": pd.date_range("2026-03-01", periods=nt, freq="6h"),
            **healpix_coords(nside),
        },
        attrs=HealpixGrid(nside).attrs(),
    )


@pytest.fixture
def pair(rng):
    """Truth (3 times) and a 4-member forecast of a smooth-ish field plus noise, in K."""
    lat = np.deg2rad(HealpixGrid(NSIDE).lat)
    y = 280 + 20 * np.cos(lat)[None] + rng.normal(0, 1, (3, NPIX))
    e = y[:, None] + rng.normal(0.3, 1.5, (3, 4, NPIX))
    truth = _dataset({"t2m": y.astype(np.float32)}, {"t2m": "K"})
    fc = _dataset({"t2m": e.astype(np.float32)}, {"t2m": "K"})
    return truth, fc


def test_face_image_is_the_face_layout(pair):
    truth, _ = pair
    assert is_healpix(truth) and not is_healpix(face_image(truth))
    img = face_image(truth)["t2m"].values  # (time, 3 n, 4 n)
    faces = to_faces(truth["t2m"].values)  # (time, 12, n, n)
    assert img.shape == (3, 3 * NSIDE, 4 * NSIDE)
    for f in range(12):
        r, c = (f // 4) * NSIDE, (f % 4) * NSIDE
        np.testing.assert_array_equal(img[:, r : r + NSIDE, c : c + NSIDE], faces[:, f])


def test_scores_are_plain_cell_means(pair):
    """Equal-area cells: every score is the unweighted mean over cells (brute force)."""
    truth, fc = pair
    ds = score({"m": fc}, truth, ScoreOptions(), progress=False)
    y = truth["t2m"].values.astype(float)
    e = fc["t2m"].values.astype(float)
    m = e.shape[1]
    skill = np.abs(e - y[:, None]).mean(1)
    pair_sum = np.abs(e[:, :, None] - e[:, None]).sum((1, 2))
    crps_fair = (skill - pair_sum / (2 * m * (m - 1))).mean(-1)
    sel = dict(forecast="m", variable="t2m", region="all")
    np.testing.assert_allclose(ds["crps_fair"].sel(**sel).values, crps_fair, rtol=1e-5)
    mse = ((e.mean(1) - y) ** 2).mean(-1)
    np.testing.assert_allclose(ds["ensmean_mse"].sel(**sel).values, mse, rtol=1e-5)
    assert ds.attrs["grid_mapping_name"] == "healpix" and ds.attrs["area_weighted"] == 1
    assert (ds["n_valid"].sel(**sel).values == NPIX).all()


def test_angular_spectra_match_healpy(pair):
    truth, fc = pair
    ds = score({"m": fc}, truth, ScoreOptions(), progress=False)
    y = truth["t2m"].values.astype(float)
    e = fc["t2m"].values.astype(float)
    ref = np.mean([hp.anafast(hp.reorder(f, n2r=True)) for f in y], 0)
    np.testing.assert_allclose(ds["angular_spectrum_truth"].sel(variable="t2m"), ref, rtol=1e-10)
    ref_m = np.mean([hp.anafast(hp.reorder(f, n2r=True)) for f in e.reshape(-1, NPIX)], 0)
    got = ds["angular_spectrum_members"].sel(forecast="m", variable="t2m")
    np.testing.assert_allclose(got, ref_m, rtol=1e-10)
    assert ds.sizes["degree"] == 3 * NSIDE
    assert float(ds["angular_power_ratio_high_l"].sel(forecast="m", variable="t2m")) > 1


def test_nan_time_is_left_out_of_the_spectra(pair):
    truth, fc = pair
    truth["t2m"][0, 5] = np.nan
    ds = score({"m": fc}, truth, ScoreOptions(), progress=False)
    y = truth["t2m"].values[1:].astype(float)
    ref = np.mean([hp.anafast(hp.reorder(f, n2r=True)) for f in y], 0)
    np.testing.assert_allclose(ds["angular_spectrum_truth"].sel(variable="t2m"), ref, rtol=1e-10)
    assert int(ds["n_valid"].sel(forecast="m", variable="t2m", region="all")[0]) == NPIX - 1


def test_other_nside_is_refused(pair, rng):
    truth, _ = pair
    other = _dataset({"t2m": rng.normal(size=(3, 2, 12 * 2**2))}, {"t2m": "K"}, nside=2)
    with pytest.raises(AlignmentError, match="nside 4"):
        score({"m": other}, truth, ScoreOptions(), progress=False)


@pytest.mark.slow
def test_cli_score_and_report_on_healpix_stores(pair, tmp_path, rng):
    from kmscale.cli import main

    truth, fc = pair
    tp = np.abs(rng.normal(0, 2, (3, NPIX))).astype(np.float32)
    truth = truth.assign(tp=(("time", "cell"), tp, {"units": "mm h-1"}))
    fc = fc.assign(
        tp=(("time", "member", "cell"), np.repeat(tp[:, None], 4, 1), {"units": "mm h-1"})
    )
    write_healpix_store(truth, tmp_path / "truth.zarr")
    write_healpix_store(fc, tmp_path / "ens.zarr")
    out = tmp_path / "metrics.nc"
    argv = [
        "score",
        "--forecast",
        str(tmp_path / "ens.zarr"),
        "--truth",
        str(tmp_path / "truth.zarr"),
    ]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    ds = xr.open_dataset(out)
    assert {"angular_spectrum_truth", "crps_fair", "twcrps_fair"} <= set(ds.data_vars)
    assert float(ds["summary_crps_fair"].sel(forecast="ens", variable="tp").max()) == 0
    assert main(["report", "--metrics", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep/figures/t2m_angular_spectra.png").exists()
