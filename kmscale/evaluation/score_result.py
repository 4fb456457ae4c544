"""The result of ``kmscale score``: per-field scores accumulated over times, then a Dataset.

:class:`ScoreLayout` says what is scored (forecasts, variables, regions, the truth's
times and grid); :class:`ScoreAccumulator` collects each field's
:class:`~kmscale.evaluation.score_fields.FieldScores`, the streaming spectra, density
histograms and display maps, and :meth:`ScoreAccumulator.to_dataset` builds the
CF-described metrics Dataset (see :mod:`kmscale.evaluation.scoring` for its contents).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from kmscale import __version__
from kmscale.evaluation.base import LATLON_DIMS
from kmscale.evaluation.density import DensityHistogram, log_density_error, shared_edges
from kmscale.evaluation.score_fields import PER_TIME, FieldScores
from kmscale.evaluation.score_inputs import line_spacing_km
from kmscale.evaluation.spectra import wavelengths_km, zonal_power_spectrum

if TYPE_CHECKING:
    from kmscale.evaluation.scoring import ScoreOptions


DESCRIPTIONS = {
    "crps_fair": "fair (unbiased) CRPS, skill - spread_fair / 2",
    "crps_standard": (
        "standard CRPS of the empirical ensemble distribution (properscoring's, biased)"
    ),
    "crps_skill": "CRPS skill part E|X - y|",
    "crps_spread_fair": "CRPS spread part E|X - X'| with 1/(M(M-1))",
    "crps_spread_standard": "CRPS spread part E|X - X'| with 1/M^2",
    "ensmean_mse": "mean squared error of the ensemble mean",
    "ensmean_mae": "mean absolute error of the ensemble mean",
    "ensmean_bias": "mean error (forecast - truth) of the ensemble mean",
    "ens_variance": "unbiased ensemble variance",
    "ssim_ensmean": "structural similarity of the ensemble mean to the truth",
}


@dataclasses.dataclass
class ScoreLayout:
    """What one ``score`` call scores.

    Attributes:
        forecasts: forecast names (dim ``forecast``), with ``kinds`` ("model"/"baseline")
            and ``sizes`` (members).
        variables: scored variables, ``units`` of each, ``precip`` those in mm h-1.
        regions: region names ("all" first, then the masks).
        truth: the truth on the forecasts' times (its time, lead_time and grid coords).
        ydim, xdim: spatial dims.
        opts: the options of the call.
    """

    forecasts: list[str]
    kinds: list[str]
    sizes: dict[str, int]
    variables: list[str]
    units: dict[str, str]
    precip: list[str]
    regions: list[str]
    truth: xr.Dataset
    ydim: str
    xdim: str
    opts: ScoreOptions


@dataclasses.dataclass
class ScoreAccumulator:
    """Arrays of every score, filled field by field (NaN until filled).

    One accumulator holds the times ``times`` of the layout (default: all); ``score`` fills
    one per time chunk (in this process or on a dask worker) and :meth:`merge`s them, in time
    order, into the accumulator of all times, so the sums (spectra) are added in the same
    order wherever the chunks ran.

    Attributes:
        layout: what is scored.
        times: the times (indices into ``layout.truth``'s time) this accumulator holds
            (None: all).
        edges: density bin edges per variable (default: fixed from the first truth chunk
            added; chunks scored apart must share the edges of the period's first chunk).
    """

    layout: ScoreLayout
    times: slice | None = None
    edges: Mapping[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        L = self.layout
        nf, nv, nr = len(L.forecasts), len(L.variables), len(L.regions)
        self.start, stop, _ = (self.times or slice(None)).indices(L.truth.sizes["time"])
        nt = stop - self.start
        mmax = max(L.sizes.values())
        nth, nw = len(L.opts.precip_thresholds), len(L.opts.fss_windows)
        self.per_time = {k: np.full((nf, nv, nr, nt), np.nan) for k in PER_TIME}
        self.n_valid = np.zeros((nf, nv, nr, nt), dtype=np.int64)
        self.member_mse = np.full((nf, nv, nr, nt, mmax), np.nan)
        self.qerr = np.full((nf, nv, nr, nt, len(L.opts.quantiles)), np.nan)
        self.tw = np.full((nf, nv, nr, nt, nth), np.nan)
        self.fss = np.full((nf, nv, nr, nt, nth, nw), np.nan)
        self.ranks = np.zeros((nf, nv, nr, mmax + 1))
        n_spec = wavelengths_km(L.truth.sizes[L.xdim], 1.0).size
        self.spec = {k: np.zeros((nf, nv, n_spec)) for k in ("ensmean", "members")}
        self.spec_cnt = {k: np.zeros((nf, nv)) for k in ("ensmean", "members")}
        self.spec_truth, self.spec_truth_cnt = np.zeros((nv, n_spec)), np.zeros(nv)
        self.hists: dict[str, tuple[DensityHistogram, dict[str, DensityHistogram]]] = {}
        self.maps: dict = {}
        self.map_t = min(max(L.opts.map_time, 0), L.truth.sizes["time"] - 1)

    def add_truth(self, iv: int, y_chunk: np.ndarray) -> None:
        """Spectra and density of a (T, H, W) chunk of the truth of variable ``iv``."""
        v = self.layout.variables[iv]
        if self.layout.opts.spectra:
            s, c = _line_spectra(y_chunk)
            self.spec_truth[iv] += s
            self.spec_truth_cnt[iv] += c
        if v not in self.hists:
            edges = (
                self.edges[v]
                if self.edges is not None
                else density_edges(y_chunk, self.layout.opts.density_bins)
            )
            self.hists[v] = (DensityHistogram(edges), {})
        self.hists[v][0].add(y_chunk)

    def add_forecast(self, im: int, iv: int, e_chunk: np.ndarray) -> None:
        """Density of a (T, M, H, W) chunk of forecast ``im`` (after :meth:`add_truth`)."""
        ht, hfs = self.hists[self.layout.variables[iv]]
        hfs.setdefault(self.layout.forecasts[im], DensityHistogram(ht.edges)).add(e_chunk)

    def merge(self, other: ScoreAccumulator) -> None:
        """Add the scores of ``other``, an accumulator of some of this one's times."""
        t = slice(other.start - self.start, other.start - self.start + other.n_valid.shape[-1])
        for k, arr in other.per_time.items():
            self.per_time[k][..., t] = arr
        self.n_valid[..., t] = other.n_valid
        for mine, theirs in (
            (self.member_mse, other.member_mse),
            (self.qerr, other.qerr),
            (self.tw, other.tw),
            (self.fss, other.fss),
        ):
            mine[:, :, :, t] = theirs
        self.ranks += other.ranks
        for key in self.spec:
            self.spec[key] += other.spec[key]
            self.spec_cnt[key] += other.spec_cnt[key]
        self.spec_truth += other.spec_truth
        self.spec_truth_cnt += other.spec_truth_cnt
        for v, (ht, hfs) in other.hists.items():
            mine_t, mine_f = self.hists.setdefault(v, (DensityHistogram(ht.edges), {}))
            mine_t.merge(ht)
            for name, hf in hfs.items():
                mine_f.setdefault(name, DensityHistogram(ht.edges)).merge(hf)
        for kind, maps in other.maps.items():
            self.maps.setdefault(kind, {}).update(maps)

    def record(
        self, im: int, iv: int, it: int, fs: FieldScores, e: np.ndarray, y: np.ndarray
    ) -> None:
        """Store the scores of forecast ``im``, variable ``iv``, time ``it``.

        ``e`` (M, H, W) members and ``y`` (H, W) truth feed the spectra and maps.
        """
        m, t = e.shape[0], it - self.start
        for k, vals in fs.per_time.items():
            self.per_time[k][im, iv, :, t] = vals
        self.n_valid[im, iv, :, t] = fs.n_valid
        self.member_mse[im, iv, :, t, :m] = fs.member_mse
        self.ranks[im, iv, :, : m + 1] += fs.rank_counts
        self.qerr[im, iv, :, t] = fs.quantile_error
        if fs.twcrps.size:
            self.tw[im, iv, :, t] = fs.twcrps
            self.fss[im, iv, :, t] = fs.fss
        if self.layout.opts.spectra:
            for key, fields in (("ensmean", fs.ensmean[None]), ("members", e)):
                s, c = _line_spectra(fields)
                self.spec[key][im, iv] += s
                self.spec_cnt[key][im, iv] += c
        if it == self.map_t:
            f, v, size = (
                self.layout.forecasts[im],
                self.layout.variables[iv],
                self.layout.opts.map_size,
            )
            self.maps.setdefault("truth", {})[v] = _coarsen(y, size)
            self.maps.setdefault("ensmean", {})[(f, v)] = _coarsen(fs.ensmean, size)
            self.maps.setdefault("members", {})[(f, v)] = [
                _coarsen(e[j], size) for j in range(min(2, m))
            ]

    def to_dataset(self) -> xr.Dataset:
        """The CF-described metrics Dataset (module doc of :mod:`kmscale.evaluation.scoring`)."""
        L = self.layout
        coords = {
            "forecast": L.forecasts,
            "variable": L.variables,
            "region": L.regions,
            "time": L.truth["time"].values,
            "variable_units": ("variable", [L.units[v] for v in L.variables]),
            "ensemble_size": ("forecast", [L.sizes[m] for m in L.forecasts]),
        }
        lead = None
        ds = xr.Dataset(coords=coords)
        if "lead_time" in L.truth.coords and L.truth["lead_time"].dims == ("time",):
            lead = np.asarray(L.truth["lead_time"].values)
        ds = ds.assign_coords(
            member=np.arange(self.member_mse.shape[-1]), rank=np.arange(self.ranks.shape[-1])
        )
        if lead is not None:
            ds = ds.assign_coords(lead_time=("time", lead))
        ds = self._per_time(ds)
        ds = self._summaries(ds, lead)
        if L.opts.spectra:
            ds = self._spectra(ds)
        ds = self._densities(ds)
        if self.maps:
            ds = self._maps(ds)
        ds.attrs = {
            "Conventions": "CF-1.10",
            "title": "kmscale ensemble scores",
            "source": f"kmscale {__version__}",
            "grid_dims": f"{L.ydim},{L.xdim}",
            "area_weighted": int(L.opts.area_weighted and (L.ydim, L.xdim) == LATLON_DIMS),
            "comment": "Per-time values are spatial means over valid points; summaries weight "
            "times equally. Scores are in the units of their variable (coordinate "
            "variable_units), or that unit squared where the attribute units says 'squared'.",
        }

        return ds.assign_coords(
            forecast_kind=("forecast", L.kinds, {"long_name": "model or baseline"})
        )

    def _per_time(self, ds: xr.Dataset) -> xr.Dataset:
        """Per-time scores, member MSE, quantile errors, precipitation scores, rank histogram."""
        L, base, desc = self.layout, ("forecast", "variable", "region"), DESCRIPTIONS
        squared = {"ensmean_mse", "ens_variance"}
        for k, arr in self.per_time.items():
            ds[k] = (
                base + ("time",),
                arr,
                _attrs(
                    desc[k], "1" if k == "ssim_ensmean" else ("squared" if k in squared else "same")
                ),
            )
        ds["n_valid"] = (
            base + ("time",),
            self.n_valid,
            {"long_name": "number of valid points scored", "units": "1"},
        )
        ds["member_mse"] = (
            base + ("time", "member"),
            self.member_mse,
            _attrs("mean squared error of each member", "squared"),
        )
        ds = ds.assign_coords(
            quantile=list(L.opts.quantiles),
            threshold=list(L.opts.precip_thresholds),
            window=list(L.opts.fss_windows),
        )
        ds["quantile_error"] = (
            base + ("time", "quantile"),
            self.qerr,
            _attrs("forecast minus truth quantile (members and space pooled)", "same"),
        )
        if L.precip:
            ds["twcrps_fair"] = (
                base + ("time", "threshold"),
                self.tw,
                _attrs("fair threshold-weighted CRPS, weight 1{z >= threshold}", "same"),
            )
            ds["fss"] = (
                base + ("time", "threshold", "window"),
                self.fss,
                {"long_name": "fractions skill score (ensemble event probability)", "units": "1"},
            )
            ds["threshold"].attrs = {"units": "mm h-1", "long_name": "precipitation threshold"}
            ds["window"].attrs = {"units": "1", "long_name": "FSS neighbourhood width in pixels"}
        sizes = np.array([L.sizes[m] for m in L.forecasts])[:, None, None, None]
        in_range = ds["rank"].values[None, None, None, :] <= sizes  # rank 0..M of each forecast
        ds["rank_histogram"] = (
            base + ("rank",), np.where(in_range, self.ranks, np.nan),
            {"long_name": "counts of the rank of the truth among the members "
                          "(ties broken at random)",
             "units": "1"},
        )  # fmt: skip
        return ds

    def _summaries(self, ds: xr.Dataset, lead: np.ndarray | None) -> xr.Dataset:
        """Time means by lead time (NaN group: all times); spread-skill from the mean parts."""
        L, base, desc = self.layout, ("forecast", "variable", "region"), DESCRIPTIONS
        nt = L.truth.sizes["time"]
        groups = _lead_groups(lead, nt)
        ds = ds.assign_coords(lead_time_group=("lead_time_group", [g for g, _ in groups]))
        ds["lead_time_group"].attrs = {
            "long_name": "lead time of the summary (hours); NaN = all times",
            "units": "h",
        }
        sdims = base + ("lead_time_group",)

        def tmean(a):
            with np.errstate(invalid="ignore"), _quiet():
                return np.stack([np.nanmean(a[..., idx], axis=-1) for _, idx in groups], axis=-1)

        for k in PER_TIME:
            ds[f"summary_{k}"] = (
                sdims,
                tmean(self.per_time[k]),
                ds[k].attrs | {"long_name": "time mean of " + desc[k]},
            )
        mse, var = tmean(self.per_time["ensmean_mse"]), tmean(self.per_time["ens_variance"])
        msize = np.array([L.sizes[m] for m in L.forecasts], dtype=float)[:, None, None, None]
        ds["summary_ensmean_rmse"] = (
            sdims,
            np.sqrt(mse),
            _attrs("RMSE of the ensemble mean (root of the time-mean MSE)", "same"),
        )
        ds["summary_spread"] = (
            sdims,
            np.sqrt(var),
            _attrs("ensemble spread (root of the time-mean unbiased variance)", "same"),
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            ds["summary_spread_skill_ratio"] = (
                sdims, np.sqrt((msize + 1) / msize) * np.sqrt(var) / np.sqrt(mse),
                {"long_name": "spread-skill ratio sqrt((M+1)/M) spread / RMSE (1 = calibrated)",
                 "units": "1"},
            )  # fmt: skip
        return ds

    def _spectra(self, ds: xr.Dataset) -> xr.Dataset:
        """Zonal spectra of truth, ensemble means and members, with km wavelengths."""
        L = self.layout
        dx = line_spacing_km(L.truth, L.ydim, L.xdim)
        ds = ds.assign_coords(wavenumber=np.arange(1, self.spec_truth.shape[-1] + 1))
        ds = ds.assign_coords(
            wavelength=(
                "wavenumber",
                wavelengths_km(L.truth.sizes[L.xdim], dx),
                {"units": "km", "long_name": "wavelength"},
            )
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            ds["spectrum_truth"] = (
                ("variable", "wavenumber"),
                self.spec_truth / self.spec_truth_cnt[:, None],
                _attrs("zonal power spectrum of the truth (NaN-free lines)", "squared"),
            )
            ds["spectrum_ensmean"] = (
                ("forecast", "variable", "wavenumber"),
                self.spec["ensmean"] / self.spec_cnt["ensmean"][..., None],
                _attrs("zonal power spectrum of the ensemble mean", "squared"),
            )
            ds["spectrum_members"] = (
                ("forecast", "variable", "wavenumber"),
                self.spec["members"] / self.spec_cnt["members"][..., None],
                _attrs("zonal power spectrum of the members (averaged)", "squared"),
            )
        return ds

    def _densities(self, ds: xr.Dataset) -> xr.Dataset:
        """Densities of truth and members on shared bins, log-density error, out-of-range share."""
        L = self.layout
        nb = L.opts.density_bins
        dens = np.full((len(L.forecasts), len(L.variables), nb), np.nan)
        dtruth = np.full((len(L.variables), nb), np.nan)
        centers = np.full((len(L.variables), nb), np.nan)
        lde = np.full((len(L.forecasts), len(L.variables)), np.nan)
        outside = np.full((len(L.forecasts), len(L.variables)), np.nan)
        for v, (ht, hfs) in self.hists.items():
            iv = L.variables.index(v)
            dtruth[iv], centers[iv] = ht.density(), 0.5 * (ht.edges[1:] + ht.edges[:-1])
            for mname, hf in hfs.items():
                im = L.forecasts.index(mname)
                dens[im, iv] = hf.density()
                lde[im, iv] = log_density_error(hf.density(), ht.density(), np.diff(ht.edges))
                outside[im, iv] = (hf.below + hf.above) / max(hf.total, 1)
        ds = ds.assign_coords(bin_center=(("variable", "bin"), centers))
        ds["density_truth"] = (
            ("variable", "bin"),
            dtruth,
            {
                "long_name": "probability density of the truth",
                "units_note": "1 / units of the variable",
            },
        )
        ds["density"] = (
            ("forecast", "variable", "bin"),
            dens,
            {
                "long_name": "probability density of the members",
                "units_note": "1 / units of the variable",
            },
        )
        ds["density_out_of_range"] = (
            ("forecast", "variable"),
            outside,
            {"long_name": "share of member values outside the density bins", "units": "1"},
        )
        ds["log_density_error"] = (
            ("forecast", "variable"),
            lde,
            {"long_name": "truth-weighted mean |log10 density ratio|", "units": "1"},
        )
        return ds

    def _maps(self, ds: xr.Dataset) -> xr.Dataset:
        """Display maps at map_time: truth, ensemble means, two members."""
        L = self.layout
        nt = L.truth.sizes["time"]
        ref = next(iter(self.maps["truth"].values()))
        ds = ds.assign_coords(
            map_member=[0, 1], map_time=L.truth["time"].values[min(max(L.opts.map_time, 0), nt - 1)]
        )
        shape = ref.shape
        mt = np.full((len(L.variables), *shape), np.nan)
        me = np.full((len(L.forecasts), len(L.variables), *shape), np.nan)
        mm = np.full((len(L.forecasts), len(L.variables), 2, *shape), np.nan)
        for v, a in self.maps["truth"].items():
            mt[L.variables.index(v)] = a
        for (mname, v), a in self.maps["ensmean"].items():
            me[L.forecasts.index(mname), L.variables.index(v)] = a
        for (mname, v), lst in self.maps["members"].items():
            for j, a in enumerate(lst):
                mm[L.forecasts.index(mname), L.variables.index(v), j] = a
        ds["map_truth"] = (
            ("variable", "map_y", "map_x"),
            mt,
            _attrs("truth at map_time (block-averaged for display)", "same"),
        )
        ds["map_ensmean"] = (
            ("forecast", "variable", "map_y", "map_x"),
            me,
            _attrs("ensemble mean at map_time", "same"),
        )
        ds["map_members"] = (
            ("forecast", "variable", "map_member", "map_y", "map_x"),
            mm,
            _attrs("two members at map_time", "same"),
        )
        return ds


def density_edges(y_chunk: np.ndarray, n_bins: int) -> np.ndarray:
    """Density bin edges of one variable, fixed from the truth's first (T, H, W) chunk and
    widened by half its range; forecast values beyond them are counted as out of range."""
    return shared_edges(y_chunk, n_bins=n_bins, margin=0.5)


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


def _coarsen(field: np.ndarray, size: int) -> np.ndarray:
    """Block mean to at most ``size`` pixels a side (display maps); all-NaN blocks stay NaN."""
    f = max(1, int(np.ceil(max(field.shape) / size)))
    h, w = (field.shape[0] // f) * f, (field.shape[1] // f) * f
    if f == 1:
        return field.astype(float)
    with np.errstate(invalid="ignore"), _quiet():
        return np.nanmean(field[:h, :w].reshape(h // f, f, w // f, f), axis=(1, 3))


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
        vals = (
            lead.astype("timedelta64[h]").astype(float)
            if np.issubdtype(lead.dtype, np.timedelta64)
            else lead.astype(float)
        )
        for u in np.unique(vals[np.isfinite(vals)]):
            groups.append((float(u), np.flatnonzero(vals == u)))
    return groups


def _attrs(long_name: str, units: str) -> dict:
    u = {
        "same": "units of the variable (see variable_units)",
        "squared": "square of the units of the variable",
        "1": "1",
    }[units]
    return (
        {"long_name": long_name, "units_note": u}
        if units != "1"
        else {"long_name": long_name, "units": "1"}
    )
