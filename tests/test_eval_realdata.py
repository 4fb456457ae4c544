"""Scores on the real data: ERA5 UK t2m (regional lat-lon) and RADOLAN precipitation
(projected 1 km grid, NaN outside the composite). The 'ensembles' are lagged ensembles
of the truth itself (the fields 1..M hours earlier): real fields with real errors.
"""

from __future__ import annotations

import numpy as np
import properscoring
import pytest
import xarray as xr

from kmscale.evaluation.probabilistic import crps_ensemble
from kmscale.evaluation.scoring import ScoreOptions, score
from kmscale.evaluation.spectra import EARTH_RADIUS_KM, radial_spectrum, zonal_spectrum

pytestmark = pytest.mark.realdata


def lagged(truth: xr.DataArray, members: int) -> xr.DataArray:
    """Member j at time t is the truth at t - (j + 1) hours; the first ``members`` times go."""
    n = truth.sizes["time"]
    stack = [truth.isel(time=slice(members - 1 - j, n - 1 - j)).values for j in range(members)]
    return xr.DataArray(
        np.stack(stack, axis=1),
        dims=("time", "member", *truth.dims[1:]),
        coords={k: v for k, v in truth.isel(time=slice(members, None)).coords.items()},
        attrs=truth.attrs,
    )


def test_era5_uk_t2m_scores(real_data):
    from kmscale_testdata import era5_uk_t2m

    truth = era5_uk_t2m("val").isel(time=slice(0, 30)).load()
    fc = lagged(truth["t2m"], 4)
    tr = truth.isel(time=slice(4, None))
    # standard CRPS equals properscoring on real fields too
    e, y = fc.values[0].astype(np.float64), tr["t2m"].values[0].astype(np.float64)
    np.testing.assert_allclose(
        crps_ensemble(e, y, fair=False), properscoring.crps_ensemble(y, e, axis=0), atol=1e-6
    )
    ds = score({"lagged": fc.to_dataset(name="t2m")}, tr, ScoreOptions(ssim=True), progress=False)
    s = ds.sel(forecast="lagged", variable="t2m", region="all").isel(lead_time_group=0)
    assert 0.1 < float(s["summary_crps_fair"]) < 3.0  # K; hourly persistence errors
    assert float(s["summary_crps_fair"]) < float(s["summary_crps_standard"])
    assert np.isfinite(float(s["summary_spread_skill_ratio"]))
    # zonal wavelengths on the regional grid: 48 cells of 0.25 deg at the mean latitude
    dx = EARTH_RADIUS_KM * np.cos(np.deg2rad(float(tr.lat.mean()))) * np.deg2rad(0.25)
    assert float(ds["wavelength"][0]) == pytest.approx(48 * dx, rel=1e-6)
    spec = zonal_spectrum(tr["t2m"])
    # temperature spectra fall with wavenumber: large scales hold most of the variance
    assert float(spec[:4].mean()) > 10 * float(spec[-4:].mean())


def test_radolan_masked_precipitation(real_data):
    from kmscale_testdata import radolan_rw

    # A 300 x 300 km corner window (part of it outside the composite), 6 hours.
    ds = radolan_rw().isel(time=slice(8, 14), y=slice(0, 300), x=slice(0, 300)).load()
    tp = ds["tp"]
    fc = lagged(tp, 3)
    tr = tp.isel(time=slice(3, None)).to_dataset(name="tp")
    tr["composite"] = ds["mask"].astype("float32")
    out = score(
        {"lagged": fc.to_dataset(name="tp")},
        tr,
        ScoreOptions(
            masks=["composite"],
            precip_thresholds=(0.5, 2.0),
            fss_windows=(1, 11, 31),
            quantiles=(0.99,),
        ),
        progress=False,
    )
    sel = out.sel(forecast="lagged", variable="tp")
    inside = int(ds["mask"].sum())
    assert 0 < inside < 300 * 300
    # points outside the composite are NaN in the truth: never scored, in any region
    assert (sel["n_valid"].sel(region="composite") == inside).all()
    assert (sel["n_valid"].sel(region="all") < 300 * 300).all()
    assert np.isfinite(sel["crps_fair"]).all()
    fss = sel["fss"].sel(region="composite", threshold=0.5).mean("time")
    assert float(fss.sel(window=31)) > float(fss.sel(window=1))  # skill grows with scale
    assert np.isfinite(sel["twcrps_fair"]).all()
    assert int(sel["rank_histogram"].sel(region="all").sum()) == int(
        sel["n_valid"].sel(region="all").sum()
    )
    # radial spectrum with the NaN border: finite, 1 km grid from the x coordinate in m
    spec = radial_spectrum(tp.isel(time=slice(0, 2)))
    assert np.isfinite(spec).all() and float(spec.wavelength[0]) == pytest.approx(300.0)
