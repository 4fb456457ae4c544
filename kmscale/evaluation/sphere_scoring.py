"""``kmscale score`` on HEALPix stores: equal-area scores and angular power spectra.

A store is HEALPix when its fields have a ``cell`` dim and the grid attributes of
:mod:`kmscale.sphere.store` (``grid_mapping_name: healpix``, nested ordering). Scoring
reuses :func:`kmscale.evaluation.scoring.score` unchanged on a face image of each field:
the 12 base faces laid out in their three latitude bands,

    (..., cell) nested  ->  (..., y = 3 nside, x = 4 nside),  face f at rows
    (f // 4) nside .. and columns (f % 4) nside .. (north polar, equatorial, south polar),

so every metric keeps its one definition. HEALPix cells have equal areas (Górski et al.
2005), so the plain mean over cells is the area mean: the face images are scored without
cos(lat) weights. What would need neighbours across face edges is left out on this layout:
SSIM, the FSS windows and the zonal (line) spectra. In their place come spherical-harmonic
spectra (:mod:`kmscale.evaluation.sphere_spectra`, healpy ``anafast``) of the truth, the
ensemble mean and the members (mean of the members' ``C_l``), averaged over times whose
field is finite everywhere (anafast takes no mask):

- ``angular_spectrum_truth`` (variable, degree),
- ``angular_spectrum_ensmean``, ``angular_spectrum_members`` (forecast, variable, degree),
- ``angular_power_ratio_high_l`` (forecast, variable): members over truth power in the top
  quarter of the degrees (1 = the truth's small-scale variance; < 1 = too smooth).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import xarray as xr

from kmscale.errors import AlignmentError
from kmscale.evaluation.base import MEMBER_DIM
from kmscale.evaluation.sphere_spectra import angular_power_spectrum, high_degree_power
from kmscale.sphere.faces import face_permutation
from kmscale.sphere.store import check_healpix_dataset

HIGH_L_FRACTION = 0.25  # top fraction of the degrees in angular_power_ratio_high_l


def is_healpix(ds: xr.Dataset) -> bool:
    """Whether ``ds`` holds HEALPix fields (a ``cell`` dim and ``grid_mapping_name: healpix``)."""
    return "cell" in ds.dims and ds.attrs.get("grid_mapping_name") == "healpix"


def face_image(ds: xr.Dataset) -> xr.Dataset:
    """Lazily lay out every ``cell`` variable as the (3 nside, 4 nside) face image (module doc).

    Coordinates along ``cell`` (index, lat, lon) are dropped; ``y``/``x`` count pixels."""
    nside = check_healpix_dataset(ds).nside
    ds = ds.drop_vars([c for c in ds.coords if "cell" in ds[c].dims])
    ds = ds.isel(cell=face_permutation(nside))  # face-major, row-major inside a face
    k = np.arange(12 * nside * nside)
    face, row, col = k // nside**2, (k // nside) % nside, k % nside
    ds = ds.assign_coords(
        y=("cell", (face // 4) * nside + row), x=("cell", (face % 4) * nside + col)
    )
    out = ds.set_index(cell=["y", "x"]).unstack("cell")
    return out.assign_attrs(ds.attrs).transpose(..., "y", "x")


def score_healpix(
    forecasts: Mapping[str, xr.Dataset],
    truth: xr.Dataset,
    opts,
    score: Callable[..., xr.Dataset],
    *,
    progress: bool = True,
) -> xr.Dataset:
    """Score HEALPix forecasts against a HEALPix truth (module doc).

    ``opts`` is a ``ScoreOptions`` and ``score`` the grid scorer
    (:func:`kmscale.evaluation.scoring.score`, passed in by it, so this module does not
    import it back), run on the face images.

    Raises AlignmentError when a forecast's nside differs from the truth's."""
    nside = check_healpix_dataset(truth).nside
    for name, f in forecasts.items():
        found = check_healpix_dataset(f).nside
        if found != nside:
            raise AlignmentError(
                f"forecast {name!r}: expected HEALPix nside {nside} (the truth's), found {found}"
            )
    flat = dataclasses.replace(opts, area_weighted=False, ssim=False, spectra=False, fss_windows=())
    ds = score(
        {k: face_image(f) for k, f in forecasts.items()}, face_image(truth), flat, progress=progress
    )
    if opts.spectra:
        ds = ds.merge(
            angular_spectra(
                forecasts, truth, [str(v) for v in ds["variable"].values], ds["time"].values
            )
        )
    return ds.assign_attrs(
        grid_dims="cell",
        grid_mapping_name="healpix",
        healpix_nside=nside,
        healpix_order="nested",
        area_weighted=1,
        map_layout="HEALPix base faces in three latitude bands, (3 nside, 4 nside) pixels",
        comment=ds.attrs["comment"] + " HEALPix cells have equal areas: plain cell means are "
        "area means.",
    )


def angular_spectra(
    forecasts: Mapping[str, xr.Dataset],
    truth: xr.Dataset,
    variables: Sequence[str],
    times: np.ndarray,
) -> xr.Dataset:
    """Time-mean ``C_l`` of the truth, ensemble means and members (module doc), one time at a
    time; a time whose truth or forecast field has NaN is left out of that mean."""
    names = list(forecasts)
    nside = check_healpix_dataset(truth).nside
    nl = 3 * nside
    nv, nf = len(variables), len(names)
    c_truth, n_truth = np.zeros((nv, nl)), np.zeros(nv)
    c_mean, c_mem, n_fc = np.zeros((nf, nv, nl)), np.zeros((nf, nv, nl)), np.zeros((nf, nv))
    for iv, v in enumerate(variables):
        for t in times:
            y = np.asarray(truth[v].sel(time=t).values, float)
            if not np.isfinite(y).all():
                continue
            c_truth[iv] += angular_power_spectrum(y)
            n_truth[iv] += 1
            for im, name in enumerate(names):
                e = forecasts[name][v].sel(time=t).transpose(MEMBER_DIM, "cell").values
                e = np.asarray(e, float)
                if not np.isfinite(e).all():
                    continue
                c_mean[im, iv] += angular_power_spectrum(e.mean(0))
                c_mem[im, iv] += angular_power_spectrum(e).mean(0)
                n_fc[im, iv] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        c_truth /= n_truth[:, None]
        c_mean /= n_fc[..., None]
        c_mem /= n_fc[..., None]
        ratio = high_degree_power(c_mem, HIGH_L_FRACTION) / high_degree_power(
            c_truth, HIGH_L_FRACTION
        )
    units = {v: truth[v].attrs.get("units", "") for v in variables}
    sq = {"units": f"({', '.join(sorted(set(units.values())))}) squared"}
    return xr.Dataset(
        {
            "angular_spectrum_truth": (
                ("variable", "degree"),
                c_truth,
                {"long_name": "time-mean angular power spectrum C_l of the truth", **sq},
            ),
            "angular_spectrum_ensmean": (
                ("forecast", "variable", "degree"),
                c_mean,
                {"long_name": "time-mean C_l of the ensemble mean", **sq},
            ),
            "angular_spectrum_members": (
                ("forecast", "variable", "degree"),
                c_mem,
                {"long_name": "time-mean C_l of the members, averaged over members", **sq},
            ),
            "angular_power_ratio_high_l": (
                ("forecast", "variable"),
                ratio,
                {
                    "long_name": "members' over truth's mean C_l in the top "
                    f"{HIGH_L_FRACTION:.0%} of degrees",
                    "units": "1",
                },
            ),
        },
        coords={
            "forecast": names,
            "variable": list(variables),
            "degree": ("degree", np.arange(nl), {"long_name": "spherical-harmonic degree l"}),
        },
    )
