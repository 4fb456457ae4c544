"""``kmscale score`` and ``kmscale report``.

Only the standard library is imported at top level (``kmscale --help`` stays fast);
the handlers import xarray, numpy and matplotlib. Defaults live in
``kmscale.evaluation.scoring.ScoreOptions``; the flags here default to None and only
override what is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kmscale.data.distributed import add_scheduler_argument

SCORE_HELP = """\
Score one or more ensemble forecasts against the truth and write a metrics NetCDF.

Forecasts are ensemble stores of `kmscale sample` (kind "ensemble", dims (time,
member, lat, lon) or (time, member, y, x)) or any zarr/NetCDF with a `member` dim;
the truth is a `kmscale prepare` store (kind "targets") or any zarr/NetCDF on the same
grid. Every forecast time must be in the truth; grids must match exactly; variables
need `units`. The data are read one time chunk at a time, so memory stays near
time_chunk x members x grid x 4 bytes.

Metrics (per time, variable, method, region; plus summaries by lead time): fair CRPS
(the headline) and standard CRPS with skill/spread parts, ensemble-mean MSE/MAE/bias,
spread, spread-skill ratio (sqrt((M+1)/M) corrected), SSIM, member MSE, rank
histogram, 99/99.9 % quantile errors, zonal spectra (km wavelengths), densities; for
precipitation (units mm h-1) also threshold-weighted CRPS and fractions skill score.

Baselines: with --predictors (the coarse forecast the models were given), the
bilinear and bicubic interpolation of each target variable onto the truth's grid is
scored beside the models (one member: fair CRPS = MAE); this is on by default when the
predictors hold a scored variable. --baseline bilinear,bicubic asks for them
explicitly (then a variable the predictors lack is an error); --baseline none skips them.

examples:
  kmscale score --forecast ens.zarr --truth truth.zarr --out metrics.nc
  kmscale score --forecast ens.zarr --truth truth.zarr --predictors predictors.zarr \
      --baseline bilinear,bicubic --out metrics.nc
  kmscale score --forecast ldm=ens.zarr --forecast unet=ens_reg.zarr \\
      --truth truth.zarr --variables t2m,tp --mask land_sea_mask --out metrics.nc
"""

REPORT_HELP = """\
Turn a metrics NetCDF of `kmscale score` into a report (index.html or report.md) with
PNG figures: maps of truth, ensemble mean, two members and the error; zonal spectra;
rank histograms; box plots of ensemble-mean MSE and SSIM by lead time; spread-skill
and CRPS by lead time; log-density plots; a summary table. Several methods appear
side by side (several --metrics files are merged along `method`).

example:
  kmscale report --metrics metrics.nc --out report/
"""


def _floats(text: str) -> list[float]:
    try:
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, found {text!r}"
        ) from err


def _ints(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, found {text!r}"
        ) from err


def _named(text: str) -> tuple[str | None, str]:
    if "=" in text:
        name, path = text.split("=", 1)
        if not name or not path:
            raise argparse.ArgumentTypeError(f"expected NAME=PATH or PATH, found {text!r}")
        return name, path
    return None, text


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="score ensemble forecasts against the truth (CRPS, spectra, ...)",
        description=SCORE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--forecast", required=True, action="append", type=_named, metavar="[NAME=]PATH",
                   help="ensemble store or file; repeat for several methods "
                        "(NAME defaults to the file stem)")  # fmt: skip
    p.add_argument("--truth", required=True, help="truth store or file (same grid)")
    p.add_argument("--out", required=True, help="metrics NetCDF to write")
    p.add_argument(
        "--predictors", help="coarse predictors (zarr/NetCDF, time x lat x lon) for the baselines"
    )
    p.add_argument("--baseline", metavar="LIST",
                   help="interpolation baselines: bilinear,bicubic "
                        "(default with --predictors) or none")  # fmt: skip
    p.add_argument(
        "--variables",
        type=lambda s: [v for v in s.split(",") if v],
        help="comma-separated variables (default: all shared)",
    )
    p.add_argument("--mask", action="append", default=None, metavar="VAR",
                   help="truth variable defining an extra region (value > 0.5 = inside), "
                        "e.g. land_sea_mask; repeatable")  # fmt: skip
    p.add_argument("--time-chunk", type=int, help="time steps read at once (default 1)")
    p.add_argument(
        "--no-area-weights", action="store_true", help="do not weight lat-lon grids by cos(lat)"
    )
    p.add_argument(
        "--quantiles",
        type=_floats,
        help="quantile levels of the extreme errors (default 0.99,0.999)",
    )
    p.add_argument(
        "--precip-thresholds",
        type=_floats,
        help="twCRPS/FSS thresholds in mm h-1 (default 0.1,1,5)",
    )
    p.add_argument(
        "--fss-windows", type=_ints, help="FSS window widths in pixels, odd (default 1,5,11,25)"
    )
    p.add_argument("--no-ssim", action="store_true", help="skip SSIM")
    p.add_argument("--no-spectra", action="store_true", help="skip zonal spectra")
    p.add_argument(
        "--map-time", type=int, help="index of the time whose maps go in the file (default 0)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_scheduler_argument(p)
    p.set_defaults(func=run_score)

    r = subparsers.add_parser(
        "report", help="write an HTML/Markdown report with figures from metrics files",
        description=REPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    r.add_argument(
        "--metrics",
        required=True,
        action="append",
        metavar="PATH",
        help="metrics NetCDF; repeatable",
    )
    r.add_argument("--out", required=True, help="report directory")
    r.add_argument(
        "--format", choices=("html", "md"), default="html", help="index.html (default) or report.md"
    )
    r.add_argument("--title", default="kmscale evaluation report", help="report title")
    r.set_defaults(func=run_report)


def run_score(args: argparse.Namespace) -> int:
    import dataclasses

    from kmscale.errors import SchemaError
    from kmscale.evaluation.scoring import ScoreOptions, open_input, score, write_metrics

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SchemaError(
            f"{out}: expected no file at --out, found one (pass --overwrite to replace it)"
        )
    forecasts = {}
    for name, path in args.forecast:
        name = name or Path(path).name.split(".")[0]
        if name in forecasts:
            raise SchemaError(
                f"--forecast: expected distinct method names, found {name!r} twice (use NAME=PATH)"
            )
        forecasts[name] = open_input(path, kind="ensemble")
    truth = open_input(args.truth, kind="targets")
    forecasts.update(_baselines(args, forecasts, truth))
    given = {
        "variables": args.variables,
        "masks": args.mask,
        "time_chunk": args.time_chunk,
        "quantiles": args.quantiles,
        "precip_thresholds": args.precip_thresholds,
        "fss_windows": args.fss_windows,
        "map_time": args.map_time,
    }
    opts = ScoreOptions(**{k: v for k, v in given.items() if v is not None})
    opts = dataclasses.replace(
        opts,
        area_weighted=opts.area_weighted and not args.no_area_weights,
        ssim=opts.ssim and not args.no_ssim,
        spectra=opts.spectra and not args.no_spectra,
    )
    t0 = time.perf_counter()
    ds = score(forecasts, truth, opts, progress=not args.no_progress, scheduler=args.scheduler)
    ds.attrs["history"] = " ".join(["kmscale", *sys.argv[1:]]) if sys.argv else "kmscale score"
    ds.attrs["forecasts"] = ", ".join(
        f"{n}={p}" for n, p in ((n or Path(p).name.split(".")[0], p) for n, p in args.forecast)
    )
    ds.attrs["truth"] = str(args.truth)
    write_metrics(ds, out)
    head = ds["summary_crps_fair"].sel(region="all").isel(lead_time_group=0)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s; fair CRPS (all times, region all):")
    for m in head["forecast"].values:
        vals = ", ".join(
            f"{v}={float(head.sel(forecast=m, variable=v)):.4g} "
            f"{ds['variable_units'].sel(variable=v).item()}"
            for v in head["variable"].values
        )
        print(f"  {m}: {vals}")
    return 0


def _baselines(args: argparse.Namespace, forecasts: dict, truth) -> dict:
    """Baseline forecasts asked for (or on by default) by --predictors / --baseline."""
    import logging

    from kmscale.errors import SchemaError
    from kmscale.evaluation.baselines import BASELINES, baseline_forecasts, parse_baselines
    from kmscale.evaluation.scoring import open_input, shared_variables

    asked = parse_baselines(args.baseline)
    if args.predictors is None:
        if asked:
            raise SchemaError(
                f"--baseline {args.baseline}: expected --predictors to interpolate, found none"
            )
        return {}
    if asked == []:
        return {}
    predictors = open_input(args.predictors, kind="predictors")
    variables = args.variables or shared_variables(forecasts, truth)
    if asked is None and not any(v in predictors.data_vars for v in variables):
        logging.getLogger(__name__).info("no baselines: the predictors hold none of %s", variables)
        return {}
    clash = [m for m in (asked or BASELINES) if m in forecasts]
    if clash:
        raise SchemaError(
            f"--forecast: expected names other than the baselines', found {clash} (use NAME=PATH)"
        )
    times = next(iter(forecasts.values()))["time"].values
    return baseline_forecasts(
        predictors, truth, asked or BASELINES, variables, times, strict=asked is not None
    )


def run_report(args: argparse.Namespace) -> int:
    from kmscale.evaluation.report import load_metrics, write_report

    ds = load_metrics(args.metrics)
    path = write_report(ds, args.out, fmt=args.format, title=args.title)
    print(f"wrote {path}")
    return 0
