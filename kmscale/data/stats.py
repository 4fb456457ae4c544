"""Per-variable normalization statistics, fitted on the training period only.

For each variable v with transform T (``none``/``log1p``/``sqrt``, see
:mod:`kmscale.data.transforms`), the statistics are the mean and standard deviation of
y = T(x) over the training period (NaNs ignored), so that z = (y - mean) / std. They are
saved as JSON and loaded back; :meth:`NormStats.stat` gives the dict that
``transforms.standardize`` / ``destandardize`` take.

JSON schema (version 1)::

    {"kmscale_stats_version": 1, "train_period": ["2019-03-01", "2019-03-20"],
     "variables": {"t2m": {"mean": ..., "std": ..., "transform": "none", "scale": 1.0,
                           "units": "K", "count": ..., "min": ..., "max": ...}}}
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from kmscale.data import transforms as vt
from kmscale.data.variables import lookup
from kmscale.errors import AlignmentError, ConfigError, SchemaError

log = logging.getLogger(__name__)
STATS_VERSION = 1
_REQUIRED = ("mean", "std", "transform", "scale")


def _period_slice(ds: xr.Dataset, period: Sequence[str] | None, where: str) -> xr.Dataset:
    if period is None or "time" not in ds.dims:
        return ds
    if len(period) != 2:
        raise ConfigError(f"train_period: expected (start, end), found {period!r}")
    sub = ds.sel(time=slice(str(period[0]), str(period[1])))
    if sub.sizes["time"] == 0:
        t = ds["time"].values
        raise AlignmentError(
            f"{where}: expected times inside the training period {period[0]}..{period[1]}, "
            f"found data only from {t[0]} to {t[-1]}"
            if t.size
            else f"{where}: expected times, found none"
        )
    return sub


@dataclass
class NormStats:
    """Normalization statistics of several variables.

    Attributes:
        variables: name -> {"mean", "std", "transform", "scale", "units", "count", "min", "max"}.
        train_period: (start, end) the statistics were fitted on (None: all data).
    """

    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_period: tuple[str, str] | None = None

    @classmethod
    def fit(
        cls,
        ds: xr.Dataset,
        variables: Sequence[str] | None = None,
        train_period: Sequence[str] | None = None,
        transforms: Mapping[str, str] | None = None,
        scales: Mapping[str, float] | None = None,
    ) -> NormStats:
        """Fit mean/std of T(x) per variable over ``train_period`` (inclusive dates).

        Args:
            ds: canonical dataset (lazy is fine; one dask pass per variable).
            variables: names to fit (all data variables when None).
            train_period: (start, end) strings; only these times are used.
            transforms: name -> transform; defaults to the catalogue's
                (``tp`` -> ``log1p``, others ``none``).
            scales: name -> transform scale (default 1.0, in the variable's units).
        """
        import dask

        where = ds.attrs.get("kmscale_source", "<dataset>")
        names = list(variables) if variables is not None else list(ds.data_vars)
        missing = [v for v in names if v not in ds.data_vars]
        if missing:
            raise SchemaError(
                f"{where}: expected variables {names} to fit statistics, missing {missing}"
            )
        sub = _period_slice(ds, train_period, where)
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            transform = (transforms or {}).get(name) or lookup(name).transform
            scale = float((scales or {}).get(name, 1.0))
            transforms_check(transform, name)
            da = sub[name]
            y = xr.apply_ufunc(
                vt.forward,
                da,
                kwargs={"name": transform, "scale": scale},
                dask="parallelized",
                output_dtypes=[np.float64],
            ).astype("float64")
            mean, std, count, vmin, vmax = dask.compute(
                y.mean(), y.std(), da.count(), da.min(), da.max()
            )
            mean, std, count = float(mean), float(std), int(count)
            if count == 0 or not math.isfinite(mean):
                raise SchemaError(
                    f"{where}: variable {name!r}: expected finite training values, found none"
                )
            if not std > 0:
                log.warning(
                    "%s: variable %r is constant over the training period; std set to 1",
                    where,
                    name,
                )
                std = 1.0
            out[name] = {
                "mean": mean,
                "std": std,
                "transform": transform,
                "scale": scale,
                "units": da.attrs.get("units", lookup(name).units),
                "count": count,
                "min": float(vmin),
                "max": float(vmax),
            }
        period = (str(train_period[0]), str(train_period[1])) if train_period is not None else None
        return cls(out, period)

    # ---- access ---------------------------------------------------------------------------
    def stat(self, name: str) -> dict[str, Any]:
        """The ``{"mean", "std", "transform", "scale"}`` dict of ``transforms.standardize``."""
        if name not in self.variables:
            raise SchemaError(
                f"normalization statistics: expected variable {name!r}, found only "
                f"{sorted(self.variables)}"
            )
        return {k: self.variables[name][k] for k in _REQUIRED}

    def standardize(self, x: Any, name: str) -> Any:
        """z = (T(x) - mean) / std for arrays, tensors or DataArrays of variable ``name``."""
        if isinstance(x, xr.DataArray):
            return xr.apply_ufunc(
                vt.standardize, x, kwargs={"stat": self.stat(name)}, dask="allowed"
            )
        return vt.standardize(x, self.stat(name))

    def destandardize(self, z: Any, name: str) -> Any:
        """Inverse of :meth:`standardize`, back to physical units."""
        if isinstance(z, xr.DataArray):
            return xr.apply_ufunc(
                vt.destandardize, z, kwargs={"stat": self.stat(name)}, dask="allowed"
            )
        return vt.destandardize(z, self.stat(name))

    def __contains__(self, name: str) -> bool:
        return name in self.variables

    # ---- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "kmscale_stats_version": STATS_VERSION,
            "train_period": list(self.train_period) if self.train_period else None,
            "variables": self.variables,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "<stats>") -> NormStats:
        """Build from :meth:`to_dict` output, checking the schema."""
        if not isinstance(data, Mapping) or data.get("kmscale_stats_version") != STATS_VERSION:
            found = (
                data.get("kmscale_stats_version")
                if isinstance(data, Mapping)
                else type(data).__name__
            )
            raise SchemaError(
                f"{where}: expected kmscale statistics version {STATS_VERSION}, found {found!r}"
            )
        variables = data.get("variables")
        if not isinstance(variables, Mapping) or not variables:
            raise SchemaError(
                f"{where}: expected a non-empty 'variables' mapping, found {variables!r}"
            )
        for name, entry in variables.items():
            missing = [k for k in _REQUIRED if k not in entry]
            if missing:
                raise SchemaError(
                    f"{where}: variable {name!r}: expected keys {list(_REQUIRED)}, missing "
                    f"{missing}"
                )
            if not (isinstance(entry["std"], (int, float)) and entry["std"] > 0):
                raise SchemaError(
                    f"{where}: variable {name!r}: expected std > 0, found {entry['std']!r}"
                )
            transforms_check(entry["transform"], name)
        period = data.get("train_period")
        return cls({k: dict(v) for k, v in variables.items()}, tuple(period) if period else None)

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (temporary file + rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        """Read JSON written by :meth:`save`; a malformed file is a SchemaError naming it."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise SchemaError(
                f"{path}: expected kmscale statistics JSON, found invalid JSON ({err})"
            ) from err
        return cls.from_dict(data, where=str(path))


def transforms_check(name: str, variable: str) -> None:
    if name not in vt.TRANSFORMS:
        raise ConfigError(
            f"variable {variable!r}: expected a transform in {vt.TRANSFORMS}, found {name!r}"
        )
