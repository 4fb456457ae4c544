"""``kmscale demo-data``: write the built-in demo dataset (targets, predictors, static).

Only the standard library is imported at module level so ``kmscale --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)

_EPILOG = """\
outputs (under --out):
  targets.zarr     t2m (K), u10, v10 (m s-1), tp (mm h-1) on the 0.01 deg demo grid,
                   dims (time, lat, lon)
  predictors.zarr  coarse 0.25 deg forecast: t2m u10 v10 tp msl t850 u850 v850 z500 q850,
                   lead_time coordinate
  static.zarr      orography (m), land_sea_mask (1 = land, real GLOBE mask)
  (.nc files with --format netcdf). Zarr stores are atomic and resume after an interruption.
  hrcldas/         with --layout hrcldas: the targets also as HRCLDAS GRIB2 files, one per
                   variable and hour (VAR = TAIR, UWIN, VWIN, PRE), named
                   Z_NAFP_C_BABJ_<production>_P_HRCLDAS_RT_CHN_0P01_HOR-<VAR>-<YYYYMMDDHH>.GRB2;
                   `kmscale prepare` and `kmscale score --truth` read the folder

regions: 'small' (256 x 256 px around Taiwan), 'full' (4384 x 6880 px, 15-58.8N 75-143.8E),
  or LAT0,LON0,NY,NX (lower-left corner in degrees, size in 0.01 deg pixels), e.g. 27,97,512,512.

examples:
  kmscale demo-data --out data/demo
  kmscale demo-data --out /scratch/demo_full --region full --times 2023-07-01T00/2023-07-01T03
  kmscale demo-data --out data/demo --layout hrcldas
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo-data`` subcommand."""
    p = subparsers.add_parser(
        "demo-data",
        help="write the built-in synthetic km-scale demo dataset",
        description=(
            "Generate the built-in demo dataset: plausible km-scale weather over a window of a "
            "4384 x 6880 grid at 0.01 deg (15N 75E upward), with the real land-sea mask, and "
            "coarse 0.25 deg forecast predictors with lead-time-dependent errors. Deterministic "
            "from --seed; any window gives the same values as that window cut from the full grid."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--region", default="small", help="small | full | LAT0,LON0,NY,NX (default: small)"
    )
    p.add_argument(
        "--times",
        default="2023-07-01T00/2023-07-02T23",
        help="hourly valid times START/END, inclusive (default: 2023-07-01T00/2023-07-02T23)",
    )
    p.add_argument("--seed", type=int, default=0, help="weather seed (default: 0)")
    p.add_argument(
        "--lead-time",
        type=int,
        default=24,
        help="forecast lead of the predictors, hours (default: 24)",
    )
    p.add_argument("--format", choices=("zarr", "netcdf"), default="zarr", help="output format")
    p.add_argument(
        "--chunk",
        type=int,
        default=512,
        help="spatial chunk in pixels for computing and storing (default: 512)",
    )
    p.add_argument(
        "--layout",
        choices=("stores", "hrcldas"),
        default="stores",
        help="'hrcldas' also writes the targets as HRCLDAS GRIB2 files, one per variable and hour",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``kmscale demo-data``."""
    from kmscale.data.demo import DemoRegion, demo_times
    from kmscale.data.demo_write import write_demo
    from kmscale.errors import ConfigError

    if args.chunk < 32:
        raise ConfigError(f"--chunk: expected at least 32 pixels, found {args.chunk}")
    if args.lead_time < 0:
        raise ConfigError(f"--lead-time: expected hours >= 0, found {args.lead_time}")
    region = DemoRegion.parse(args.region)
    times = demo_times(args.times)
    logger.info(
        "demo data: region %s (%d x %d px, lat %.3f..%.3f, lon %.3f..%.3f), %d times, seed %d",
        args.region,
        region.ny,
        region.nx,
        region.lat[0],
        region.lat[-1],
        region.lon[0],
        region.lon[-1],
        len(times),
        args.seed,
    )
    paths = write_demo(
        args.out,
        region,
        times,
        seed=args.seed,
        lead_time_hours=args.lead_time,
        fmt=args.format,
        chunk=args.chunk,
        overwrite=args.overwrite,
    )
    if args.layout == "hrcldas":
        from kmscale.data.hrcldas import write_hrcldas
        from kmscale.data.store import open_store

        paths["targets"] = write_hrcldas(
            open_store(paths["targets"], kind="targets"),
            paths["targets"].parent / "hrcldas",
            if_exists="replace" if args.overwrite else "keep",
        )
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
