"""``kmscale encode``, ``kmscale decode`` and ``kmscale compress``.

Only stdlib imports at top level."""

from __future__ import annotations

import argparse

from kmscale.data.distributed import add_scheduler_argument

EPILOG = """\
examples:
  kmscale encode --autoencoder runs/vae_t2m/best --input prepared/era5_uk/targets.zarr \\
      --out latents/era5_uk_t2m.zarr
  kmscale decode --autoencoder runs/vae_t2m/best --input latents/era5_uk_t2m.zarr \\
      --out decoded/era5_uk_t2m.zarr
  kmscale decode --autoencoder runs/demo/vae/autoencoder --input runs/demo/latents.zarr \\
      --out decoded/wind.zarr --variables u10,v10     # one group of a grouped autoencoder

A grouped autoencoder (one model per variable group, config.json listing the groups)
encodes to one concatenated latent store; the groups come from its directory.
  kmscale compress --autoencoder runs/vae_t2m/best --input prepared/era5_uk/targets.zarr \\
      --out archive/era5_uk_t2m.zarr --quantize 0.05 --verify 24
  kmscale compress --codec hyperprior --autoencoder runs/hyperprior_t2m --input era5.nc \\
      --out era5_t2m.kmsc --max-error 0.1
  kmscale decompress --autoencoder runs/hyperprior_t2m --input era5_t2m.kmsc --out t2m.nc

Interrupted? Run the same command again: finished time chunks are kept.
"""


def _tails_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tails",
        type=float,
        default=None,
        metavar="RES",
        help=(
            "also store per-field tail offsets in steps of RES (the variables' units, e.g. 0.01 "
            "for K): decoding then restores each field's quantiles from 0.05 to 99.95 %% and its "
            "extremes (24 int8 per field and variable; encoding decodes every chunk once more)"
        ),
    )


def _tiling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tile",
        default="auto",
        metavar="N|auto|none",
        help="pixel tile edge for fields too large for one pass (multiple of the downsample "
        "factor); 'auto' tiles only fields larger than one default tile "
        "(kmscale.autoencoders.tiling.Tiling); 'none' never tiles",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=None,
        metavar="N",
        help="pixel overlap between tiles (default: Tiling.overlap); 3/8 of it is "
        "discarded at tile edges, which must cover the receptive radius (112 px "
        "for the default VAE) for tiles to match the untiled result",
    )
    p.add_argument(
        "--batch-size", type=int, default=4, metavar="N", help="tiles/fields per network call"
    )
    p.add_argument(
        "--chunk", type=int, default=8, metavar="N", help="time steps per zarr chunk (default 8)"
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1 ...)")
    p.add_argument("--overwrite", action="store_true", help="replace a complete store at --out")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_scheduler_argument(p)


def _command(subparsers, name: str, help: str, description: str, inp: str, out: str):
    """A sub-command reading ``--input`` with ``--autoencoder`` and writing ``--out``."""
    p = subparsers.add_parser(
        name,
        help=help,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=description,
    )
    p.add_argument("--autoencoder", required=True, metavar="DIR", help="save_pretrained directory")
    p.add_argument("--input", required=True, metavar="PATH", help=inp)
    p.add_argument("--out", required=True, metavar="PATH", help=out)
    return p


def _compress_args(p: argparse.ArgumentParser) -> None:
    """Quantization, verification and the entropy-coded archive options of ``compress``."""
    p.add_argument(
        "--quantize",
        type=float,
        default=None,
        metavar="STEP",
        help="quantization step in normalized latent units (default 0.05; with --codec "
        "the model's default: 0.05, or 1 latent unit for the hyperprior)",
    )
    p.add_argument(
        "--verify", type=int, default=0, metavar="N", help="decode N times and report errors"
    )
    p.add_argument(
        "--codec",
        default=None,
        metavar="NAME",
        help="write an entropy-coded archive file (versioned, checksummed) with the "
        "autoencoder registered as NAME (hyperprior, vae, identity ...) instead of a "
        "latent store",
    )
    p.add_argument(
        "--max-error",
        type=float,
        default=None,
        metavar="E",
        help="with --codec: add a residual so that |error| <= E for every value "
        "(the variables' units), checked while encoding",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = _command(
        subparsers,
        "encode",
        "encode a targets store to a latent zarr store",
        "Encode every time of a targets dataset (kmscale targets store, zarr or NetCDF) with a "
        "trained autoencoder into a latent store chunked by time, recording the autoencoder "
        "fingerprint, latent statistics and NaN mask. Resumable; atomic on completion.",
        "targets store / NetCDF file",
        "latent store to write (.zarr)",
    )
    p.add_argument(
        "--quantize",
        type=float,
        default=None,
        metavar="STEP",
        help="store integers round(z/STEP) (normalized latent units, e.g. 0.05) instead of float16",
    )
    _tails_arg(p)
    _tiling_args(p)
    p.set_defaults(func=run_encode)

    p = _command(
        subparsers,
        "decode",
        "decode a latent store back to physical fields",
        "Decode a latent store with the autoencoder that wrote it (checked by fingerprint) "
        "into a targets store with CF attributes; masked points come back as NaN.",
        "latent store (.zarr)",
        "targets store to write (.zarr)",
    )
    p.add_argument(
        "--variables",
        default=None,
        metavar="V1,V2",
        help="decode only the variable groups holding these variables (a grouped autoencoder "
        "decodes each group with its own part); default: every variable",
    )
    _tiling_args(p)
    p.set_defaults(func=run_decode)

    p = _command(
        subparsers,
        "compress",
        "encode with quantized latents and report the compression ratio",
        "Encode to a quantized, zstd-coded latent store and report bytes on disk against the "
        "original store and against raw float32; --verify N decodes the first N times and "
        "reports RMSE and maximum error per variable.",
        "targets store / NetCDF file",
        "latent store to write (.zarr)",
    )
    _compress_args(p)
    _tails_arg(p)
    _tiling_args(p)
    p.set_defaults(func=run_compress)

    p = _command(
        subparsers,
        "decompress",
        "restore CF fields from an archive written by compress --codec",
        "Decode every field of an archive with the model that wrote it (checked by "
        "name and fingerprint) to NetCDF (.nc) or zarr. Damaged chunks are named; "
        "their fields are NaN and the exit status is 1.",
        "archive file",
        "fields to write (.nc or .zarr)",
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1 ...)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run_decompress)


def _load(args):
    import torch

    from kmscale.autoencoders import load_autoencoder

    model = load_autoencoder(args.autoencoder).to(torch.device(args.device)).eval()
    return model


def _tiling(args, shape, factor):
    from kmscale.autoencoders.tiling import Tiling, auto_tiling
    from kmscale.errors import ConfigError

    overlap = Tiling.overlap if args.overlap is None else args.overlap
    if args.tile == "none":
        return None, 0
    if args.tile == "auto":
        return auto_tiling(shape, factor, overlap=overlap)
    try:
        return int(args.tile), overlap
    except ValueError as err:
        raise ConfigError(
            f"--tile: expected an integer, 'auto' or 'none', found {args.tile!r}"
        ) from err


def _encode(args, quantize):
    from kmscale.autoencoders.latent_store import _spatial_dims, encode_to_store, open_targets

    model = _load(args)
    ds = open_targets(args.input)
    ydim, xdim = _spatial_dims(ds, list(model.variables), str(args.input))
    tile, overlap = _tiling(args, (ds.sizes[ydim], ds.sizes[xdim]), model.downsample_factor)
    out = encode_to_store(
        model,
        ds,
        args.out,
        chunk=args.chunk,
        quantization_step=quantize,
        tile=tile,
        overlap=overlap,
        batch_size=args.batch_size,
        tail_resolution=args.tails,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        scheduler=args.scheduler,
    )
    return model, ds, out


def run_encode(args: argparse.Namespace) -> int:
    _, _, out = _encode(args, args.quantize)
    print(f"wrote {out}")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from kmscale.autoencoders.latent_store import decode_store, open_latents

    model = _load(args)
    ds = open_latents(args.input, model)
    import json

    shape = json.loads(ds.attrs["field_shape"])
    tile, overlap = _tiling(args, shape, model.downsample_factor)
    variables = [v for v in args.variables.split(",") if v] if args.variables else None
    out = decode_store(
        args.input,
        model,
        args.out,
        chunk=args.chunk,
        tile=tile,
        overlap=overlap,
        batch_size=args.batch_size,
        variables=variables,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        scheduler=args.scheduler,
    )
    print(f"wrote {out}")
    return 0


def run_compress(args: argparse.Namespace) -> int:
    if args.codec is not None:
        return _compress_archive(args)
    if args.max_error is not None:
        from kmscale.errors import ConfigError

        raise ConfigError(
            "--max-error: expected --codec too (error bounds apply to archives), found no --codec"
        )
    from pathlib import Path

    import numpy as np

    from kmscale.autoencoders.base import LATENT_STEP
    from kmscale.autoencoders.latent_store import _spatial_dims, decode_times, open_latents
    from kmscale.data.store import store_nbytes

    if args.quantize is None:
        args.quantize = LATENT_STEP
    model, ds, out = _encode(args, args.quantize)
    variables = list(model.variables)
    src = Path(args.input)
    src_bytes = store_nbytes(src) if src.is_dir() else src.stat().st_size
    ydim, xdim = _spatial_dims(ds, variables, str(src))
    raw = ds.sizes["time"] * len(variables) * ds.sizes[ydim] * ds.sizes[xdim] * 4
    lat_bytes = store_nbytes(out)
    print(
        f"latent store   {out}: {lat_bytes / 2**20:.3f} MiB on disk "
        f"({model.latent_channels} channels, {model.downsample_factor}x down, step {args.quantize})"
    )
    print(
        f"original store {src}: {src_bytes / 2**20:.3f} MiB -> ratio {src_bytes / lat_bytes:.1f}x"
    )
    print(f"raw float32    {raw / 2**20:.3f} MiB -> ratio {raw / lat_bytes:.1f}x")
    dec = getattr(model, "decoder_nbytes", None)
    if dec is not None:
        print(f"decoder weights (float32, shipped once): {dec() / 2**20:.2f} MiB")
    if args.verify > 0:
        lat = open_latents(out, model)
        n = min(args.verify, ds.sizes["time"])
        tile, overlap = _tiling(args, (ds.sizes[ydim], ds.sizes[xdim]), model.downsample_factor)
        rec = decode_times(
            lat, model, slice(0, n), out, tile=tile, overlap=overlap, batch_size=args.batch_size
        )
        for c, v in enumerate(variables):
            truth = np.asarray(ds[v].isel(time=slice(0, n)).values, np.float64)
            err = (rec[:, c] - truth)[np.isfinite(truth)]
            units = ds[v].attrs.get("units", "")
            print(
                f"verify {v} over {n} times: RMSE {np.sqrt(np.mean(err**2)):.4g} {units}, "
                f"max |error| {np.max(np.abs(err)):.4g} {units}, bias {np.mean(err):.3g} {units}"
            )
    return 0


def _compress_archive(args: argparse.Namespace) -> int:
    from kmscale.autoencoders.archive import compress_dataset
    from kmscale.autoencoders.latent_store import open_targets
    from kmscale.errors import ConfigError

    model = _load(args)
    if model.registry_name != args.codec:
        raise ConfigError(
            f"--codec {args.codec}: expected a {args.codec!r} checkpoint at "
            f"{args.autoencoder}, found a {model.registry_name!r} one"
        )
    res = compress_dataset(
        model,
        open_targets(args.input),
        args.out,
        max_error=args.max_error,
        step=args.quantize,
        overwrite=args.overwrite,
        where=str(args.input),
    )
    print(
        f"archive {res.path}: {res.nbytes / 2**20:.4f} MiB on disk; raw float32 "
        f"{res.raw_nbytes / 2**20:.3f} MiB -> ratio {res.raw_nbytes / res.nbytes:.1f}x"
    )
    dec = getattr(model, "decoder_nbytes", None)
    if dec is not None:
        print(
            "decoder weights and tables (shipped once, not in the archive): "
            f"{dec() / 2**20:.2f} MiB"
        )
    if res.max_abs_error is not None:
        print(
            f"max |error| measured while encoding: {res.max_abs_error:.4g} (bound {args.max_error})"
        )
    return 0


def run_decompress(args: argparse.Namespace) -> int:
    import sys

    from kmscale.autoencoders.archive import decompress_archive, write_fields

    model = _load(args)
    ds, failed = decompress_archive(args.input, model)
    out = write_fields(ds, args.out, overwrite=args.overwrite)
    print(f"wrote {out} ({ds.sizes['time']} times, variables {list(ds.data_vars)})")
    for msg in failed:
        print(f"kmscale decompress: damaged: {msg}", file=sys.stderr)
    return 1 if failed else 0
