"""Coarse predictors stacked, normalized and interpolated onto the latent/target grid.

Any list of surface and pressure-level variables (e.g. the 40 FuXi channels or a
single 1-degree ``t2m``) becomes one channel each::

    predictors (time, lat_c, lon_c) per variable, physical units
      │ standardize with the training statistics (kmscale.data.transforms)
      ▼
    (T, C_p, h_c, w_c) ──interpolate (bilinear by default)──► (T, C_p, h, w)

where (h, w) is the latent grid (the target grid block-averaged by the autoencoder's
downsample factor) or the target grid itself. The variable list, units and
statistics are taken from the training data and stored in the model bundle;
applying a bundle to predictors that lack a variable, carry other units or do not
cover the grid is an error, never a silent fill.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from kmscale.conditioning.static import grid_coords
from kmscale.data import transforms
from kmscale.errors import GridError, MissingValueError, SchemaError, UnitsError


def predictor_variables(ds: xr.Dataset) -> list[str]:
    """Every (time, lat, lon) data variable of a predictor dataset, in dataset order."""
    names = [n for n, v in ds.data_vars.items() if set(v.dims) == {"time", "lat", "lon"}]
    if not names:
        raise SchemaError(
            f"predictors: expected data variables with dims (time, lat, lon), found "
            f"{ {n: v.dims for n, v in ds.data_vars.items()} }"
        )
    return names


def fractional_index(src: np.ndarray, dst: np.ndarray, what: str) -> np.ndarray:
    """Fractional index of each ``dst`` coordinate in the monotonic ``src`` coordinate.

    Points within half a grid spacing outside the first/last source centre are
    clamped to the edge (they lie in the edge cell); points further out mean the
    source grid does not cover the target.

    Raises:
        GridError: the target extends beyond the source cells.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.size < 2:
        raise GridError(f"{what}: expected at least 2 source points, found {src.size}")
    order = 1 if src[-1] > src[0] else -1
    s = src[::order]
    idx = np.arange(src.size, dtype=np.float64)[::order]
    half_lo = 0.5 * abs(s[1] - s[0])
    half_hi = 0.5 * abs(s[-1] - s[-2])
    lo, hi = s[0] - half_lo, s[-1] + half_hi
    tol = 1e-6 * max(1.0, abs(hi - lo))
    if dst.min() < lo - tol or dst.max() > hi + tol:
        raise GridError(
            f"{what}: expected the predictor grid to cover the target "
            f"({dst.min():.4f}..{dst.max():.4f}), found cells spanning only {lo:.4f}..{hi:.4f}"
        )
    return np.interp(dst, s, idx)


def interpolate_regular(
    values: torch.Tensor | np.ndarray,
    src_lat: np.ndarray,
    src_lon: np.ndarray,
    dst_lat: np.ndarray,
    dst_lon: np.ndarray,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Interpolate fields from one regular lat-lon grid onto another.

    Args:
        values: (..., h_c, w_c) on (src_lat, src_lon).
        src_lat, src_lon, dst_lat, dst_lon: 1-D monotonic coordinates (degrees).
        mode: "bilinear", "bicubic" or "nearest" (torch ``grid_sample`` modes).
    Returns:
        (..., len(dst_lat), len(dst_lon)) float32 tensor.
    """
    x = torch.as_tensor(
        np.asarray(values) if not torch.is_tensor(values) else values, dtype=torch.float32
    )
    lead = x.shape[:-2]
    x = x.reshape(-1, 1, *x.shape[-2:])
    iy = fractional_index(src_lat, dst_lat, "latitude")
    ix = fractional_index(src_lon, dst_lon, "longitude")
    # grid_sample's align_corners=True maps -1/+1 to the first/last source centre.
    gy = torch.as_tensor(2 * iy / (len(src_lat) - 1) - 1, dtype=torch.float32)
    gx = torch.as_tensor(2 * ix / (len(src_lon) - 1) - 1, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
    grid = grid.unsqueeze(0).expand(x.shape[0], -1, -1, -1)
    y = torch.nn.functional.grid_sample(
        x, grid, mode=mode, padding_mode="border", align_corners=True
    )
    return y.reshape(*lead, len(dst_lat), len(dst_lon))


def fit_predictor_stats(
    ds: xr.Dataset, variables: Sequence[str], scales: Mapping[str, float] | None = None
) -> dict[str, dict]:
    """Transform + mean/std per predictor variable over the (training) dataset given.

    Fitted with :class:`kmscale.data.stats.NormStats` (catalogue transforms, e.g.
    ``log1p`` for precipitation, with the transform ``scales`` given per variable); the
    schema is that of ``transforms.standardize``.
    """
    from kmscale.data.stats import NormStats

    stats = NormStats.fit(ds, list(variables), scales=scales)
    return {name: stats.stat(name) for name in variables}


@dataclass
class PredictorSpec:
    """What the models expect of the predictors: variables (channel order), units, stats."""

    variables: list[str]
    units: dict[str, str] = field(default_factory=dict)
    stats: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def from_data(
        cls,
        ds: xr.Dataset,
        variables: Sequence[str] | None = None,
        scales: Mapping[str, float] | None = None,
    ) -> PredictorSpec:
        """Take variables (default: all of them), units and statistics from training data
        (value-transform ``scales`` per variable: see :func:`fit_predictor_stats`)."""
        names = list(variables) if variables else predictor_variables(ds)
        missing = [n for n in names if n not in ds]
        if missing:
            raise SchemaError(f"predictors: expected variables {names}, missing {missing}")
        units = {n: str(ds[n].attrs.get("units", "")) for n in names}
        return cls(variables=names, units=units, stats=fit_predictor_stats(ds, names, scales))

    def to_dict(self) -> dict:
        return {
            "variables": list(self.variables),
            "units": dict(self.units),
            "stats": dict(self.stats),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> PredictorSpec:
        return cls(
            variables=list(d["variables"]), units=dict(d.get("units", {})), stats=dict(d["stats"])
        )

    def check(self, ds: xr.Dataset, where: str = "predictors") -> None:
        """Raise SchemaError/UnitsError unless ``ds`` holds every variable in the right units."""
        missing = [n for n in self.variables if n not in ds]
        if missing:
            raise SchemaError(
                f"{where}: expected predictor variables {self.variables}, missing {missing} "
                f"(found {list(ds.data_vars)})"
            )
        for name in self.variables:
            want = self.units.get(name, "")
            found = str(ds[name].attrs.get("units", ""))
            if want and found != want:
                raise UnitsError(
                    f"{where}: variable {name!r} expected units {want!r}, found {found!r}"
                )
            if set(ds[name].dims) != {"time", "lat", "lon"}:
                raise SchemaError(
                    f"{where}: variable {name!r} expected dims (time, lat, lon), found "
                    f"{ds[name].dims}"
                )

    def stack(
        self, ds: xr.Dataset, lat: np.ndarray, lon: np.ndarray, mode: str = "bilinear"
    ) -> torch.Tensor:
        """Standardized predictors interpolated onto (lat, lon).

        Args:
            ds: predictor dataset (time, lat, lon) per variable, physical units.
            lat, lon: 1-D destination grid (the latent or target grid).
        Returns:
            (T, C_p, len(lat), len(lon)) float32 tensor, channels in ``variables`` order.
        Raises:
            SchemaError/UnitsError (see :meth:`check`), GridError when the predictor
            grid does not cover (lat, lon), MissingValueError for NaNs.
        """
        self.check(ds)
        src_lat, src_lon = grid_coords(ds)
        chans = []
        for name in self.variables:
            values = np.asarray(ds[name].transpose("time", "lat", "lon").values, np.float32)
            if np.isnan(values).any():
                raise MissingValueError(
                    f"predictor {name!r}: expected no NaNs, found {int(np.isnan(values).sum())}"
                )
            chans.append(transforms.standardize(values, self.stats[name]))
        x = np.stack(chans, axis=1).astype(np.float32)
        return interpolate_regular(x, src_lat, src_lon, lat, lon, mode=mode)
