"""Static conditioning fields on the target grid, area-averaged to the latent grid.

The static stack is, channel by channel: the static variables of the data
(e.g. ``orography`` in m, ``land_sea_mask`` with 1 = land), then position encodings
``sin/cos`` of latitude and longitude. Each channel is standardized with statistics
fitted on the training grid (stored in the model bundle so that inference uses the
same numbers), then block-averaged by the autoencoder's downsample factor ``f``::

    s (C_s, H, W)  ──standardize──►  ──mean over f×f blocks──►  (C_s, H/f, W/f)

Area averaging (rather than point sampling) keeps the latent-grid orography equal to
the mean height of the pixels the latent summarises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from kmscale.errors import GridError, MissingValueError, SchemaError

#: Position encodings appended to the static variables (computed from the grid).
STATIC_ENCODINGS: tuple[str, ...] = ("lat_sin", "lat_cos", "lon_sin", "lon_cos")


def grid_coords(ds: xr.Dataset | xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) of a regular grid, 1-D ascending, in degrees.

    Raises:
        GridError: no ``lat``/``lon`` coordinates, or 2-D (projected) ones.
    """
    for name in ("lat", "lon"):
        if name not in ds.coords:
            raise GridError(
                f"expected a {name!r} coordinate (canonical dims), found coords {list(ds.coords)}"
            )
    lat, lon = np.asarray(ds["lat"].values, np.float64), np.asarray(ds["lon"].values, np.float64)
    if lat.ndim != 1 or lon.ndim != 1:
        raise GridError(
            f"expected 1-D lat/lon (regular grid), found lat{lat.shape} lon{lon.shape}; "
            "regrid projected fields onto a regular grid first (kmscale.data.grids)"
        )
    return lat, lon


def block_mean(x: np.ndarray, factor: int) -> np.ndarray:
    """Mean over non-overlapping ``factor × factor`` blocks of the last two axes.

    Args:
        x: (..., H, W) with H and W divisible by ``factor``.
    Returns:
        (..., H/factor, W/factor), same dtype.
    """
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise GridError(
            f"block mean by {factor}: expected a grid divisible by {factor}, found {h} x {w}"
        )
    y = x.reshape(*x.shape[:-2], h // factor, factor, w // factor, factor)
    return y.mean(axis=(-3, -1)).astype(x.dtype, copy=False)


def static_fields(
    static: xr.Dataset | None,
    lat: np.ndarray,
    lon: np.ndarray,
    variables: Sequence[str] | None = None,
    atol: float = 1e-4,
) -> xr.Dataset:
    """Physical static fields plus position encodings on the target grid.

    Args:
        static: dataset of static variables on the target (lat, lon) grid, or None
            for position encodings only.
        lat, lon: 1-D target grid coordinates (degrees).
        variables: static variables to use (default: every 2-D data variable of
            ``static``, in dataset order).
        atol: tolerance (degrees) when checking that ``static`` is on the target grid.
    Returns:
        Dataset of (lat, lon) fields: the static variables then ``STATIC_ENCODINGS``.
    Raises:
        GridError: ``static`` is on another grid. SchemaError: a requested variable is
        missing. MissingValueError: NaNs in a static field.
    """
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    out = xr.Dataset(coords={"lat": lat, "lon": lon})
    if static is not None:
        s_lat, s_lon = grid_coords(static)
        if (
            s_lat.shape != lat.shape
            or s_lon.shape != lon.shape
            or not (np.allclose(s_lat, lat, atol=atol) and np.allclose(s_lon, lon, atol=atol))
        ):
            raise GridError(
                f"static fields: expected the target grid {lat.size} x {lon.size} "
                f"(lat {lat[0]:.4f}..{lat[-1]:.4f}, lon {lon[0]:.4f}..{lon[-1]:.4f}), found "
                f"{s_lat.size} x {s_lon.size} (lat {s_lat[0]:.4f}..{s_lat[-1]:.4f}, "
                f"lon {s_lon[0]:.4f}..{s_lon[-1]:.4f}); regrid them first"
            )
        names = (
            list(variables)
            if variables is not None
            else [n for n, v in static.data_vars.items() if set(v.dims) == {"lat", "lon"}]
        )
        missing = [n for n in names if n not in static]
        if missing:
            raise SchemaError(f"static fields: expected variables {names}, missing {missing}")
        for name in names:
            values = np.asarray(static[name].transpose("lat", "lon").values, np.float32)
            if np.isnan(values).any():
                raise MissingValueError(
                    f"static field {name!r}: expected no NaNs, found {int(np.isnan(values).sum())}"
                )
            out[name] = (("lat", "lon"), values, dict(static[name].attrs))
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    enc = {
        "lat_sin": np.sin(la),
        "lat_cos": np.cos(la),
        "lon_sin": np.sin(lo),
        "lon_cos": np.cos(lo),
    }
    for name in STATIC_ENCODINGS:
        out[name] = (("lat", "lon"), enc[name].astype(np.float32), {"units": "1"})
    return out


def fit_static_stats(fields: xr.Dataset) -> dict[str, dict]:
    """Per-channel mean/std over the grid (std of a constant field is taken as 1)."""
    stats = {}
    for name, var in fields.data_vars.items():
        values = np.asarray(var.values, np.float64)
        std = float(values.std())
        stats[name] = {
            "mean": float(values.mean()),
            "std": std if std > 1e-12 else 1.0,
            "transform": "none",
        }
    return stats


def static_stack(fields: xr.Dataset, stats: Mapping[str, Mapping], factor: int = 1) -> np.ndarray:
    """Standardized static channels on the latent grid.

    Args:
        fields: output of :func:`static_fields`.
        stats: per-channel statistics (from :func:`fit_static_stats` on the training grid).
        factor: autoencoder downsample factor (1 = target grid).
    Returns:
        (C_s, H/factor, W/factor) float32, channels in ``fields`` order.
    """
    missing = [n for n in fields.data_vars if n not in stats]
    if missing:
        raise SchemaError(
            f"static stats: expected entries for {list(fields.data_vars)}, missing {missing}"
        )
    chans = [
        (np.asarray(v.values, np.float32) - stats[n]["mean"]) / stats[n]["std"]
        for n, v in fields.data_vars.items()
    ]
    return block_mean(np.stack(chans).astype(np.float32), factor)
