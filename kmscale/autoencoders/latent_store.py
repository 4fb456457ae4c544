"""The latent store: targets encoded to zarr (training data and compressed archive).

Layout of a latent store (kind ``"latents"``)::

    latent      (time, latent_channel, latent_y, latent_x)  float16, or int8/int16
                q = round(z / Delta_c) with per-channel steps ``quantization_step``
    valid_mask  (time, variable, <Y>, <X>)  bool, True where the targets had values
    tail_offset (time, variable, tail_prob)  int8, optional: per-field quantile offsets
                that restore the extremes (:mod:`kmscale.autoencoders.tails`), in steps
                of the attribute ``tail_resolution`` (one per variable, physical units)
    time, <Y>, <X> (+ 2-D lat/lon, lead_time ...)  the targets' coordinates
    attrs: autoencoder_fingerprint, encoder_fingerprint, autoencoder_class, variables,
           groups (variables and latent channels of each group), latent_mean/std,
           downsample_factor, field_shape, quantization_step, target_attrs (CF), ...

``<Y>, <X>`` are the targets' spatial dims (``lat, lon`` or ``y, x``). The store is
chunked by time and written with :class:`kmscale.data.store.StoreWriter`, so it is
atomic and resumable chunk by chunk. :func:`decode_store` refuses a store written by
another autoencoder (fingerprint; a model whose decoder alone was fine-tuned since, with
the same ``encoder_fingerprint``, may read a store without tail offsets) and rebuilds a
``"targets"`` store with the CF attributes and the NaN mask of the original.

The NaN mask is stored for every time (a radar composite's footprint changes from
hour to hour; zstd makes a nearly constant mask cost a few kB per field), because a
latent pixel mixes masked and unmasked inputs and the decoder cannot tell which were
missing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from kmscale.autoencoders.base import Autoencoder
from kmscale.autoencoders.grouped import GroupedAutoencoder
from kmscale.autoencoders.quantize import DEFAULT_ZSTD_LEVEL, dequantize, quantize, zarr_compressors
from kmscale.autoencoders.tails import ANCHORS, TAIL_PROBS, correct_tails, tail_offsets
from kmscale.autoencoders.tiling import padded_shape, tiled_decode, tiled_encode
from kmscale.data.distributed import run_chunks
from kmscale.data.store import StoreWriter, open_store
from kmscale.errors import SchemaError, StoreError

log = logging.getLogger(__name__)

LATENT_KIND = "latents"
TARGET_KIND = "targets"
LATENT_VAR = "latent"
MASK_VAR = "valid_mask"
TAIL_VAR = "tail_offset"


def open_targets(path: str | Path) -> xr.Dataset:
    """Open a targets dataset lazily: a kmscale (or HEALPix) store, any zarr, or a NetCDF/GRIB file
    (files go through :func:`kmscale.data.readers.open_dataset`: canonical names, units, dims)."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: expected a targets store or NetCDF file, found nothing")
    if path.is_dir():
        ds = xr.open_zarr(path, consolidated=False)
        if "kmscale_kind" in ds.attrs:
            from kmscale.sphere.store import KIND as HEALPIX_KIND

            # HEALPix stores (kmscale.sphere.write_healpix_store) are targets too
            healpix = ds.attrs["kmscale_kind"] == HEALPIX_KIND
            return open_store(path, kind=HEALPIX_KIND if healpix else TARGET_KIND)
        return ds
    from kmscale.data.readers import open_dataset

    return open_dataset(path)


def _spatial_dims(ds: xr.Dataset, variables: Sequence[str], where: str) -> tuple[str, str]:
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise SchemaError(
            f"{where}: expected variables {list(variables)}, missing {missing} "
            f"(found {sorted(ds.data_vars)})"
        )
    dims = ds[variables[0]].dims
    if len(dims) != 3 or dims[0] != "time":
        raise SchemaError(
            f"{where}: expected {variables[0]!r} with dims (time, Y, X), found {dims}"
        )
    for v in variables:
        if ds[v].dims != dims:
            raise SchemaError(f"{where}: expected {v!r} with dims {dims}, found {ds[v].dims}")
    return dims[1], dims[2]


def _read_fields(ds: xr.Dataset, variables: Sequence[str], sl: slice) -> np.ndarray:
    """(T, C, H, W) float32 for the times in ``sl``."""
    return np.stack(
        [np.asarray(ds[v].isel(time=sl).values, dtype=np.float32) for v in variables], axis=1
    )


def encode_to_store(
    autoencoder: Autoencoder,
    targets: xr.Dataset,
    out: str | Path,
    *,
    chunk: int = 8,
    quantization_step: float | Sequence[float] | None = None,
    tile: int | Sequence[int] | None = None,
    overlap: int | Sequence[int] = 0,
    batch_size: int = 4,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
    tail_resolution: float | Sequence[float] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    scheduler: str | None = None,
) -> Path:
    """Encode ``targets`` (time, Y, X per variable, physical units) into a latent store.

    Args:
        autoencoder: the model; its variables must be data variables of ``targets``.
        out: store path (``.zarr``); an interrupted run with the same model resumes.
        chunk: time steps per zarr chunk (and per resumable unit).
        quantization_step: None stores float16 latents; a value (or one per channel)
            stores integers round(z / step) in normalized latent units (e.g. 0.05).
        tile, overlap: pixel tiling for large fields (see :mod:`tiling`); None = whole field.
        zstd_level: lossless codec level for the latents.
        tail_resolution: also store per-field tail offsets (int8 steps of this size in
            each variable's units, one value or one per variable; e.g. 0.01 K): every
            chunk is decoded once more while encoding, and :func:`decode_store` restores
            each field's quantiles (0.05 to 99.95 %) and its extremes
            (:mod:`kmscale.autoencoders.tails`). 24 int8 per field.
        scheduler: dask.distributed workers for the time chunks (:mod:`kmscale.data.distributed`).
    Returns:
        the final store path.
    Raises:
        SchemaError: variables/dims do not match the model, or float16 latents overflow.
        StoreError: a store from another model is in the way.
    """
    variables = list(autoencoder.variables)
    dims = _spatial_dims(targets, variables, "encode_to_store input")
    shape = (targets.sizes[dims[0]], targets.sizes[dims[1]])
    steps = None
    if quantization_step is not None:
        steps = _per_item(quantization_step, autoencoder.latent_channels)
    tails = None
    if tail_resolution is not None:
        tails = _per_item(tail_resolution, len(variables))
        if not all(r > 0 for r in tails):
            raise SchemaError(f"encode_to_store: expected positive tail resolutions, found {tails}")
    coords = {k: v for k, v in targets.coords.items() if set(v.dims) <= {"time", *dims}}
    n_time = targets.sizes["time"]
    template = _latent_template(autoencoder, n_time, dims, shape, coords, chunk, steps is not None)
    if tails is not None:
        template = _with_tail_offsets(template, chunk)
    attrs = _latent_attrs(autoencoder, targets, dims, shape, steps, tails)
    encoding = {
        LATENT_VAR: {"compressors": zarr_compressors(zstd_level)},
        MASK_VAR: {"compressors": zarr_compressors(zstd_level)},
    }
    fingerprint = f"{attrs['autoencoder_fingerprint']}:{'f16' if steps is None else steps}"
    if tails is not None:
        encoding[TAIL_VAR] = {"compressors": zarr_compressors(zstd_level)}
        fingerprint += (
            f":tails{tails}"  # a resumed run must not mix stores with and without offsets
        )
    writer = StoreWriter(
        out,
        template,
        kind=LATENT_KIND,
        fingerprint=fingerprint,
        dim="time",
        chunk=chunk,
        attrs=attrs,
        encoding=encoding,
        overwrite=overwrite,
    )
    autoencoder.eval()
    tiling = {"tile": tile, "overlap": overlap, "batch_size": batch_size}

    def compute(i: int, sl: slice) -> xr.Dataset:
        x = _read_fields(targets, variables, sl)
        data = _encode_chunk(autoencoder, x, steps, tiling, where=f"{out}", sl=sl)
        part = xr.Dataset(
            {
                LATENT_VAR: (("time", "latent_channel", "latent_y", "latent_x"), data),
                MASK_VAR: (("time", "variable", *dims), np.isfinite(x)),
            },
            coords={k: v.isel(time=sl) for k, v in coords.items() if "time" in v.dims},
        )
        if tails is not None:
            part[TAIL_VAR] = (
                ("time", "variable", "tail_prob"),
                _chunk_tail_offsets(autoencoder, x, data, steps, tails, shape, tiling),
            )
        return part

    _run_with_bar(writer, compute, f"encode {Path(out).name}", progress, scheduler)
    return writer.finalize()


def _per_item(value: float | Sequence[float], n: int) -> list[float]:
    """One float per channel (or variable): ``value`` broadcast to length ``n``."""
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).tolist()


def _latent_template(
    autoencoder: Autoencoder,
    n_time: int,
    dims: tuple[str, str],
    shape: tuple[int, int],
    coords: dict,
    chunk: int,
    quantized: bool,
) -> xr.Dataset:
    """The lazy (all-zero) latents (float16, or int16 when ``quantized``) and validity mask."""
    f = autoencoder.downsample_factor
    lat_shape = tuple(s // f for s in padded_shape(shape, f))
    return xr.Dataset(
        {
            LATENT_VAR: (
                ("time", "latent_channel", "latent_y", "latent_x"),
                da.zeros(
                    (n_time, autoencoder.latent_channels) + lat_shape,
                    dtype=np.int16 if quantized else np.float16,
                    chunks=(chunk, -1, -1, -1),
                ),
                {
                    "long_name": "normalized autoencoder latent"
                    + (" (quantized: value * quantization_step)" if quantized else "")
                },
            ),
            MASK_VAR: (
                ("time", "variable", *dims),
                da.zeros(
                    (n_time, len(autoencoder.variables)) + shape,
                    dtype=bool,
                    chunks=(chunk, -1, -1, -1),
                ),
                {"long_name": "true where the targets had values"},
            ),
        },
        coords={**coords, "latent_channel": np.arange(autoencoder.latent_channels)},
    )


def _with_tail_offsets(template: xr.Dataset, chunk: int) -> xr.Dataset:
    """``template`` plus the lazy (all-zero) int8 tail offsets (time, variable, tail_prob)."""
    n_time, n_var = template.sizes["time"], template.sizes["variable"]
    template[TAIL_VAR] = (
        ("time", "variable", "tail_prob"),
        da.zeros((n_time, n_var, len(TAIL_PROBS)), dtype=np.int8, chunks=(chunk, -1, -1)),
        {
            "long_name": "quantile of the targets minus quantile of the decoded field, "
            "in steps of tail_resolution (per variable)"
        },
    )
    return template.assign_coords(tail_prob=np.asarray(TAIL_PROBS))


def _latent_attrs(
    autoencoder: Autoencoder,
    targets: xr.Dataset,
    dims: tuple[str, str],
    shape: tuple[int, int],
    steps: list[float] | None,
    tails: list[float] | None,
) -> dict:
    """The latent store's attributes (module docstring): model, layout, CF attributes."""
    variables = list(autoencoder.variables)
    attrs = {
        "autoencoder_fingerprint": autoencoder.fingerprint(),
        "encoder_fingerprint": autoencoder.encoder_fingerprint(),
        "autoencoder_class": type(autoencoder).registry_name,
        "variables": json.dumps(variables),
        "groups": json.dumps(group_layout(autoencoder)),
        "latent_mean": json.dumps(autoencoder.config.latent_mean),
        "latent_std": json.dumps(autoencoder.config.latent_std),
        "downsample_factor": autoencoder.downsample_factor,
        "field_shape": json.dumps(list(shape)),
        "spatial_dims": json.dumps(list(dims)),
        "quantization_step": json.dumps(steps),
        "tail_resolution": json.dumps(tails),
        "target_attrs": json.dumps({v: dict(targets[v].attrs) for v in variables}, default=str),
        "source_attrs": json.dumps(dict(targets.attrs), default=str),
        "Conventions": "CF-1.10",
    }
    if tails is not None:
        attrs["tail_anchors"] = json.dumps(list(ANCHORS))
    return attrs


def _encode_chunk(
    autoencoder: Autoencoder,
    x: np.ndarray,
    steps: list[float] | None,
    tiling: dict,
    *,
    where: str,
    sl: slice,
) -> np.ndarray:
    """Stored latents of fields ``x`` (T, C, H, W): float16, or int16 multiples of ``steps``.

    Raises:
        SchemaError: float16 latents would overflow.
    """
    z = tiled_encode(autoencoder, x, **tiling).numpy()
    if steps is not None:
        return quantize(z, steps, channel_axis=1, dtype=np.int16)
    if not np.abs(z).max() <= np.finfo(np.float16).max:
        raise SchemaError(
            f"{where}: expected latents within the float16 range (|z| <= 65504), found max "
            f"|z| = {np.abs(z).max():.3g} at times {sl.start}..{sl.stop - 1}; store quantized "
            f"latents instead (quantization_step / --quantize)"
        )
    return z.astype(np.float16)


def _chunk_tail_offsets(
    autoencoder: Autoencoder,
    x: np.ndarray,
    data: np.ndarray,
    steps: list[float] | None,
    tails: list[float],
    shape: tuple[int, int],
    tiling: dict,
) -> np.ndarray:
    """(T, C, tail_prob) int8 offsets from what decode_store makes of the stored ``data``."""
    z = data.astype(np.float32) if steps is None else dequantize(data, steps, channel_axis=1)
    rec = tiled_decode(autoencoder, z, shape=shape, mask=np.isfinite(x), **tiling).numpy()
    return np.stack(
        [tail_offsets(x[:, c], rec[:, c], resolution=r) for c, r in enumerate(tails)], axis=1
    )


def _run_with_bar(
    writer: StoreWriter, compute, desc: str, progress: bool, scheduler: str | None
) -> None:
    """Write every pending chunk of ``writer`` with ``compute``, under a progress bar."""
    with tqdm(total=len(writer.pending()), desc=desc, unit="chunk", disable=not progress) as bar:
        run_chunks(writer, compute, scheduler=scheduler, on_done=lambda _: bar.update())


def _attr_json(ds: xr.Dataset, key: str, path: Path):
    if key not in ds.attrs:
        raise StoreError(f"{path}: expected attribute {key!r} of a latent store, found none")
    try:
        return json.loads(ds.attrs[key]) if isinstance(ds.attrs[key], str) else ds.attrs[key]
    except json.JSONDecodeError as err:
        raise StoreError(f"{path}: attribute {key!r} is corrupt ({err})") from err


def open_latents(path: str | Path, autoencoder: Autoencoder | None = None) -> xr.Dataset:
    """Open a complete latent store; with ``autoencoder``, refuse one written by another model."""
    path = Path(path)
    ds = open_store(path, kind=LATENT_KIND)
    if autoencoder is not None:
        want, found = autoencoder.fingerprint(), ds.attrs.get("autoencoder_fingerprint")
        # A model whose decoder alone was fine-tuned after the store was written (LDM decoder
        # refinement) reads the same latents, unless the store carries tail offsets: those
        # were measured against the output of the decoder that wrote it.
        same_encoder = (
            ds.attrs.get("encoder_fingerprint") == autoencoder.encoder_fingerprint()
            and (_attr_json(ds, "tail_resolution", path) if "tail_resolution" in ds.attrs else None)
            is None
        )
        if want != found and not same_encoder:
            raise StoreError(
                f"{path}: expected latents written by autoencoder {want}, found latents of "
                f"autoencoder {found} ({ds.attrs.get('autoencoder_class')!r})"
            )
    return ds


def read_latents(ds: xr.Dataset, sl: slice, path: str | Path = "latent store") -> np.ndarray:
    """Normalized float32 latents (T, Cz, h, w) for times ``sl`` (dequantized if needed)."""
    try:
        raw = np.asarray(ds[LATENT_VAR].isel(time=sl).values)
    except (ValueError, RuntimeError, OSError, KeyError) as err:
        raise StoreError(
            f"{path}: expected readable latent chunks at times {sl}, found a corrupt store ({err})"
        ) from err
    steps = _attr_json(ds, "quantization_step", Path(path))
    if steps is None:
        return raw.astype(np.float32)
    return dequantize(raw, steps, channel_axis=1)


def _read(ds: xr.Dataset, name: str, sl: slice, path: str | Path) -> np.ndarray:
    try:
        return np.asarray(ds[name].isel(time=sl).values)
    except (ValueError, RuntimeError, OSError, KeyError) as err:
        raise StoreError(
            f"{path}: expected readable {name!r} chunks at times {sl}, found a corrupt store "
            f"({err})"
        ) from err


def read_mask(ds: xr.Dataset, sl: slice, path: str | Path = "latent store") -> np.ndarray:
    """Validity mask (T, C, H, W) bool for times ``sl``."""
    return _read(ds, MASK_VAR, sl, path).astype(bool)


def group_layout(autoencoder: Autoencoder) -> list[dict]:
    """The variable groups of ``autoencoder`` and their latent channels (one unless grouped)."""
    if isinstance(autoencoder, GroupedAutoencoder):
        return autoencoder.layout()
    return [
        {
            "variables": list(autoencoder.variables),
            "autoencoder": type(autoencoder).registry_name,
            "downsample_factor": autoencoder.downsample_factor,
            "latent_channels": autoencoder.latent_channels,
            "channels": [0, autoencoder.latent_channels],
        }
    ]


def decoded_variables(
    autoencoder: Autoencoder, variables: Sequence[str] | None = None
) -> list[str]:
    """The variables decoding ``variables`` yields: every variable of each group holding one of
    them, in the autoencoder's order (all of them for None).

    Raises:
        SchemaError: a requested variable the autoencoder does not hold.
    """
    names = list(autoencoder.variables)
    if variables is None:
        return names
    unknown = [v for v in variables if v not in names]
    if unknown:
        raise SchemaError(f"decode: expected variables among {names}, found {unknown}")
    groups = [g["variables"] for g in group_layout(autoencoder)]
    chosen = {v for g in groups if set(g) & set(variables) for v in g}
    return [v for v in names if v in chosen]


def _decode_groups(
    autoencoder: Autoencoder,
    z: np.ndarray,
    shape: tuple[int, int],
    mask: np.ndarray,
    variables: list[str],
    **tiling,
) -> np.ndarray:
    """(T, len(variables), H, W): each group holding ``variables`` decoded by its own part."""
    if not isinstance(autoencoder, GroupedAutoencoder) or variables == list(autoencoder.variables):
        fields = tiled_decode(autoencoder, z, shape=shape, mask=mask, **tiling).numpy()
        return fields[:, [list(autoencoder.variables).index(v) for v in variables]]
    names = list(autoencoder.variables)
    full = padded_shape(shape, autoencoder.downsample_factor)
    out = np.empty((z.shape[0], len(variables)) + tuple(shape), np.float32)
    for i, (group, sl) in enumerate(
        zip(autoencoder.groups, autoencoder.group_slices(), strict=True)
    ):
        if group[0] not in variables:
            continue
        z_g = autoencoder.unfold(torch.from_numpy(np.ascontiguousarray(z[:, sl])), i)
        rec = tiled_decode(autoencoder.parts[i], z_g, shape=full, **tiling).numpy()[
            ..., : shape[0], : shape[1]
        ]
        for j, v in enumerate(group):
            valid = mask[:, names.index(v)]
            out[:, variables.index(v)] = np.where(valid, rec[:, j], np.nan)
    return out


def decode_times(
    ds: xr.Dataset,
    autoencoder: Autoencoder,
    sl: slice,
    path: str | Path = "latent store",
    *,
    variables: Sequence[str] | None = None,
    tile: int | Sequence[int] | None = None,
    overlap: int | Sequence[int] = 0,
    batch_size: int = 4,
) -> np.ndarray:
    """Physical fields (T, C, H, W) of the times ``sl`` of an open latent store: decoded,
    NaN where the targets were masked, tails restored where the store has offsets.
    ``variables``: decode only the groups holding them (C = :func:`decoded_variables`)."""
    path = Path(path)
    shape = tuple(_attr_json(ds, "field_shape", path))
    names = list(autoencoder.variables)
    wanted = decoded_variables(autoencoder, variables)
    fields = _decode_groups(
        autoencoder,
        read_latents(ds, sl, path),
        shape,
        read_mask(ds, sl, path),
        wanted,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
    )
    tails = _attr_json(ds, "tail_resolution", path) if "tail_resolution" in ds.attrs else None
    if tails is None:
        return fields
    if TAIL_VAR not in ds or "tail_prob" not in ds.coords:
        raise StoreError(
            f"{path}: attribute tail_resolution is set but variable {TAIL_VAR!r} (with "
            f"coordinate tail_prob) is missing: a corrupt store"
        )
    probs = tuple(float(p) for p in ds["tail_prob"].values)
    anchors = tuple(_attr_json(ds, "tail_anchors", path))
    offsets = _read(ds, TAIL_VAR, sl, path)
    return np.stack(
        [
            correct_tails(
                fields[:, c],
                offsets[:, names.index(v)],
                probs=probs,
                anchors=anchors,
                resolution=tails[names.index(v)],
            )
            for c, v in enumerate(wanted)
        ],
        axis=1,
    )


def decode_store(
    latents: str | Path,
    autoencoder: Autoencoder,
    out: str | Path,
    *,
    chunk: int | None = None,
    tile: int | Sequence[int] | None = None,
    overlap: int | Sequence[int] = 0,
    batch_size: int = 4,
    variables: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    scheduler: str | None = None,
) -> Path:
    """Decode a latent store back to a CF ``"targets"`` store (time, Y, X per variable).

    Masked points of the original come back as NaN. ``variables``: decode only the
    groups of a grouped autoencoder that hold them (all their variables are written).
    Raises StoreError for a store of another autoencoder or a corrupt store; nothing is
    written to ``latents``. With ``scheduler``, dask.distributed workers decode the time
    chunks (:mod:`kmscale.data.distributed`).
    """
    latents = Path(latents)
    ds = open_latents(latents, autoencoder)
    stored = _attr_json(ds, "variables", latents)
    if stored != list(autoencoder.variables):
        raise StoreError(
            f"{latents}: expected variables {list(autoencoder.variables)}, found {stored}"
        )
    variables = decoded_variables(autoencoder, variables)
    ydim, xdim = _attr_json(ds, "spatial_dims", latents)
    chunk = chunk or int(ds[LATENT_VAR].encoding.get("chunks", (8,))[0])
    template = _decoded_template(ds, latents, variables, chunk)
    coords = template.coords
    attrs = dict(_attr_json(ds, "source_attrs", latents))
    attrs.update(
        {
            "history": f"decoded by kmscale from latent store {latents.name} "
            f"(autoencoder {ds.attrs['autoencoder_fingerprint']})",
            "Conventions": "CF-1.10",
        }
    )
    writer = StoreWriter(
        out,
        template,
        kind=TARGET_KIND,
        fingerprint=f"decoded:{ds.attrs['autoencoder_fingerprint']}:{variables}",
        dim="time",
        chunk=chunk,
        attrs=attrs,
        overwrite=overwrite,
    )
    autoencoder.eval()

    def compute(i: int, sl: slice) -> xr.Dataset:
        fields = decode_times(
            ds,
            autoencoder,
            sl,
            latents,
            variables=variables,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
        )
        return xr.Dataset(
            {v: (("time", ydim, xdim), fields[:, c]) for c, v in enumerate(variables)},
            coords={k: v.isel(time=sl) for k, v in coords.items() if "time" in v.dims},
        )

    _run_with_bar(writer, compute, f"decode {Path(out).name}", progress, scheduler)
    return writer.finalize()


def _decoded_template(
    ds: xr.Dataset, latents: Path, variables: list[str], chunk: int
) -> xr.Dataset:
    """The lazy (all-zero) targets store that decoding the latent store ``ds`` fills."""
    ydim, xdim = _attr_json(ds, "spatial_dims", latents)
    shape = tuple(_attr_json(ds, "field_shape", latents))
    target_attrs = _attr_json(ds, "target_attrs", latents)
    coords = {
        k: v
        for k, v in ds.coords.items()
        if set(v.dims) <= {"time", ydim, xdim} and k not in ("variable",)
    }
    data_vars = {
        v: (
            ("time", ydim, xdim),
            da.zeros((ds.sizes["time"],) + shape, dtype=np.float32, chunks=(chunk, -1, -1)),
            target_attrs.get(v, {}),
        )
        for v in variables
    }
    return xr.Dataset(data_vars, coords=coords)
