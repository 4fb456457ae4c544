"""``kmscale prepare`` and ``kmscale inspect`` (standard-library imports only at top level)."""

from __future__ import annotations

import argparse

from kmscale.data.distributed import add_scheduler_argument

PREPARE_EPILOG = """\
example (the shared ERA5 UK data):
  kmscale prepare \\
      --targets ../shared/data/era5_uk_t2m_201903/era5_uk_t2m_20190301-24.nc \\
      --static ../shared/data/static/ukv_orography.nc \\
      --variables t2m --train-period 2019-03-01..2019-03-20 --out prepared/era5_uk

Interrupted? Run the same command again: finished chunks are kept. stats.json is written
last, so its presence means the preparation is complete.
"""


def _key_values(items: list[str] | None, flag: str) -> dict[str, str]:
    from kmscale.errors import ConfigError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{flag}: expected KEY=VALUE, found {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _names(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def _prepare_options(p: argparse.ArgumentParser) -> None:
    """Chunking, lead time, regridding and input fixes of ``prepare``."""
    p.add_argument("--chunk-time", type=int, metavar="N", help="time steps per chunk (default 24)")
    p.add_argument(
        "--chunk-space", type=int, metavar="N", help="spatial chunk edge in pixels (default 512)"
    )
    p.add_argument(
        "--lead-time",
        type=float,
        metavar="HOURS",
        help="forecast lead time to use from the predictors",
    )
    p.add_argument(
        "--static-method",
        choices=("area", "bilinear", "bicubic", "nearest"),
        help="regridding of static fields onto the target grid (default area)",
    )
    p.add_argument(
        "--mask-nans",
        action="store_true",
        help=(
            "allow NaNs outside a fixed footprint (radar composites); stored as the 'mask' "
            "coordinate"
        ),
    )
    p.add_argument(
        "--rename", nargs="+", metavar="FILE_NAME=CANONICAL", help="map file variable names"
    )
    p.add_argument(
        "--units", nargs="+", metavar="VAR=UNITS", help="override units attributes (e.g. t2m=degC)"
    )
    p.add_argument(
        "--no-range-check",
        action="store_true",
        help="accept values outside the variables' plausible ranges (exotic data)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace stores written from other inputs/options"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help=(
            "build canonical zarr stores (targets, predictors, static) and normalization statistics"
        ),
        description=(
            "Read NetCDF/GRIB/zarr inputs, convert them to canonical names, units and dims, pair "
            "predictors with targets by valid time, regrid static fields onto the target grid, fit "
            "normalization statistics on the training period, and write OUT/targets.zarr, "
            "OUT/predictors.zarr, OUT/static.zarr and OUT/stats.json. Resumable."
        ),
        epilog=PREPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--targets", nargs="+", required=True, metavar="GLOB", help="high-resolution target files"
    )
    p.add_argument(
        "--predictors",
        nargs="+",
        metavar="GLOB",
        help="coarse predictor files (forecasts or analyses)",
    )
    p.add_argument(
        "--static", nargs="+", metavar="GLOB", help="static fields (orography, land-sea mask)"
    )
    p.add_argument(
        "--variables",
        metavar="V1,V2",
        help="target variables, canonical names (default: all known)",
    )
    p.add_argument(
        "--predictor-variables", metavar="V1,V2", help="predictor variables (default: all known)"
    )
    p.add_argument(
        "--train-period",
        required=True,
        metavar="START..END",
        help="inclusive period the statistics are fitted on, e.g. 2019-03-01..2019-03-20",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    _prepare_options(p)
    add_scheduler_argument(p)
    p.set_defaults(func=_prepare)

    q = subparsers.add_parser(
        "inspect",
        help="show a file in kmscale's canonical form and list schema problems",
        description=(
            "Open FILE(s) as kmscale would and print the canonical dataset, its grid and any "
            "problems (exit status 1 when there are problems)."
        ),
    )
    q.add_argument("files", nargs="+", metavar="FILE")
    q.add_argument("--variables", metavar="V1,V2", help="variables required")
    q.add_argument("--allow-nan", action="store_true", help="do not report NaNs")
    q.add_argument("--rename", nargs="+", metavar="FILE_NAME=CANONICAL")
    q.add_argument("--units", nargs="+", metavar="VAR=UNITS")
    q.set_defaults(func=_inspect)


def _prepare(args: argparse.Namespace) -> int:
    from kmscale.data.pairing import parse_period
    from kmscale.data.prepare import PrepareOptions, prepare

    opts = PrepareOptions(
        variables=_names(args.variables),
        predictor_variables=_names(args.predictor_variables),
        train_period=parse_period(args.train_period),
        lead_time=args.lead_time,
        mask_nans=args.mask_nans,
        rename=_key_values(args.rename, "--rename"),
        units=_key_values(args.units, "--units"),
        check_range=not args.no_range_check,
        scheduler=args.scheduler,
        overwrite=args.overwrite,
    )
    for key in ("chunk_time", "chunk_space", "static_method"):
        value = getattr(args, key)
        if value is not None:
            setattr(opts, key, value)
    result = prepare(
        args.targets,
        args.out,
        predictors=args.predictors,
        static=args.static,
        options=opts,
        progress=not args.no_progress,
    )
    for kind, path in result.stores.items():
        print(f"{kind:>10}: {path}")
    print(f"{'stats':>10}: {result.out_dir / 'stats.json'}  (fingerprint {result.fingerprint})")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from kmscale.data.grids import grid_of
    from kmscale.data.readers import open_dataset, schema_problems
    from kmscale.errors import GridError

    # values out of range are listed with the other problems below, not raised on opening
    ds = open_dataset(
        args.files,
        rename=_key_values(args.rename, "--rename"),
        units=_key_values(args.units, "--units"),
        check_range=False,
    )
    print(ds)
    try:
        print(f"grid: {grid_of(ds)!r}")
    except GridError as err:
        print(f"grid: none ({err})")
    problems = schema_problems(ds, _names(args.variables), allow_nan=args.allow_nan)
    for name, da in ds.data_vars.items():
        print(
            f"  {name:<14} {da.attrs.get('units', '?'):<8} dims={da.dims} from "
            f"{da.attrs.get('source_name')!r}"
        )
    if problems:
        print(f"{len(problems)} problem(s):")
        for prob in problems:
            print(f"  - {type(prob).__name__}: {prob}")
        return 1
    print("schema: ok")
    return 0
