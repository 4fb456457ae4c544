"""Zero-shot super-resolution of a HEALPix store with a trained field-space autoencoder.

``kmscale super-resolve --autoencoder RUN/autoencoder --input coarse.zarr --out fine.zarr``
reads a HEALPix store (``kmscale.sphere.write_healpix_store``) at a level up to
``max_masked_levels`` below the model's, and writes the model's level (the fine residuals
masked at the input, predicted at the output; see :mod:`kmscale.autoencoders.fsae`).
Only the standard library is imported at top level (``kmscale --help`` stays fast).
"""

from __future__ import annotations

from pathlib import Path


def super_resolve_store(
    autoencoder: str | Path,
    source: str | Path,
    out: str | Path,
    *,
    batch: int = 32,
    overwrite: bool = False,
) -> Path:
    """Super-resolve every time of ``source`` to the model's nside; returns ``out``."""
    import numpy as np
    import torch
    import xarray as xr

    from kmscale.autoencoders.registry import load_autoencoder
    from kmscale.errors import MissingValueError, SchemaError, describe
    from kmscale.sphere import check_healpix_dataset, open_healpix_store, write_healpix_store
    from kmscale.sphere.regrid import healpix_coords

    model = load_autoencoder(autoencoder).eval()
    if not hasattr(model, "super_resolve"):
        raise SchemaError(
            describe(
                "an autoencoder with zero-shot super-resolution (fsae)",
                type(model).__name__,
                where=str(autoencoder),
            )
        )
    ds = open_healpix_store(source)
    grid = check_healpix_dataset(ds)
    missing = [v for v in model.variables if v not in ds.data_vars]
    if missing:
        raise SchemaError(
            describe(f"variables {list(model.variables)}", sorted(ds.data_vars), where=str(source))
        )
    x = np.stack([ds[v].transpose("time", "cell").values for v in model.variables], 1)
    if not np.all(np.isfinite(x)):
        raise MissingValueError(
            describe(
                "finite values in every cell (a global field)",
                f"{int((~np.isfinite(x)).sum())} NaN cells",
                where=str(source),
            )
        )
    with torch.no_grad():
        fine = torch.cat(
            [
                model.super_resolve(torch.from_numpy(x[i : i + batch]).float())
                for i in range(0, len(x), batch)
            ]
        ).numpy()
    nside = model.config.nside
    res = xr.Dataset(
        {
            v: (("time", "cell"), fine[:, c], dict(ds[v].attrs))
            for c, v in enumerate(model.variables)
        },
        coords={"time": ds.time.values, **healpix_coords(nside)},
        attrs={
            "healpix_nside": nside,
            "healpix_order": "nested",
            "super_resolved_from_nside": grid.nside,
            "autoencoder_fingerprint": model.fingerprint(),
        },
    )
    return write_healpix_store(res, out, overwrite=overwrite, fingerprint=model.fingerprint())


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "super-resolve",
        help="zero-shot super-resolution of a HEALPix store (fsae)",
        description="Refine a HEALPix store to the resolution a field-space autoencoder was "
        "trained at (its fine residuals predicted, no retraining).",
    )
    p.add_argument("--autoencoder", required=True, metavar="DIR")
    p.add_argument("--input", required=True, metavar="PATH", help="HEALPix store (coarser)")
    p.add_argument("--out", required=True, metavar="PATH", help="HEALPix store to write")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(
        func=lambda a: (
            print(super_resolve_store(a.autoencoder, a.input, a.out, overwrite=a.overwrite)) or 0
        )
    )
