"""Fields <-> archive files: any Autoencoder's ``compress``/``decompress`` in the container.

One archive holds a dataset of fields (time, *grid) for the model's variables::

    per time t:  "fields/<t>"            model.compress of all variables at t
                 "mask/<v>/<t>"          packed NaN mask of variable v (only if it has NaNs)
                 "residual/<v>/<t>"      error-bounded residual (only with max_error)

Grids: a 2-D model codes (time, Y, X) fields as they are; a HEALPix model (spatial_dims
1) codes a HEALPix dataset (``cell`` dim) as it is, or a global lat-lon dataset after
bilinear regridding to its nside, and decompression regrids back, so the archive
restores the grid it was given. The error bound, when asked for, holds on that grid.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from kmscale.autoencoders.base import Autoencoder
from kmscale.codecs import error_bound
from kmscale.codecs.container import Archive, ArchiveWriter
from kmscale.errors import CorruptFileError, GridError, SchemaError, StoreError

LAT_NAMES, LON_NAMES = ("lat", "latitude"), ("lon", "longitude")


@dataclass
class Grid:
    """The grid of the fields an archive holds, and how the model sees it."""

    kind: str  # "grid2d" (model grid), "healpix" (cell dim) or "latlon" (global, regridded)
    dims: tuple[str, ...]  # spatial dims of the dataset
    coords: dict = field(default_factory=dict)  # 1-D coordinate values per spatial dim
    nside: int | None = None  # HEALPix models

    @property
    def shape(self) -> tuple[int, ...]:
        if self.kind == "healpix":
            return (12 * self.nside**2,)
        return tuple(len(self.coords[d]) for d in self.dims)

    def coordinates(self) -> dict:
        """xarray coordinates of the spatial dims (HEALPix: cell index and centres)."""
        if self.kind == "healpix":
            from kmscale.sphere.regrid import healpix_coords

            return healpix_coords(self.nside)
        return {d: (d, np.asarray(self.coords[d])) for d in self.dims}

    def to_model(self, x: np.ndarray) -> np.ndarray:
        """(..., *shape) -> (..., *model spatial)."""
        if self.kind != "latlon":
            return x
        from kmscale.sphere import latlon_to_healpix

        lat, lon = (np.asarray(self.coords[d]) for d in self.dims)
        return latlon_to_healpix(x, lat, lon, self.nside)

    def from_model(self, x: np.ndarray) -> np.ndarray:
        if self.kind != "latlon":
            return x
        from kmscale.sphere import healpix_to_latlon

        lat, lon = (np.asarray(self.coords[d]) for d in self.dims)
        return healpix_to_latlon(x, self.nside, lat, lon)

    def image(self, x: np.ndarray) -> np.ndarray:
        """A field on this grid as an image for the residual's 2-D predictor: HEALPix
        (npix,) -> the 12 faces (12, nside, nside); other grids as they are."""
        if self.kind != "healpix":
            return x
        from kmscale.sphere import to_faces

        return np.asarray(to_faces(x))

    def from_image(self, x: np.ndarray) -> np.ndarray:
        if self.kind != "healpix":
            return x
        from kmscale.sphere import from_faces

        return np.asarray(from_faces(x))

    def model_shape(self) -> tuple[int, ...]:
        return (12 * self.nside**2,) if self.nside else self.shape


def dataset_grid(model: Autoencoder, ds: xr.Dataset, where: str) -> Grid:
    """How ``model`` reads the fields of ``ds``; SchemaError/GridError otherwise."""
    variables = list(model.variables)
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise SchemaError(f"{where}: expected variables {variables}, missing {missing}")
    dims = ds[variables[0]].dims
    if dims[0] != "time" or any(ds[v].dims != dims for v in variables):
        raise SchemaError(
            f"{where}: expected every variable with dims (time, ...) alike, "
            f"found {[ds[v].dims for v in variables]}"
        )
    spatial = dims[1:]
    coords = {
        d: np.asarray(ds[d].values if d in ds.coords else np.arange(ds.sizes[d])).tolist()
        for d in spatial
    }
    if model.spatial_dims == 2:
        if len(spatial) != 2:
            raise SchemaError(
                f"{where}: expected (time, Y, X) fields for a 2-D model, found {dims}"
            )
        return Grid("grid2d", spatial, coords)
    nside = int(model.config.nside)
    if spatial == ("cell",):
        from kmscale.sphere import check_healpix_dataset

        check_healpix_dataset(ds, nside)
        return Grid("healpix", spatial, {}, nside)  # nested cells: implied by nside
    if len(spatial) == 2 and spatial[0] in LAT_NAMES and spatial[1] in LON_NAMES:
        lat, lon = np.asarray(coords[spatial[0]]), np.asarray(coords[spatial[1]])
        span = np.ptp(lon) + abs(lon[1] - lon[0]) if lon.size > 1 else 0.0
        if lat.min() > -80 or lat.max() < 80 or span < 359.0:
            raise GridError(
                f"{where}: a global codec needs a grid covering the sphere, found "
                f"lat {lat.min():.2f}..{lat.max():.2f}, lon span {span:.2f} deg"
            )
        return Grid("latlon", spatial, coords, nside)
    raise SchemaError(
        f"{where}: expected a HEALPix 'cell' dim or global (lat, lon) dims for a "
        f"HEALPix model, found {spatial}"
    )


def _time_names(ds: xr.Dataset) -> list[str]:
    return [
        str(np.datetime_as_string(t, unit="s"))
        if np.issubdtype(np.asarray(t).dtype, np.datetime64)
        else str(t)
        for t in ds["time"].values
    ]


@dataclass(frozen=True)
class CompressResult:
    path: Path
    nbytes: int  # archive bytes on disk
    raw_nbytes: int  # the fields as float32
    max_abs_error: float | None  # measured at encode time when a bound was asked for


def compress_dataset(
    model: Autoencoder,
    ds: xr.Dataset,
    out: str | Path,
    *,
    max_error: float | None = None,
    step: float | None = None,
    overwrite: bool = False,
    where: str = "input",
) -> CompressResult:
    """Write every time of ``ds`` (model variables) into the archive ``out``.

    Args:
        max_error: absolute bound per value in the variables' units (same for all), or None
            for the learned reconstruction alone.
        step: quantization step passed to ``model.compress`` (None: the model's default).
    """
    if max_error is not None:
        error_bound.check_bound(max_error)
    grid = dataset_grid(model, ds, where)
    variables = list(model.variables)
    times = _time_names(ds)
    header = {
        "codec": model.registry_name,
        "model_fingerprint": model.fingerprint(),
        "variables": [{"name": v, "attrs": _jsonable(ds[v].attrs)} for v in variables],
        "grid": {
            "kind": grid.kind,
            "dims": list(grid.dims),
            "coords": grid.coords,
            "nside": grid.nside,
            "attrs": _jsonable(ds.attrs),
        },
        "times": times,
        "time_attrs": _jsonable(ds["time"].attrs),
        "max_error": max_error,
    }
    worst = 0.0
    with ArchiveWriter(out, header, overwrite=overwrite) as w:
        for i, t in enumerate(times):
            x = np.stack([np.asarray(ds[v].isel(time=i).values, np.float32) for v in variables])
            xm = grid.to_model(x)
            (payload,) = model.compress(torch.from_numpy(np.ascontiguousarray(xm))[None], step)
            w.add(f"fields/{t}", payload)
            need_rec = max_error is not None
            rec = _decode(model, payload, grid) if need_rec else None
            for c, v in enumerate(variables):
                valid = np.isfinite(x[c])
                if not valid.all():
                    w.add(f"mask/{v}/{t}", zlib.compress(np.packbits(valid).tobytes()))
                if need_rec:
                    data, x_out = error_bound.encode_residual(
                        grid.image(x[c]),
                        grid.image(rec[c]),
                        max_error,
                        where=f"{where}: {v} at {t}",
                    )
                    x_out = grid.from_image(x_out)
                    w.add(f"residual/{v}/{t}", data)
                    worst = max(worst, float(np.nanmax(np.abs(x_out - x[c]), initial=0.0)))
    raw = len(times) * len(variables) * int(np.prod(grid.shape)) * 4
    return CompressResult(
        Path(out), Path(out).stat().st_size, raw, worst if max_error is not None else None
    )


def _decode(model: Autoencoder, payload: bytes, grid: Grid) -> np.ndarray:
    """One ``fields`` chunk -> (C, *grid shape) float32 on the dataset's grid."""
    y = model.decompress([payload], grid.model_shape())[0].cpu().numpy()
    return np.asarray(grid.from_model(y), np.float32)


def check_archive_model(archive: Archive, model: Autoencoder) -> None:
    """StoreError unless ``model`` is the one that wrote ``archive``."""
    h = archive.header
    if h["codec"] != model.registry_name or h["model_fingerprint"] != model.fingerprint():
        raise StoreError(
            f"{archive.path}: written by the {h['codec']!r} model with fingerprint "
            f"{h['model_fingerprint']}, found a {model.registry_name!r} model with "
            f"fingerprint {model.fingerprint()}; decode with the model that wrote it"
        )


def decompress_archive(path: str | Path, model: Autoencoder) -> tuple[xr.Dataset, list[str]]:
    """Archive -> (CF dataset on the archive's grid, messages for chunks that failed).

    A truncated or corrupt chunk leaves NaN in the fields it held and is named in the
    returned list; every other field decodes.
    """
    archive = Archive(path)
    check_archive_model(archive, model)
    h = archive.header
    g = h["grid"]
    grid = Grid(g["kind"], tuple(g["dims"]), g["coords"], g["nside"])
    names = [v["name"] for v in h["variables"]]
    out = np.full((len(h["times"]), len(names), *grid.shape), np.nan, np.float32)
    failed = []
    for i, t in enumerate(h["times"]):
        try:
            rec = _decode(model, archive.read(f"fields/{t}"), grid)
        except CorruptFileError as err:
            failed.append(str(err))
            continue
        for c, v in enumerate(names):
            try:
                valid = _mask(archive, v, t, grid.shape)
                if h["max_error"] is not None:
                    out[i, c] = grid.from_image(
                        error_bound.decode_residual(
                            archive.read(f"residual/{v}/{t}"), grid.image(rec[c]), grid.image(valid)
                        )
                    )
                else:
                    out[i, c] = np.where(valid, rec[c], np.nan)
            except CorruptFileError as err:
                failed.append(str(err))
    coords = grid.coordinates()
    times = pd.to_datetime(h["times"]) if _all_dates(h["times"]) else h["times"]
    coords["time"] = ("time", times, h["time_attrs"])
    ds = xr.Dataset(
        {
            v["name"]: (("time", *grid.dims), out[:, c], v["attrs"])
            for c, v in enumerate(h["variables"])
        },
        coords=coords,
        attrs=g["attrs"],
    )
    ds.attrs.update(
        kmscale_archive=str(Path(path).name),
        codec=h["codec"],
        model_fingerprint=h["model_fingerprint"],
    )
    return ds, failed


def _mask(archive: Archive, v: str, t: str, shape: tuple[int, ...]) -> np.ndarray:
    name = f"mask/{v}/{t}"
    if name not in archive.chunks:
        return np.ones(shape, bool)
    bits = np.frombuffer(zlib.decompress(archive.read(name)), np.uint8)
    return np.unpackbits(bits, count=int(np.prod(shape))).astype(bool).reshape(shape)


def _all_dates(values: list[str]) -> bool:
    try:
        pd.to_datetime(values)
    except (ValueError, TypeError):
        return False
    return True


def _jsonable(attrs) -> dict:
    out = {}
    for k, v in dict(attrs).items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        if isinstance(v, (str, int, float, bool, list)) or v is None:
            out[str(k)] = v
    return out


def write_fields(ds: xr.Dataset, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write decoded fields to NetCDF (``.nc``) or zarr, under a temporary name first."""
    import os
    import shutil

    path = Path(path)
    if path.exists() and not overwrite:
        raise StoreError(f"{path}: expected no output there (pass --overwrite), found one")
    tmp = path.parent / f".{path.name}.partial"
    if tmp.is_dir():
        shutil.rmtree(tmp)
    try:
        if path.suffix == ".nc":
            ds.to_netcdf(tmp)
        else:
            ds.to_zarr(tmp, mode="w", consolidated=False)
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()
    return path
