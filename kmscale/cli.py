"""The ``kmscale`` command.

Subcommands live next to the code they drive; each of those modules exposes
``register(subparsers)`` which adds its parsers and sets ``func`` (a callable taking
the parsed ``argparse.Namespace`` and returning an exit code). Those modules import
only the standard library at top level, so ``kmscale --help`` stays fast; the heavy
imports (torch, xarray) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from kmscale import __version__
from kmscale.errors import KmscaleError

# Modules that contribute subcommands, in the order the help lists them.
COMMAND_MODULES = (
    "kmscale.data.cli",  # prepare, inspect
    "kmscale.data.demo_cli",  # demo-data
    "kmscale.autoencoders.cli",  # encode, decode, compress
    "kmscale.autoencoders.superres",  # super-resolve (HEALPix, fsae)
    "kmscale.diffusion.cli",  # sample, demo
    "kmscale.evaluation.cli",  # score, report
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kmscale",
        description=(
            "Generative emulation of km-scale weather: prepare data, compress targets "
            "to latents, sample downscaled ensembles, score them."
        ),
    )
    parser.add_argument("--version", action="version", version=f"kmscale {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # a real missing dependency, not a missing module
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KmscaleError as err:
        print(f"kmscale {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
