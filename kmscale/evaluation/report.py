"""HTML or Markdown report of one or more metrics files, with PNG figures.

``write_report(load_metrics(["metrics.nc"]), "report/")`` writes ``report/index.html``
(or ``report.md``) and ``report/figures/*.png``: a ranking of every forecast (models and
interpolation baselines) by fair CRPS per variable, a summary table per region and, per
variable, maps, CRPS/spread-skill by lead time, box plots of MSE and SSIM by lead time,
zonal spectra, rank histograms and log-density plots. Methods appear side by side.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from kmscale.data.readers import detect_engine
from kmscale.errors import SchemaError

# Columns of the summary table: (variable in the metrics file, header, format).
SUMMARY_COLUMNS = (
    ("summary_crps_fair", "CRPS fair", "{:.4g}"),
    ("summary_crps_standard", "CRPS standard", "{:.4g}"),
    ("summary_ensmean_rmse", "RMSE ens. mean", "{:.4g}"),
    ("summary_spread", "spread", "{:.4g}"),
    ("summary_spread_skill_ratio", "spread/skill", "{:.3f}"),
    ("summary_ensmean_bias", "bias", "{:.3g}"),
    ("summary_ssim_ensmean", "SSIM", "{:.3f}"),
    ("log_density_error", "log-density err.", "{:.3f}"),
)


def load_metrics(paths: Sequence[str | Path]) -> xr.Dataset:
    """Open metrics files and merge them along ``method`` (names must be distinct)."""
    dsets = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise SchemaError(f"{p}: expected a metrics NetCDF of `kmscale score`, found nothing")
        ds = xr.open_dataset(p, engine=detect_engine(p)).load()
        if "summary_crps_fair" not in ds:
            raise SchemaError(
                f"{p}: expected a metrics file of `kmscale score` (summary_crps_fair), found "
                f"variables {list(ds.data_vars)[:8]}"
            )
        dsets.append(ds)
    if len(dsets) == 1:
        return dsets[0]
    names = [m for d in dsets for m in d["forecast"].values]
    if len(set(names)) != len(names):
        raise SchemaError(
            f"report: expected distinct method names across metrics files, found {names}"
        )
    per_method = [v for v in dsets[0].data_vars if "forecast" in dsets[0][v].dims]
    merged = xr.concat(
        [d[per_method] for d in dsets],
        dim="forecast",
        join="outer",
        coords="different",
        compat="equals",
    )
    shared = dsets[0].drop_vars(per_method)
    return xr.merge([shared, merged], compat="override", join="outer")


def _cell(ds: xr.Dataset, key: str, method, variable, region: str, fmt: str) -> str:
    if key not in ds:
        return ""
    da = ds[key].sel(forecast=method, variable=variable)
    if "region" in da.dims:
        da = da.sel(region=region)
    if "lead_time_group" in da.dims:
        da = da.isel(lead_time_group=0)
    return _fmt(float(da), fmt)


def forecast_kinds(ds: xr.Dataset) -> dict[str, str]:
    """``{forecast: "model" | "baseline"}`` (files without ``forecast_kind``: all models)."""
    names = [str(m) for m in ds["forecast"].values]
    if "forecast_kind" not in ds.coords:
        return dict.fromkeys(names, "model")
    return {n: str(k) for n, k in zip(names, ds["forecast_kind"].values, strict=True)}


def ranking_rows(ds: xr.Dataset, region: str = "all") -> tuple[list[str], list[list[str]]]:
    """The headline table: per variable, every forecast ranked by fair CRPS (all times).

    ``vs best baseline`` is the forecast's fair CRPS over that of the best (lowest)
    baseline of the variable (below 1: better than interpolating the predictors).
    """
    header = [
        "variable",
        "rank",
        "forecast",
        "kind",
        "CRPS fair",
        "MAE ens. mean",
        "vs best baseline",
    ]
    kinds = forecast_kinds(ds)
    crps = ds["summary_crps_fair"].sel(region=region).isel(lead_time_group=0)
    rows = []
    for v in map(str, ds["variable"].values):
        vals = {str(m): float(crps.sel(forecast=m, variable=v)) for m in ds["forecast"].values}
        base = [x for m, x in vals.items() if kinds[m] == "baseline" and np.isfinite(x)]
        best = min(base) if base else float("nan")
        order = sorted(vals, key=lambda m: (not np.isfinite(vals[m]), vals[m]))
        units = str(ds["variable_units"].sel(variable=v).item())
        for rank, m in enumerate(order, 1):
            ratio = (
                vals[m] / best
                if np.isfinite(best) and best > 0 and np.isfinite(vals[m])
                else float("nan")
            )
            rows.append([
                f"{v} ({units})", str(rank), m, kinds[m], _fmt(vals[m], "{:.4g}"),
                _cell(ds, "summary_ensmean_mae", m, v, region, "{:.4g}"),
                "" if not np.isfinite(ratio) else f"{ratio:.3f}",
            ])  # fmt: skip
    return header, rows


def _fmt(x: float, fmt: str) -> str:
    return "NaN" if not np.isfinite(x) else fmt.format(x)


def summary_rows(ds: xr.Dataset, region: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows (forecast, variable, units, scores...) of the all-times summary table."""
    header = ["forecast", "variable", "units"] + [h for _, h, _ in SUMMARY_COLUMNS]
    rows = []
    for v in ds["variable"].values:
        for m in ds["forecast"].values:
            units = str(ds["variable_units"].sel(variable=v).item())
            rows.append(
                [str(m), str(v), units]
                + [_cell(ds, k, m, v, region, f) for k, _, f in SUMMARY_COLUMNS]
            )
    return header, rows


# Figures of each variable's section: (metrics variable they need or None, caption,
# kmscale.evaluation.plots function, file suffix).
FIGURES = [
    ("map_truth", "Truth, ensemble mean, two members and ensemble-mean error", "maps", "maps"),
    (
        None,
        "Fair and standard CRPS, RMSE and spread, spread-skill ratio by lead time",
        "by_lead_time",
        "lead",
    ),
    (None, "Box plots over times of ensemble-mean MSE and SSIM by lead time", "boxplots", "box"),
    ("spectrum_truth", "Zonal power spectra", "spectra", "spectra"),
    (
        "angular_spectrum_truth",
        "Angular (spherical-harmonic) power spectra",
        "angular_spectra",
        "angular_spectra",
    ),
    (None, "Rank histograms (flat = calibrated; U = under-dispersed)", "rank_histograms", "rank"),
    (None, "Log-density of values (extremes)", "densities", "density"),
]


def write_report(
    ds: xr.Dataset,
    out_dir: str | Path,
    *,
    fmt: str = "html",
    title: str = "kmscale evaluation report",
) -> Path:
    """Write the figures and the report page; returns the page's path."""
    from kmscale.evaluation import plots

    if fmt not in ("html", "md"):
        raise ValueError(f"report: expected format 'html' or 'md', found {fmt!r}")
    out = Path(out_dir)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, list[tuple[str, str]]]] = []  # (heading, [(caption, file)])

    def save(fig, name: str) -> str:
        import matplotlib.pyplot as plt

        path = figdir / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return f"figures/{path.name}"

    for v in map(str, ds["variable"].values):
        figs = [
            (caption, save(getattr(plots, plot)(ds, v), f"{v}_{suffix}"))
            for needs, caption, plot, suffix in FIGURES
            if needs is None or needs in ds
        ]
        sections.append((v, figs))

    tables = [(r, *summary_rows(ds, r)) for r in map(str, ds["region"].values)]
    ranking = ranking_rows(ds, "all")
    if "baseline" not in forecast_kinds(ds).values():
        ranking_note = (
            "No baseline was scored (give `kmscale score --predictors` to score interpolation)."
        )
    else:
        ranking_note = (
            "Every forecast ranked by fair CRPS (all times, region all); 'vs best baseline' is its "
            "fair CRPS over the best interpolation baseline's (below 1 = better than interpolating "
            "the coarse predictors)."
        )
    meta = {k: ds.attrs.get(k, "") for k in ("history", "forecasts", "truth", "source")}
    if fmt == "html":
        page = out / "index.html"
        page.write_text(_html(title, ranking, ranking_note, tables, sections, meta))
    else:
        page = out / "report.md"
        page.write_text(_markdown(title, ranking, ranking_note, tables, sections, meta))
    return page


def _html(title, ranking, note, tables, sections, meta) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#eee}img{max-width:100%}figcaption{color:#444;margin-bottom:1.5em}"
        "</style></head><body>",
        f"<h1>{e(title)}</h1>",
        "<p>Scores over all times. Fair CRPS is the headline (unbiased for the ensemble size); the "
        "standard CRPS of the empirical distribution is shown for comparison with tools that "
        "report it.</p>",
    ]
    parts.append(
        "<ul>"
        + "".join(f"<li><b>{e(k)}</b>: {e(str(v))}</li>" for k, v in meta.items() if v)
        + "</ul>"
    )
    parts.append(f"<h2>Ranking</h2><p>{e(note)}</p>{_html_table(*ranking)}<h2>Summary</h2>")
    for region, header, rows in tables:
        parts.append(f"<h3>Region: {e(region)}</h3>{_html_table(header, rows)}")
    for heading, figs in sections:
        parts.append(f"<h2>{e(heading)}</h2>")
        parts.extend(
            f"<figure><img src='{e(f)}' alt='{e(c)}'><figcaption>{e(c)}</figcaption></figure>"
            for c, f in figs
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_table(header, rows) -> str:
    def row(tag, cells):
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

    return "<table>" + row("th", header) + "".join(row("td", r) for r in rows) + "</table>"


def _markdown(title, ranking, note, tables, sections, meta) -> str:
    lines = [f"# {title}", "", "Scores over all times; fair CRPS is the headline.", ""]
    lines += [f"- **{k}**: {v}" for k, v in meta.items() if v] + [""]
    header, rows = ranking
    lines += [
        "## Ranking",
        "",
        note,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows] + ["", "## Summary", ""]
    for region, header, rows in tables:
        lines += [
            f"### Region: {region}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    for heading, figs in sections:
        lines += [f"## {heading}", ""]
        for c, f in figs:
            lines += [f"![{c}]({f})", "", f"*{c}*", ""]
    return "\n".join(lines)
