"""Score ensemble stores against a truth store, streaming over time chunks.

``score({"ldm": ens_ds, "regression": ens2_ds}, truth_ds, ScoreOptions(...))`` reads one
chunk of times at a time (the stores are opened lazily with dask; only the chunk is
loaded), computes every metric per time step, variable, method and region with the
numpy kernels of this package, and returns a CF-described ``xr.Dataset``:

- per time step, dims ``(forecast, variable, region, time)``: ``crps_fair``,
  ``crps_standard``, ``crps_skill``, ``crps_spread_fair``, ``crps_spread_standard``,
  ``ensmean_mse``, ``ensmean_mae``, ``ensmean_bias``, ``ens_variance``, ``ssim_ensmean``,
  ``n_valid``; with extra dims ``member_mse`` (member), ``quantile_error`` (quantile),
  and for precipitation variables ``twcrps_fair`` (threshold) and ``fss``
  (threshold, window);
- summaries, dims ``(forecast, variable, region, lead_time)``: ``summary_<name>`` for the
  time means, ``summary_ensmean_rmse``, ``summary_spread``, ``summary_spread_skill_ratio``
  (ratio of the time-mean parts, never a mean of ratios);
- ``rank_histogram`` (forecast, variable, region, rank) summed over times;
- zonal spectra ``spectrum_truth`` (variable, wavenumber), ``spectrum_ensmean`` and
  ``spectrum_members`` (forecast, variable, wavenumber), coordinate ``wavelength`` (km);
- densities ``density_truth`` (variable, bin), ``density`` (forecast, variable, bin),
  coordinate ``bin_center`` (variable, bin), and ``log_density_error``;
- display maps at one time, coarsened to at most ``map_size`` pixels a side:
  ``map_truth``, ``map_ensmean``, ``map_members`` (map_member = 0, 1).

Per-time values are spatial means over valid points (truth, every member and the
region's mask finite/true), cos(lat)-weighted on regular lat-lon grids; a time with no
valid point in a region gives NaN and ``n_valid`` 0. Time means weight every time step
equally. Units: scores carry the units of their variable (coordinate ``variable_units``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from kmscale import __version__
from kmscale.errors import AlignmentError, SchemaError, UnitsError
from kmscale.evaluation.base import LATLON_DIMS, MEMBER_DIM, check_aligned, spatial_dims
from kmscale.evaluation.baselines import KIND_ATTR
from kmscale.evaluation.density import DensityHistogram, log_density_error, shared_edges
from kmscale.evaluation.deterministic import ssim_field
from kmscale.evaluation.precipitation import DEFAULT_WINDOWS, fss_field
from kmscale.evaluation.probabilistic import crps_parts, rank_of_truth, spread_from_pair_sum
from kmscale.evaluation.quantiles import DEFAULT_QUANTILES, quantile_error, twcrps
from kmscale.evaluation.spectra import (
    EARTH_RADIUS_KM,
    grid_spacing_km,
    wavelengths_km,
    zonal_power_spectrum,
)

log = logging.getLogger(__name__)

PER_TIME = (
    "crps_fair", "crps_standard", "crps_skill", "crps_spread_fair", "crps_spread_standard",
    "ensmean_mse", "ensmean_mae", "ensmean_bias", "ens_variance", "ssim_ensmean",
)  # fmt: skip
PRECIP_UNITS = ("mm h-1",)


@dataclasses.dataclass
class ScoreOptions:
    """What ``score`` computes; every default of ``kmscale score`` lives here.

    Attributes:
        variables: variables to score (default: all that forecasts and truth share).
        masks: truth (or static) variables defining extra regions (value > 0.5 = in).
        time_chunk: time steps loaded at once (memory ~ time_chunk x M x H x W x 4 B).
        area_weighted: cos(lat) weights on regular lat-lon grids.
        quantiles: levels of the quantile errors (empty to skip).
        precip_thresholds: twCRPS and FSS thresholds, mm h-1, for precipitation variables.
        fss_windows: FSS neighbourhood widths, pixels (odd).
        ssim: compute the SSIM of the ensemble mean (Gaussian-window, mask-aware).
        spectra: compute zonal spectra (lines with NaN are left out).
        density_bins: bins of the density histograms (edges fixed from the first chunk).
        map_size: longest side, pixels, of the display maps stored for the report.
        map_time: index of the time step whose maps are stored.
        seed: seed of the random tie-breaking of the rank histogram.
    """

    variables: Sequence[str] | None = None
    masks: Sequence[str] = ()
    time_chunk: int = 1
    area_weighted: bool = True
    quantiles: Sequence[float] = DEFAULT_QUANTILES
    precip_thresholds: Sequence[float] = (0.1, 1.0, 5.0)
    fss_windows: Sequence[int] = DEFAULT_WINDOWS
    ssim: bool = True
    spectra: bool = True
    density_bins: int = 100
    map_size: int = 256
    map_time: int = 0
    seed: int = 0


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------
def open_input(path: str | Path, *, kind: str | None) -> xr.Dataset:
    """Open a kmscale store (checking its kind), a plain zarr/NetCDF file of a user, or a
    directory/glob of HRCLDAS files (one per variable and hour, :mod:`kmscale.data.hrcldas`)."""
    from kmscale.data import hrcldas
    from kmscale.data.store import KIND_KEY, open_store

    if hrcldas.is_hrcldas(path):
        return hrcldas.open_hrcldas(path)
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: expected a zarr store or NetCDF file, found nothing")
    if path.is_dir():
        try:
            ds = xr.open_zarr(path, consolidated=False) if (path / "zarr.json").exists() else xr.open_zarr(path)
        except (ValueError, KeyError, OSError, FileNotFoundError) as err:
            raise SchemaError(f"{path}: expected a zarr store, found an unreadable directory ({err})") from err
        if KIND_KEY in ds.attrs:
            return open_store(path, kind=kind)
        return ds
    from kmscale.data.readers import detect_engine

    engine = detect_engine(path)
    try:
        return xr.open_dataset(path, engine=engine, chunks={})
    except (ValueError, OSError) as err:
        raise SchemaError(f"{path}: expected a NetCDF file, found an unreadable one ({err})") from err


def netcdf_engine() -> str:
    """Engine for writing NetCDF-4: h5netcdf needs h5py; else the netCDF4 library."""
    import importlib.util

    return "h5netcdf" if importlib.util.find_spec("h5py") else "netcdf4"


def _units_match(a: str, b: str) -> bool:
    from kmscale.data.variables import normalize_units

    na, nb = normalize_units(a), normalize_units(b)
    return (na or a.strip()) == (nb or b.strip())


def shared_variables(forecasts: Mapping[str, xr.Dataset], truth: xr.Dataset) -> list[str]:
    """Time-dependent truth variables that every forecast holds (what ``score`` scores by default)."""
    names = [v for v in truth.data_vars if "time" in truth[v].dims and all(v in f.data_vars for f in forecasts.values())]
    if not names:
        raise SchemaError(
            f"score: expected variables shared by forecast(s) and truth, found truth {list(truth.data_vars)} "
            f"and forecasts {[list(f.data_vars) for f in forecasts.values()]}"
        )
    return names


def _prepare(forecasts: Mapping[str, xr.Dataset], truth: xr.Dataset, opts: ScoreOptions):
    """Check inputs, pick variables, select truth times; return (variables, truth, units)."""
    if not forecasts:
        raise SchemaError("score: expected at least one forecast, found none")
    names = opts.variables if opts.variables is not None else shared_variables(forecasts, truth)
    units = {}
    for v in names:
        if v not in truth.data_vars:
            raise SchemaError(f"truth: expected variable {v!r}, found {list(truth.data_vars)}")
        tu = truth[v].attrs.get("units")
        if not tu:
            raise UnitsError(f"truth variable {v!r}: expected a 'units' attribute, found none")
        for name, f in forecasts.items():
            if v not in f.data_vars:
                raise SchemaError(f"forecast {name!r}: expected variable {v!r}, found {list(f.data_vars)}")
            da = f[v]
            if MEMBER_DIM not in da.dims:
                raise SchemaError(f"forecast {name!r} variable {v!r}: expected a {MEMBER_DIM!r} dim, found dims {da.dims}")
            if "time" not in da.dims:
                raise SchemaError(f"forecast {name!r} variable {v!r}: expected a 'time' dim, found dims {da.dims}")
            fu = da.attrs.get("units")
            if not fu:
                raise UnitsError(f"forecast {name!r} variable {v!r}: expected a 'units' attribute, found none")
            if not _units_match(fu, tu):
                raise UnitsError(f"forecast {name!r} variable {v!r}: expected units {tu!r} (the truth's), found {fu!r}")
        units[v] = str(tu)
    first = next(iter(forecasts.values()))
    times = first["time"].values
    for name, f in forecasts.items():
        if not np.array_equal(f["time"].values, times):
            raise AlignmentError(f"forecast {name!r}: expected the same times as the first forecast, found {f.sizes['time']} other times")
    missing = np.setdiff1d(times, truth["time"].values)
    if missing.size:
        raise AlignmentError(
            f"truth: expected every forecast time, found {missing.size} missing (first {missing[0]})"
        )
    truth = truth.sel(time=times)
    lead = None
    for name, f in forecasts.items():
        if "lead_time" in f.coords and f["lead_time"].dims == ("time",):
            if lead is not None and not np.array_equal(f["lead_time"].values, lead):
                raise AlignmentError(f"forecast {name!r}: expected the same lead_time at each time as the other forecasts, found different ones")
            lead = f["lead_time"].values
    if lead is None and "lead_time" in truth.coords and truth["lead_time"].dims == ("time",):
        lead = truth["lead_time"].values
    if lead is not None:
        truth = truth.assign_coords(lead_time=("time", lead))
    for name, f in forecasts.items():
        for v in names:
            check_aligned(f[v], truth[v], where=f"forecast {name!r} variable {v!r}")
    return list(names), truth, units


def _masks(truth: xr.Dataset, forecasts: Mapping[str, xr.Dataset], names: Sequence[str], ydim: str, xdim: str):
    out = {}
    for name in names:
        src = truth if name in truth.variables else next((f for f in forecasts.values() if name in f.variables), None)
        if src is None:
            raise SchemaError(f"mask {name!r}: expected a variable of the truth (or forecast) store, found {list(truth.variables)}")
        m = src[name]
        if set(m.dims) != {ydim, xdim}:
            raise SchemaError(f"mask {name!r}: expected dims ({ydim}, {xdim}), found {m.dims}")
        vals = np.asarray(m.transpose(ydim, xdim).values)
        out[name] = np.nan_to_num(vals.astype(float), nan=0.0) > 0.5
    return out


def _weights(truth: xr.Dataset, ydim: str, xdim: str, shape, area_weighted: bool) -> np.ndarray:
    if area_weighted and (ydim, xdim) == LATLON_DIMS and "lat" in truth.coords and truth["lat"].ndim == 1:
        w = np.clip(np.cos(np.deg2rad(truth["lat"].values.astype(float))), 0, None)
        return np.broadcast_to(w[:, None], shape)
    return np.ones(shape)


def _dx_km(truth: xr.Dataset, ydim: str, xdim: str) -> float:
    if (ydim, xdim) == LATLON_DIMS:
        lon = truth["lon"].values.astype(float)
        return float(EARTH_RADIUS_KM * np.cos(np.deg2rad(truth["lat"].values.astype(float).mean())) * np.deg2rad(abs(np.median(np.diff(lon)))))
    return grid_spacing_km(truth, xdim)


def _coarsen(field: np.ndarray, size: int) -> np.ndarray:
    f = max(1, int(np.ceil(max(field.shape) / size)))
    h, w = (field.shape[0] // f) * f, (field.shape[1] // f) * f
    with np.errstate(invalid="ignore"), _quiet():  # all-NaN blocks (outside a composite) stay NaN
        return np.nanmean(field[:h, :w].reshape(h // f, f, w // f, f), axis=(1, 3)) if f > 1 else field.astype(float)


# ---------------------------------------------------------------------------------------
# the scoring loop
# ---------------------------------------------------------------------------------------
def score(forecasts: Mapping[str, xr.Dataset], truth: xr.Dataset, opts: ScoreOptions | None = None, *, progress: bool = True) -> xr.Dataset:
    """Score each forecast ensemble against the truth; see the module doc for the output."""
    opts = opts or ScoreOptions()
    variables, truth, units = _prepare(forecasts, truth, opts)
    methods = list(forecasts)
    ydim, xdim = spatial_dims(truth[variables[0]], where="truth")
    ny, nx = truth.sizes[ydim], truth.sizes[xdim]
    times = truth["time"].values
    nt = times.size
    sizes = {m: int(forecasts[m].sizes[MEMBER_DIM]) for m in methods}
    mmax = max(sizes.values())
    regions = {"all": np.ones((ny, nx), bool), **_masks(truth, forecasts, opts.masks, ydim, xdim)}
    weights = _weights(truth, ydim, xdim, (ny, nx), opts.area_weighted)
    precip = [v for v in variables if _units_match(units[v], "mm h-1")]
    nq, nth, nw = len(opts.quantiles), len(opts.precip_thresholds), len(opts.fss_windows)
    nm, nv, nr = len(methods), len(variables), len(regions)

    def full(*shape):
        return np.full(shape, np.nan)

    per_time = {k: full(nm, nv, nr, nt) for k in PER_TIME}
    n_valid = np.zeros((nm, nv, nr, nt), dtype=np.int64)
    member_mse = full(nm, nv, nr, nt, mmax)
    qerr = full(nm, nv, nr, nt, nq)
    tw = full(nm, nv, nr, nt, nth)
    fss = full(nm, nv, nr, nt, nth, nw)
    ranks = np.zeros((nm, nv, nr, mmax + 1))
    spec_n = wavelengths_km(nx, 1.0).size
    spec = {k: np.zeros((nm, nv, spec_n)) for k in ("ensmean", "members")}
    spec_cnt = {k: np.zeros((nm, nv)) for k in ("ensmean", "members")}
    spec_truth, spec_truth_cnt = np.zeros((nv, spec_n)), np.zeros(nv)
    hists: dict = {}
    maps = {}
    map_t = min(max(opts.map_time, 0), nt - 1)

    chunks = [slice(s, min(s + opts.time_chunk, nt)) for s in range(0, nt, max(1, opts.time_chunk))]
    bar = tqdm(total=nt * nv, desc="scoring", unit="field", disable=not progress)
    for sl in chunks:
        for iv, v in enumerate(variables):
            y_chunk = np.asarray(truth[v].isel(time=sl).transpose("time", ydim, xdim).values)
            if opts.spectra:
                s, c = _line_spectra(y_chunk)
                spec_truth[iv] += s
                spec_truth_cnt[iv] += c
            for im, mname in enumerate(methods):
                e_chunk = np.asarray(
                    forecasts[mname][v].isel(time=sl).transpose("time", MEMBER_DIM, ydim, xdim).values
                )
                if v not in hists:
                    # Edges fixed once per variable, from the truth's first chunk widened by
                    # half its range; forecast values beyond them are counted as out of range.
                    hists[v] = (DensityHistogram(shared_edges(y_chunk, n_bins=opts.density_bins, margin=0.5)), {})
                ht, hfs = hists[v]
                if im == 0:
                    ht.add(y_chunk)
                hf = hfs.setdefault(mname, DensityHistogram(ht.edges))
                hf.add(e_chunk)
                for k in range(sl.stop - sl.start):
                    it = sl.start + k
                    e, y = e_chunk[k], y_chunk[k]
                    m = e.shape[0]
                    skill, pair_sum = crps_parts(e, y)
                    valid = np.isfinite(skill)
                    ensmean, var = _mean_var(e)
                    err = ensmean - y
                    rank = rank_of_truth(e, y, seed=opts.seed + it)
                    tw_fields = [twcrps(e, y, t) for t in opts.precip_thresholds] if v in precip else []
                    for ir, rmask in enumerate(regions.values()):
                        ok = valid & rmask
                        w = np.where(ok, weights, 0.0)
                        den = w.sum()
                        n_valid[im, iv, ir, it] = int(ok.sum())
                        if den == 0:
                            continue

                        def wmean(f, ok=ok, w=w, den=den):
                            return float((np.where(ok, f, 0.0) * w).sum() / den)

                        sk, ps = wmean(skill), wmean(pair_sum)
                        fair, std = spread_from_pair_sum(ps, m, fair=True), spread_from_pair_sum(ps, m, fair=False)
                        vals = {
                            "crps_fair": sk - 0.5 * fair, "crps_standard": sk - 0.5 * std, "crps_skill": sk,
                            "crps_spread_fair": fair, "crps_spread_standard": std,
                            "ensmean_mse": wmean(err * err), "ensmean_mae": wmean(np.abs(err)),
                            "ensmean_bias": wmean(err), "ens_variance": wmean(var) if m > 1 else np.nan,
                        }  # fmt: skip
                        if opts.ssim:
                            vals["ssim_ensmean"] = ssim_field(ensmean, y, valid=ok)
                        for key, val in vals.items():
                            per_time[key][im, iv, ir, it] = val
                        for j in range(m):
                            d = e[j] - y
                            member_mse[im, iv, ir, it, j] = wmean(d * d)
                        ranks[im, iv, ir, : m + 1] += np.bincount(rank[ok].astype(np.int64), minlength=m + 1)
                        if nq:
                            # e[:, ok] and y[ok] are fresh finite copies: let the quantile partition them in place.
                            qerr[im, iv, ir, it] = quantile_error(e[:, ok], y[ok], opts.quantiles, overwrite=True)
                        for a, field in enumerate(tw_fields):
                            tw[im, iv, ir, it, a] = wmean(field)
                            for b, win in enumerate(opts.fss_windows):
                                fss[im, iv, ir, it, a, b] = fss_field(e, y, opts.precip_thresholds[a], win, valid=ok)
                    if opts.spectra:
                        s, c = _line_spectra(ensmean[None])
                        spec["ensmean"][im, iv] += s
                        spec_cnt["ensmean"][im, iv] += c
                        s, c = _line_spectra(e)
                        spec["members"][im, iv] += s
                        spec_cnt["members"][im, iv] += c
                    if it == map_t:
                        maps.setdefault("truth", {})[v] = _coarsen(y, opts.map_size)
                        maps.setdefault("ensmean", {})[(mname, v)] = _coarsen(ensmean, opts.map_size)
                        maps.setdefault("members", {})[(mname, v)] = [_coarsen(e[j], opts.map_size) for j in range(min(2, m))]
            bar.update(sl.stop - sl.start)
    bar.close()

    ds = _assemble(
        methods, variables, list(regions), truth, units, sizes, per_time, n_valid, member_mse, qerr, tw, fss,
        ranks, spec, spec_cnt, spec_truth, spec_truth_cnt, hists, maps, precip, opts, ydim, xdim,
    )  # fmt: skip
    kinds = [forecasts[m].attrs.get(KIND_ATTR, "model") for m in methods]
    return ds.assign_coords(forecast_kind=("forecast", kinds, {"long_name": "model or baseline"}))


def _mean_var(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Member mean and unbiased variance of (M, H, W), looping over members.

    ``e.var(0)`` would hold an (M, H, W) temporary: 1 GB for 8 members of the full demo grid.
    """
    m = e.shape[0]
    mean = e[0].astype(e.dtype, copy=True)
    for j in range(1, m):
        mean += e[j]
    mean /= m
    if m < 2:
        return mean, np.full(mean.shape, np.nan, dtype=mean.dtype)
    var = np.zeros_like(mean)
    for j in range(m):
        d = e[j] - mean
        d *= d
        var += d
    var /= m - 1
    return mean, var


def _line_spectra(fields: np.ndarray) -> tuple[np.ndarray, int]:
    """Sum of zonal spectra over the NaN-free lines of (..., H, W) fields, and their count."""
    lines = fields.reshape(-1, fields.shape[-1])
    ok = np.isfinite(lines).all(-1)
    if not ok.any():
        return 0.0, 0
    total = np.zeros(fields.shape[-1] // 2)
    # Lines in blocks: the float64 spectra of a full 4384 x 6880 field at once cost 240 MB.
    idx = np.flatnonzero(ok)
    for s in range(0, idx.size, 1024):
        total += zonal_power_spectrum(lines[idx[s : s + 1024]]).sum(0)
    return total, int(idx.size)


def _assemble(methods, variables, regions, truth, units, sizes, per_time, n_valid, member_mse, qerr, tw, fss,
              ranks, spec, spec_cnt, spec_truth, spec_truth_cnt, hists, maps, precip, opts, ydim, xdim) -> xr.Dataset:  # fmt: skip
    base = ("forecast", "variable", "region")
    nt = truth.sizes["time"]
    coords = {
        "forecast": methods,
        "variable": variables,
        "region": regions,
        "time": truth["time"].values,
        "variable_units": ("variable", [units[v] for v in variables]),
        "ensemble_size": ("forecast", [sizes[m] for m in methods]),
    }
    lead = None
    ds = xr.Dataset(coords=coords)
    if "lead_time" in truth.coords and truth["lead_time"].dims == ("time",):
        lead = np.asarray(truth["lead_time"].values)
    ds = ds.assign_coords(member=np.arange(member_mse.shape[-1]), rank=np.arange(ranks.shape[-1]))
    if lead is not None:
        ds = ds.assign_coords(lead_time=("time", lead))
    desc = {
        "crps_fair": "fair (unbiased) CRPS, skill - spread_fair / 2",
        "crps_standard": "standard CRPS of the empirical ensemble distribution (properscoring's, biased)",
        "crps_skill": "CRPS skill part E|X - y|",
        "crps_spread_fair": "CRPS spread part E|X - X'| with 1/(M(M-1))",
        "crps_spread_standard": "CRPS spread part E|X - X'| with 1/M^2",
        "ensmean_mse": "mean squared error of the ensemble mean",
        "ensmean_mae": "mean absolute error of the ensemble mean",
        "ensmean_bias": "mean error (forecast - truth) of the ensemble mean",
        "ens_variance": "unbiased ensemble variance",
        "ssim_ensmean": "structural similarity of the ensemble mean to the truth",
    }
    squared = {"ensmean_mse", "ens_variance"}
    for k, arr in per_time.items():
        ds[k] = (base + ("time",), arr, _attrs(desc[k], "1" if k == "ssim_ensmean" else ("squared" if k in squared else "same")))
    ds["n_valid"] = (base + ("time",), n_valid, {"long_name": "number of valid points scored", "units": "1"})
    ds["member_mse"] = (base + ("time", "member"), member_mse, _attrs("mean squared error of each member", "squared"))
    ds = ds.assign_coords(quantile=list(opts.quantiles), threshold=list(opts.precip_thresholds), window=list(opts.fss_windows))
    ds["quantile_error"] = (base + ("time", "quantile"), qerr, _attrs("forecast minus truth quantile (members and space pooled)", "same"))
    if precip:
        ds["twcrps_fair"] = (base + ("time", "threshold"), tw, _attrs("fair threshold-weighted CRPS, weight 1{z >= threshold}", "same"))
        ds["fss"] = (base + ("time", "threshold", "window"), fss, {"long_name": "fractions skill score (ensemble event probability)", "units": "1"})
        ds["threshold"].attrs = {"units": "mm h-1", "long_name": "precipitation threshold"}
        ds["window"].attrs = {"units": "1", "long_name": "FSS neighbourhood width in pixels"}
    ds["rank_histogram"] = (base + ("rank",), np.where(ds["rank"].values[None, None, None, :] <= np.array([sizes[m] for m in methods])[:, None, None, None], ranks, np.nan),
                            {"long_name": "counts of the rank of the truth among the members (ties broken at random)", "units": "1"})  # fmt: skip

    # summaries by lead time (or over all times)
    groups = _lead_groups(lead, nt)
    ds = ds.assign_coords(lead_time_group=("lead_time_group", [g for g, _ in groups]))
    ds["lead_time_group"].attrs = {"long_name": "lead time of the summary (hours); NaN = all times", "units": "h"}
    sdims = base + ("lead_time_group",)

    def tmean(a):
        with np.errstate(invalid="ignore"), _quiet():
            return np.stack([np.nanmean(a[..., idx], axis=-1) for _, idx in groups], axis=-1)

    for k in PER_TIME:
        ds[f"summary_{k}"] = (sdims, tmean(per_time[k]), ds[k].attrs | {"long_name": "time mean of " + desc[k]})
    mse, var = tmean(per_time["ensmean_mse"]), tmean(per_time["ens_variance"])
    msize = np.array([sizes[m] for m in methods], dtype=float)[:, None, None, None]
    ds["summary_ensmean_rmse"] = (sdims, np.sqrt(mse), _attrs("RMSE of the ensemble mean (root of the time-mean MSE)", "same"))
    ds["summary_spread"] = (sdims, np.sqrt(var), _attrs("ensemble spread (root of the time-mean unbiased variance)", "same"))
    with np.errstate(invalid="ignore", divide="ignore"):
        ds["summary_spread_skill_ratio"] = (sdims, np.sqrt((msize + 1) / msize) * np.sqrt(var) / np.sqrt(mse),
                                            {"long_name": "spread-skill ratio sqrt((M+1)/M) spread / RMSE (1 = calibrated)", "units": "1"})  # fmt: skip

    if opts.spectra:
        dx = _dx_km(truth, ydim, xdim)
        ds = ds.assign_coords(wavenumber=np.arange(1, spec_truth.shape[-1] + 1))
        ds = ds.assign_coords(wavelength=("wavenumber", wavelengths_km(truth.sizes[xdim], dx), {"units": "km", "long_name": "wavelength"}))
        with np.errstate(invalid="ignore", divide="ignore"):
            ds["spectrum_truth"] = (("variable", "wavenumber"), spec_truth / spec_truth_cnt[:, None], _attrs("zonal power spectrum of the truth (NaN-free lines)", "squared"))
            ds["spectrum_ensmean"] = (("forecast", "variable", "wavenumber"), spec["ensmean"] / spec_cnt["ensmean"][..., None], _attrs("zonal power spectrum of the ensemble mean", "squared"))
            ds["spectrum_members"] = (("forecast", "variable", "wavenumber"), spec["members"] / spec_cnt["members"][..., None], _attrs("zonal power spectrum of the members (averaged)", "squared"))

    nb = opts.density_bins
    dens = np.full((len(methods), len(variables), nb), np.nan)
    dtruth = np.full((len(variables), nb), np.nan)
    centers = np.full((len(variables), nb), np.nan)
    lde = np.full((len(methods), len(variables)), np.nan)
    outside = np.full((len(methods), len(variables)), np.nan)
    for v, (ht, hfs) in hists.items():
        iv = variables.index(v)
        dtruth[iv], centers[iv] = ht.density(), 0.5 * (ht.edges[1:] + ht.edges[:-1])
        for mname, hf in hfs.items():
            im = methods.index(mname)
            dens[im, iv] = hf.density()
            lde[im, iv] = log_density_error(hf.density(), ht.density(), np.diff(ht.edges))
            outside[im, iv] = (hf.below + hf.above) / max(hf.total, 1)
    ds = ds.assign_coords(bin_center=(("variable", "bin"), centers))
    ds["density_truth"] = (("variable", "bin"), dtruth, {"long_name": "probability density of the truth", "units_note": "1 / units of the variable"})
    ds["density"] = (("forecast", "variable", "bin"), dens, {"long_name": "probability density of the members", "units_note": "1 / units of the variable"})
    ds["density_out_of_range"] = (("forecast", "variable"), outside, {"long_name": "share of member values outside the density bins", "units": "1"})
    ds["log_density_error"] = (("forecast", "variable"), lde, {"long_name": "truth-weighted mean |log10 density ratio|", "units": "1"})

    if maps:
        ref = next(iter(maps["truth"].values()))
        ds = ds.assign_coords(map_member=[0, 1], map_time=truth["time"].values[min(max(opts.map_time, 0), nt - 1)])
        shape = ref.shape
        mt = np.full((len(variables), *shape), np.nan)
        me = np.full((len(methods), len(variables), *shape), np.nan)
        mm = np.full((len(methods), len(variables), 2, *shape), np.nan)
        for v, a in maps["truth"].items():
            mt[variables.index(v)] = a
        for (mname, v), a in maps["ensmean"].items():
            me[methods.index(mname), variables.index(v)] = a
        for (mname, v), lst in maps["members"].items():
            for j, a in enumerate(lst):
                mm[methods.index(mname), variables.index(v), j] = a
        ds["map_truth"] = (("variable", "map_y", "map_x"), mt, _attrs("truth at map_time (block-averaged for display)", "same"))
        ds["map_ensmean"] = (("forecast", "variable", "map_y", "map_x"), me, _attrs("ensemble mean at map_time", "same"))
        ds["map_members"] = (("forecast", "variable", "map_member", "map_y", "map_x"), mm, _attrs("two members at map_time", "same"))
    ds.attrs = {
        "Conventions": "CF-1.10",
        "title": "kmscale ensemble scores",
        "source": f"kmscale {__version__}",
        "grid_dims": f"{ydim},{xdim}",
        "area_weighted": int(opts.area_weighted and (ydim, xdim) == LATLON_DIMS),
        "comment": "Per-time values are spatial means over valid points; summaries weight times equally. "
        "Scores are in the units of their variable (coordinate variable_units), or that unit squared where the attribute units says 'squared'.",
    }
    return ds


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def _lead_groups(lead: np.ndarray | None, nt: int) -> list[tuple[float, np.ndarray]]:
    groups = [(float("nan"), np.arange(nt))]
    if lead is not None:
        vals = lead.astype("timedelta64[h]").astype(float) if np.issubdtype(lead.dtype, np.timedelta64) else lead.astype(float)
        for u in np.unique(vals[np.isfinite(vals)]):
            groups.append((float(u), np.flatnonzero(vals == u)))
    return groups


def _attrs(long_name: str, units: str) -> dict:
    u = {"same": "units of the variable (see variable_units)", "squared": "square of the units of the variable", "1": "1"}[units]
    return {"long_name": long_name, "units_note": u} if units != "1" else {"long_name": long_name, "units": "1"}


def write_metrics(ds: xr.Dataset, path: str | Path) -> Path:
    """Write the metrics NetCDF atomically (temporary name, then rename)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    ds.to_netcdf(tmp, engine=netcdf_engine())
    os.replace(tmp, path)
    return path
