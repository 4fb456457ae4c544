"""Figures of a metrics Dataset (the output of ``scoring.score``), several methods side by side.

Each function takes the metrics Dataset and one variable name and returns a matplotlib
``Figure`` (Agg backend, no display needed); ``report.py`` saves them as PNG.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _units(ds: xr.Dataset, variable: str) -> str:
    return str(ds["variable_units"].sel(variable=variable).item())


def value_range(
    ds: xr.Dataset, variable: str, percentiles: tuple[float, float] = (1.0, 99.0)
) -> tuple[float, float]:
    """Robust colour range of the maps: percentiles of truth, ensemble means and members pooled.

    A scale taken from the truth alone paints a biased forecast in one flat colour.
    """
    parts = [
        ds[k].sel(variable=variable).values.ravel()
        for k in ("map_truth", "map_ensmean", "map_members")
    ]
    pooled = np.concatenate(parts)
    pooled = pooled[np.isfinite(pooled)]
    if not pooled.size:
        return 0.0, 1.0
    lo, hi = np.percentile(pooled, percentiles)
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 0.5, float(lo) + 0.5)


def maps(ds: xr.Dataset, variable: str) -> plt.Figure:
    """Truth, ensemble mean, two members and the ensemble-mean error, one row per method.

    Fields share one colour scale covering truth and forecasts (:func:`value_range`);
    the error has its own symmetric diverging scale (99th percentile of |error|).
    """
    methods = list(ds["forecast"].values)
    truth = ds["map_truth"].sel(variable=variable).values
    cols = ["truth", "ensemble mean", "member 0", "member 1", "ens. mean - truth"]
    fig, axes = plt.subplots(
        len(methods), 5, figsize=(16, 3.2 * len(methods)), squeeze=False, layout="constrained"
    )
    vmin, vmax = value_range(ds, variable)
    err_all = [ds["map_ensmean"].sel(forecast=m, variable=variable).values - truth for m in methods]
    emax = (
        max([np.nanpercentile(np.abs(e), 99) for e in err_all if np.isfinite(e).any()] or [1.0])
        or 1.0
    )
    for i, m in enumerate(methods):
        fields = [
            truth,
            ds["map_ensmean"].sel(forecast=m, variable=variable).values,
            ds["map_members"].sel(forecast=m, variable=variable, map_member=0).values,
            ds["map_members"].sel(forecast=m, variable=variable, map_member=1).values,
        ]
        for j, f in enumerate(fields):
            if j == 3 and not np.isfinite(f).any():  # a one-member forecast (e.g. a baseline)
                axes[i, j].text(
                    0.5, 0.5, "one member", ha="center", va="center", transform=axes[i, j].transAxes
                )
            im = axes[i, j].imshow(f, origin="lower", vmin=vmin, vmax=vmax, cmap="viridis")
            axes[i, j].set_title(f"{m}: {cols[j]}" if j else cols[j], fontsize=9)
        fig.colorbar(im, ax=axes[i, 3], shrink=0.8, label=_units(ds, variable))
        im = axes[i, 4].imshow(err_all[i], origin="lower", vmin=-emax, vmax=emax, cmap="RdBu_r")
        axes[i, 4].set_title(f"{m}: {cols[4]}", fontsize=9)
        fig.colorbar(im, ax=axes[i, 4], shrink=0.8, label=_units(ds, variable))
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    when = np.datetime_as_string(ds["map_time"].values, unit="h") if "map_time" in ds.coords else ""
    fig.suptitle(f"{variable} at {when} (block-averaged for display)")
    return fig


def _spectrum_figure(
    ds: xr.Dataset, variable: str, prefix: str, x: np.ndarray, keep: slice
) -> tuple[plt.Figure, plt.Axes]:
    """Truth, then each forecast's members (solid) and ensemble mean (dashed), of the
    spectra ``<prefix>_{truth,members,ensmean}`` against ``x``, entries ``keep``."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    truth = ds[f"{prefix}_truth"].sel(variable=variable).values[keep]
    ax.loglog(x, truth, color="k", lw=2, label="truth")
    for i, m in enumerate(ds["forecast"].values):
        c = COLORS[i % len(COLORS)]
        for key, ls, what in (("members", "-", "members"), ("ensmean", "--", "ens. mean")):
            power = ds[f"{prefix}_{key}"].sel(forecast=m, variable=variable).values[keep]
            ax.loglog(x, power, color=c, ls=ls, label=f"{m} {what}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax


def spectra(ds: xr.Dataset, variable: str) -> plt.Figure:
    """Zonal power spectra against wavelength (km): truth, members and ensemble mean."""
    fig, ax = _spectrum_figure(ds, variable, "spectrum", ds["wavelength"].values, slice(None))
    ax.invert_xaxis()
    ax.set_xlabel("wavelength (km)")
    ax.set_ylabel(f"power ({_units(ds, variable)})$^2$")
    ax.set_title(f"{variable}: zonal power spectrum")
    return fig


def angular_spectra(ds: xr.Dataset, variable: str) -> plt.Figure:
    """Angular power spectra C_l against degree l (HEALPix scores): truth, members, mean."""
    # l = 0 (the squared mean) is off a log axis's scale
    deg = ds["degree"].values[1:]
    fig, ax = _spectrum_figure(ds, variable, "angular_spectrum", deg, slice(1, None))
    ax.set_xlabel("spherical-harmonic degree l")
    ax.set_ylabel(f"C_l ({_units(ds, variable)})$^2$")
    ax.set_title(f"{variable}: angular power spectrum")
    return fig


def rank_histograms(ds: xr.Dataset, variable: str, region: str = "all") -> plt.Figure:
    """Rank histograms normalised so that a flat (calibrated) histogram is 1."""
    methods = list(ds["forecast"].values)
    fig, axes = plt.subplots(
        1, len(methods), figsize=(4 * len(methods), 3.2), squeeze=False, layout="constrained"
    )
    for i, m in enumerate(methods):
        h = ds["rank_histogram"].sel(forecast=m, variable=variable, region=region).values
        h = h[np.isfinite(h)]
        ax = axes[0, i]
        if h.sum() > 0:
            ax.bar(np.arange(h.size), h / h.sum() * h.size, color=COLORS[i % len(COLORS)])
        ax.axhline(1.0, color="k", lw=1)
        ax.set_title(f"{m} (M={h.size - 1})", fontsize=9)
        ax.set_xlabel("rank of truth")
    axes[0, 0].set_ylabel("frequency x (M+1)")
    fig.suptitle(f"{variable}: rank histograms ({region})")
    return fig


def _lead_labels(ds: xr.Dataset) -> tuple[list[str], list[np.ndarray]]:
    """Time indices of each lead time (or all times when there is none)."""
    if "lead_time" in ds.coords:
        lead = ds["lead_time"].values
        vals = (
            lead.astype("timedelta64[h]").astype(float)
            if np.issubdtype(lead.dtype, np.timedelta64)
            else lead.astype(float)
        )
        uniq = np.unique(vals[np.isfinite(vals)])
        return [f"{u:g} h" for u in uniq], [np.flatnonzero(vals == u) for u in uniq]
    return ["all"], [np.arange(ds.sizes["time"])]


def boxplots(ds: xr.Dataset, variable: str, region: str = "all") -> plt.Figure:
    """Box plots over times of ensemble-mean MSE and SSIM, by lead time, methods side by side."""
    labels, groups = _lead_labels(ds)
    methods = list(ds["forecast"].values)
    fig, axes = plt.subplots(
        1, 2, figsize=(max(8, 1.6 * len(labels) * len(methods)), 4), layout="constrained"
    )
    width = 0.8 / len(methods)
    for ax, key, name in (
        (axes[0], "ensmean_mse", f"MSE of ensemble mean ({_units(ds, variable)})$^2$"),
        (axes[1], "ssim_ensmean", "SSIM of ensemble mean"),
    ):
        for i, m in enumerate(methods):
            vals = ds[key].sel(forecast=m, variable=variable, region=region).values
            data = [vals[idx][np.isfinite(vals[idx])] for idx in groups]
            pos = np.arange(len(labels)) + (i - (len(methods) - 1) / 2) * width
            bp = ax.boxplot(
                data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=False
            )
            for patch in bp["boxes"]:
                patch.set_facecolor(COLORS[i % len(COLORS)])
                patch.set_alpha(0.6)
            ax.plot([], [], color=COLORS[i % len(COLORS)], lw=6, alpha=0.6, label=m)
        ax.set_xticks(np.arange(len(labels)), labels)
        ax.set_xlabel("lead time")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"{variable} ({region})")
    return fig


def by_lead_time(ds: xr.Dataset, variable: str, region: str = "all") -> plt.Figure:
    """Fair and standard CRPS, RMSE/spread and spread-skill ratio against lead time."""
    groups = ds["lead_time_group"].values
    idx = np.flatnonzero(np.isfinite(groups))
    x = groups[idx] if idx.size else np.array([0.0])
    idx = idx if idx.size else np.array([0])
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    for i, m in enumerate(ds["forecast"].values):
        c = COLORS[i % len(COLORS)]
        sel = dict(forecast=m, variable=variable, region=region)
        axes[0].plot(
            x, ds["summary_crps_fair"].sel(sel).values[idx], "o-", color=c, label=f"{m} fair"
        )
        axes[0].plot(
            x,
            ds["summary_crps_standard"].sel(sel).values[idx],
            "o:",
            color=c,
            label=f"{m} standard",
        )
        axes[1].plot(
            x, ds["summary_ensmean_rmse"].sel(sel).values[idx], "o-", color=c, label=f"{m} RMSE"
        )
        axes[1].plot(
            x, ds["summary_spread"].sel(sel).values[idx], "o--", color=c, label=f"{m} spread"
        )
        axes[2].plot(
            x, ds["summary_spread_skill_ratio"].sel(sel).values[idx], "o-", color=c, label=m
        )
    axes[2].axhline(1.0, color="k", lw=1)
    for ax, t in zip(axes, ("CRPS", "RMSE and spread", "spread-skill ratio"), strict=True):
        ax.set_title(
            f"{t} ({_units(ds, variable) if t != 'spread-skill ratio' else '1'})", fontsize=10
        )
        ax.set_xlabel("lead time (h)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{variable} ({region})")
    return fig


def densities(ds: xr.Dataset, variable: str) -> plt.Figure:
    """log10 probability density of truth and members (how extremes are judged)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    x = ds["bin_center"].sel(variable=variable).values
    with np.errstate(divide="ignore"):
        ax.plot(
            x,
            np.log10(ds["density_truth"].sel(variable=variable).values),
            color="k",
            lw=2,
            label="truth",
        )
        for i, m in enumerate(ds["forecast"].values):
            ax.plot(
                x,
                np.log10(ds["density"].sel(forecast=m, variable=variable).values),
                color=COLORS[i % len(COLORS)],
                label=str(m),
            )
    ax.set_xlabel(f"{variable} ({_units(ds, variable)})")
    ax.set_ylabel("log10 density")
    ax.set_title(f"{variable}: value distribution")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig
