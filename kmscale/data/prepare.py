"""``kmscale prepare``: raw NetCDF/GRIB/zarr -> chunked canonical zarr stores + statistics.

Output directory::

    OUT/targets.zarr      (time, lat, lon) or (time, y, x) targets, CF attrs
    OUT/predictors.zarr   predictors at the targets' valid times (with lead_time)
    OUT/static.zarr       static fields on the target grid
    OUT/stats.json        normalization statistics fitted on the training period only

Every store is written through :class:`kmscale.data.store.StoreWriter`: chunk by chunk
under ``<store>.partial``, renamed only when complete. An interrupted run is resumed by
running the same command again (the fingerprint of inputs and options must match);
a store already complete with the same fingerprint is kept as is. ``stats.json`` is
written (atomically) last, so its presence means the whole preparation finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from kmscale import __version__
from kmscale.data.distributed import run_chunks
from kmscale.data.grids import grid_of, regrid
from kmscale.data.pairing import pair
from kmscale.data.readers import expand_paths, open_dataset, validate
from kmscale.data.stats import NormStats
from kmscale.data.store import (
    FINGERPRINT_KEY,
    KIND_KEY,
    STATUS_KEY,
    VERSION_KEY,
    StoreWriter,
    consolidate,
    open_store,
    partial_path,
)
from kmscale.errors import ConfigError, StoreError

log = logging.getLogger(__name__)
STORE_NAMES = {"targets": "targets.zarr", "predictors": "predictors.zarr", "static": "static.zarr"}
STATS_NAME = "stats.json"


@dataclass
class PrepareOptions:
    """Options of :func:`prepare` (the defaults of ``kmscale prepare`` live here only).

    Attributes:
        variables: target variables (all known ones in the files when None).
        predictor_variables: predictor variables (all known ones when None).
        train_period: (start, end) inclusive dates the statistics are fitted on.
        chunk_time: time steps per zarr chunk (and per resumable write).
        chunk_space: spatial chunk edge (pixels) of the stores.
        lead_time: forecast lead (hours) to select when predictors hold several.
        static_method: regridding of static fields onto the target grid.
        mask_nans: allow NaNs in targets outside a fixed footprint (radar composites);
            the footprint is stored as the ``mask`` coordinate.
        rename: file variable name -> canonical name.
        units: canonical name -> units of the file values.
        check_range: refuse physically impossible values (see kmscale.data.ranges).
        overwrite: replace complete stores written with other inputs/options.
        in_memory_gb: inputs smaller than this are read once into memory (GRIB files
            in particular are decoded whole by every lazy read); larger ones stay lazy
            and are streamed chunk by chunk.
        scheduler: dask.distributed workers for the time chunks (``local:N`` or an
            address, :mod:`kmscale.data.distributed`); None: this process.
    """

    variables: list[str] | None = None
    predictor_variables: list[str] | None = None
    train_period: tuple[str, str] | None = None
    chunk_time: int = 24
    chunk_space: int = 512
    lead_time: float | None = None
    static_method: str = "area"
    mask_nans: bool = False
    rename: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    check_range: bool = True
    overwrite: bool = False
    in_memory_gb: float = 2.0
    scheduler: str | None = None


def _file_identity(paths: Sequence[Path]) -> list[list]:
    return [
        [str(p.resolve()), p.stat().st_size if p.is_file() else 0, int(p.stat().st_mtime)]
        for p in paths
    ]


def fingerprint(inputs: Mapping[str, Sequence[Path]], options: PrepareOptions) -> str:
    """Hash of the input files (path, size, mtime) and options: what makes a store resumable."""
    opts = asdict(options)
    opts.pop("overwrite")
    opts.pop("in_memory_gb")  # how, not what: does not change the stores
    opts.pop("scheduler")
    blob = json.dumps(
        {k: _file_identity(v) for k, v in inputs.items()} | {"options": opts},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _encoding(ds: xr.Dataset, options: PrepareOptions) -> dict:
    enc = {}
    for name, da in ds.data_vars.items():
        chunks = tuple(
            options.chunk_time
            if d == "time"
            else min(da.sizes[d], options.chunk_space)
            if d in ("lat", "lon", "y", "x")
            else da.sizes[d]
            for d in da.dims
        )
        enc[name] = {"chunks": chunks, "dtype": "float32"}
    return enc


def _complete(path: Path, kind: str, fp: str, overwrite: bool) -> bool:
    """True when a complete store of this kind and fingerprint already sits at ``path``."""
    if not path.exists():
        return False
    try:
        open_store(path, kind=kind, fingerprint=fp)
        return True
    except StoreError:
        if not overwrite:
            raise StoreError(
                f"{path}: expected no store or one written by the same inputs/options (fingerprint "
                f"{fp}), found another; pass --overwrite to replace it"
            ) from None
        shutil.rmtree(path)
        return False


def _write_time_store(
    path: Path, ds: xr.Dataset, kind: str, fp: str, options: PrepareOptions, bar, attrs: dict
) -> None:
    if _complete(path, kind, fp, options.overwrite):
        bar.update(-(-ds.sizes["time"] // options.chunk_time))
        return
    if partial_path(path).exists() and options.overwrite:
        attrs_fp = _partial_fingerprint(path)
        if attrs_fp != fp:
            shutil.rmtree(partial_path(path))
    enc = _encoding(ds, options)
    template = ds.chunk({d: enc_chunk for d, enc_chunk in _dim_chunks(ds, options).items()})
    writer = StoreWriter(
        path,
        template,
        kind=kind,
        fingerprint=fp,
        dim="time",
        chunk=options.chunk_time,
        attrs=attrs,
        encoding=enc,
    )
    bar.update(writer.n_chunks - len(writer.pending()))
    run_chunks(
        writer,
        lambda _, sl: ds.isel(time=sl).compute(),
        scheduler=options.scheduler,
        on_done=lambda _: bar.update(1),
    )
    writer.finalize()


def _partial_fingerprint(path: Path) -> str | None:
    import zarr

    try:
        return zarr.open_group(str(partial_path(path)), mode="r").attrs.get(FINGERPRINT_KEY)
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _dim_chunks(ds: xr.Dataset, options: PrepareOptions) -> dict:
    out = {}
    for d, n in ds.sizes.items():
        if d == "time":
            out[d] = options.chunk_time
        elif d in ("lat", "lon", "y", "x"):
            out[d] = min(n, options.chunk_space)
        else:
            out[d] = n
    return out


def _write_static_store(
    path: Path, ds: xr.Dataset, fp: str, options: PrepareOptions, attrs: dict
) -> None:
    """Static fields have no time axis: written whole under .partial, then renamed."""
    if _complete(path, "static", fp, options.overwrite):
        return
    tmp = partial_path(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    out = ds.copy()
    out.attrs.update(attrs)
    out.attrs.update(
        {
            STATUS_KEY: "incomplete",
            KIND_KEY: "static",
            FINGERPRINT_KEY: fp,
            VERSION_KEY: __version__,
        }
    )
    out.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, encoding=_encoding(out, options))
    import zarr

    zarr.open_group(str(tmp), mode="r+").attrs[STATUS_KEY] = "complete"
    consolidate(tmp)
    os.replace(tmp, path)


@dataclass
class PrepareResult:
    """Paths written by :func:`prepare` and the statistics fitted."""

    out_dir: Path
    stores: dict[str, Path]
    stats: dict[str, NormStats]
    fingerprint: str


def load_inputs(
    targets: str | Sequence[str],
    predictors: str | Sequence[str] | None,
    static: str | Sequence[str] | None,
    options: PrepareOptions,
) -> tuple[xr.Dataset, xr.Dataset | None, xr.Dataset | None]:
    """Open, canonicalise, validate and align the inputs (lazy)."""
    read = {"rename": options.rename, "units": options.units, "check_range": options.check_range}
    tgt = _maybe_load(open_dataset(targets, variables=options.variables, **read), options)
    if not tgt.data_vars:
        raise ConfigError(
            f"{tgt.attrs.get('kmscale_source')}: expected target variables, found none kmscale "
            "knows"
        )
    if options.mask_nans:
        mask = (
            xr.concat([tgt[v].notnull().all("time") for v in tgt.data_vars], "v").all("v").compute()
        )
        mask.attrs = {"long_name": "valid footprint of the targets (True = data)"}
        tgt = tgt.assign_coords(mask=mask)
    validate(tgt, check_range=options.check_range)
    pred = None
    if predictors:
        pred = open_dataset(predictors, variables=options.predictor_variables, **read)
        pred = _maybe_load(pred, options)
        validate(pred, check_range=options.check_range)
    stat = None
    if static:
        stat = open_dataset(static, **read)
        stat = stat[[v for v in stat.data_vars if "time" not in stat[v].dims]]
        if not stat.data_vars:
            raise ConfigError(
                f"{stat.attrs.get('kmscale_source')}: expected static fields (orography, "
                "land_sea_mask), found none"
            )
        target_grid = grid_of(tgt)
        src_grid = grid_of(stat)
        if src_grid.shape != target_grid.shape or not np.allclose(
            src_grid.latlon()[0], target_grid.latlon()[0], atol=1e-5
        ):
            stat = regrid(stat.load(), target_grid, options.static_method)
            for c in ("mask",):
                if c in tgt.coords:
                    stat = stat.assign_coords({c: tgt[c]})
        validate(stat, allow_nan="mask" in tgt.coords, check_range=options.check_range)
    paired = pair(tgt, pred, stat, lead_time=options.lead_time)
    return paired.targets, paired.predictors, paired.static


def _maybe_load(ds: xr.Dataset, options: PrepareOptions) -> xr.Dataset:
    return ds.load() if ds.nbytes <= options.in_memory_gb * 2**30 else ds


def prepare(
    targets: str | Sequence[str],
    out_dir: str | Path,
    *,
    predictors: str | Sequence[str] | None = None,
    static: str | Sequence[str] | None = None,
    options: PrepareOptions | None = None,
    progress: bool = True,
) -> PrepareResult:
    """Build the canonical stores and statistics (module docstring).

    Args:
        targets, predictors, static: file paths, globs or lists of them.
        out_dir: output directory (created).
        options: see :class:`PrepareOptions`; ``train_period`` is required.
        progress: show a tqdm bar over the chunks written.

    Raises:
        ConfigError: no training period; SchemaError/UnitsError/... from the readers;
        AlignmentError from pairing; StoreError for foreign stores in ``out_dir``.
    """
    from tqdm.auto import tqdm

    options = options or PrepareOptions()
    if options.train_period is None:
        raise ConfigError(
            "prepare: expected a training period (e.g. 2019-03-01..2019-03-20), found none"
        )
    if options.chunk_time < 1:
        raise ConfigError(f"prepare: expected chunk_time >= 1, found {options.chunk_time}")
    inputs = {"targets": expand_paths(targets)}
    if predictors:
        inputs["predictors"] = expand_paths(predictors)
    if static:
        inputs["static"] = expand_paths(static)
    fp = fingerprint(inputs, options)
    log.info("reading and checking %d input file(s)", sum(len(v) for v in inputs.values()))
    tgt, pred, stat = load_inputs(
        inputs["targets"], inputs.get("predictors"), inputs.get("static"), options
    )

    log.info("fitting normalization statistics on %s..%s", *options.train_period)
    stats = {"targets": NormStats.fit(tgt, train_period=options.train_period)}
    if pred is not None:
        stats["predictors"] = NormStats.fit(pred, train_period=options.train_period)
    if stat is not None:
        stats["static"] = NormStats.fit(stat)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats_path = out_dir / STATS_NAME
    if stats_path.exists():
        stats_path.unlink()  # a stats.json means "finished": remove it until this run finishes
    provenance = {
        "Conventions": "CF-1.8",
        "kmscale_inputs": json.dumps({k: [str(p) for p in v] for k, v in inputs.items()}),
        "kmscale_train_period": list(options.train_period),
    }
    stores = {}
    n_chunks = -(-tgt.sizes["time"] // options.chunk_time) * (2 if pred is not None else 1)
    with tqdm(total=n_chunks, desc="kmscale prepare", unit="chunk", disable=not progress) as bar:
        for kind, ds in (("targets", tgt), ("predictors", pred)):
            if ds is None:
                continue
            path = out_dir / STORE_NAMES[kind]
            attrs = provenance | {"kmscale_stats": json.dumps(stats[kind].to_dict())}
            _write_time_store(path, ds, kind, fp, options, bar, attrs)
            stores[kind] = path
    if stat is not None:
        path = out_dir / STORE_NAMES["static"]
        _write_static_store(path, stat, fp, options, provenance)
        stores["static"] = path
    save_stats(stats_path, stats)
    log.info("prepared %s in %s", ", ".join(stores), out_dir)
    return PrepareResult(out_dir, stores, stats, fp)


def save_stats(path: Path, groups: Mapping[str, NormStats]) -> Path:
    """Write ``{"targets": ..., "predictors": ..., "static": ...}`` atomically.

    The top level is the targets' :class:`NormStats` JSON, so ``NormStats.load`` reads the
    target statistics directly; the others sit under ``"groups"``.
    """
    data = groups["targets"].to_dict()
    data["groups"] = {k: v.to_dict() for k, v in groups.items() if k != "targets"}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def load_stats(path: str | Path, group: str = "targets") -> NormStats:
    """Read one group (``targets``, ``predictors``, ``static``) of a prepare ``stats.json``."""
    path = Path(path)
    if group == "targets":
        return NormStats.load(path)
    data = json.loads(path.read_text())
    groups = data.get("groups", {})
    if group not in groups:
        raise ConfigError(
            f"{path}: expected statistics group {group!r}, found {['targets', *groups]}"
        )
    return NormStats.from_dict(groups[group], where=f"{path}[{group}]")
