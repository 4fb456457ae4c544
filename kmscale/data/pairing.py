"""Pair targets, predictors and static fields by valid time; split by time.

The pairing rule: every target valid time needs exactly one predictor field valid at
that time (for the chosen forecast lead time), and static fields lie on the target grid.
Anything else (a gap in the targets, a target time without predictors, two predictor
fields for one time, a lead time other than the one asked for) is an
:class:`~kmscale.errors.AlignmentError` that lists what was expected and what was found:
silently dropping or filling samples would bias training and scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from kmscale.data.grids import grid_of
from kmscale.errors import AlignmentError, ConfigError, GridError

Period = tuple[str, str]


def _where(ds: xr.Dataset, role: str) -> str:
    return f"{role} ({ds.attrs.get('kmscale_source', '<dataset>')})"


def _fmt(times: np.ndarray, n: int = 5) -> str:
    shown = ", ".join(str(pd.Timestamp(t)) for t in times[:n])
    return f"[{shown}{', ...' if len(times) > n else ''}] ({len(times)} in all)"


def check_time_axis(
    ds: xr.Dataset, *, freq: str | pd.Timedelta | None = None, role: str = "targets"
) -> pd.Timedelta:
    """Check ``time`` is strictly increasing, unique and gap-free at step ``freq``.

    Args:
        freq: expected step (e.g. ``"1h"``); inferred as the smallest step when None.

    Returns:
        the time step.

    Raises:
        AlignmentError: duplicates, disorder or gaps (listing the missing times).
    """
    where = _where(ds, role)
    if "time" not in ds.dims:
        raise AlignmentError(f"{where}: expected a 'time' dimension, found dims {tuple(ds.dims)}")
    t = pd.DatetimeIndex(ds["time"].values)
    if t.has_duplicates:
        raise AlignmentError(
            f"{where}: expected unique valid times, found duplicates "
            f"{_fmt(t[t.duplicated()].values)}"
        )
    if not t.is_monotonic_increasing:
        raise AlignmentError(f"{where}: expected increasing valid times, found them out of order")
    if len(t) < 2:
        return pd.Timedelta(freq) if freq is not None else pd.Timedelta(0)
    step = pd.Timedelta(freq) if freq is not None else pd.Series(t[1:] - t[:-1]).min()
    full = pd.date_range(t[0], t[-1], freq=step)
    missing = full.difference(t)
    off_grid = t.difference(full)
    if len(off_grid):
        raise AlignmentError(
            f"{where}: expected valid times every {step} from {t[0]}, found off-step times "
            f"{_fmt(off_grid.values)}"
        )
    if len(missing):
        raise AlignmentError(
            f"{where}: expected valid times every {step} without gaps, missing "
            f"{_fmt(missing.values)}"
        )
    return step


@dataclass
class PairedData:
    """Targets, predictors and static fields aligned on the targets' valid times.

    Attributes:
        targets: (time, ...) canonical target dataset.
        predictors: (time, ...) predictors at exactly ``targets.time`` (or None), with a
            ``lead_time`` coordinate (hours) when the input had one.
        static: time-invariant fields on the target grid (or None).
        lead_time: the forecast lead time selected (hours), or None.
    """

    targets: xr.Dataset
    predictors: xr.Dataset | None
    static: xr.Dataset | None
    lead_time: float | None

    @property
    def times(self) -> np.ndarray:
        return self.targets["time"].values

    def isel_time(self, index) -> PairedData:
        """The same pairing restricted to some time indices."""
        pred = self.predictors.isel(time=index) if self.predictors is not None else None
        return PairedData(self.targets.isel(time=index), pred, self.static, self.lead_time)


def select_lead_time(predictors: xr.Dataset, lead_time: float | None) -> xr.Dataset:
    """Keep the predictor fields with the given lead time (hours).

    Raises:
        AlignmentError: the lead time is absent, or several leads share a valid time and
            none was chosen.
    """
    where = _where(predictors, "predictors")
    if "lead_time" not in predictors.coords:
        if lead_time not in (None, 0, 0.0):
            raise AlignmentError(
                f"{where}: expected forecasts with lead time {lead_time} h, found no lead_time "
                "coordinate"
            )
        return predictors
    leads = np.asarray(predictors["lead_time"].values, dtype="float64")
    if lead_time is None:
        unique = np.unique(leads)
        if pd.DatetimeIndex(predictors["time"].values).has_duplicates:
            raise AlignmentError(
                f"{where}: expected one predictor field per valid time, found several lead times "
                f"{unique.tolist()} sharing valid times; choose one with lead_time="
            )
        return predictors
    keep = np.isclose(leads, float(lead_time))
    if not keep.any():
        raise AlignmentError(
            f"{where}: expected predictors with lead time {lead_time} h, found lead times "
            f"{np.unique(leads).tolist()}"
        )
    return predictors.isel(time=np.flatnonzero(keep))


def pair(
    targets: xr.Dataset,
    predictors: xr.Dataset | None = None,
    static: xr.Dataset | None = None,
    *,
    lead_time: float | None = None,
    freq: str | None = None,
    allow_gaps: bool = False,
) -> PairedData:
    """Align predictors and static fields with the targets' valid times.

    Args:
        targets: canonical targets (time, ...).
        predictors: canonical predictors (time = valid time, optional ``lead_time``).
        static: time-invariant fields; must be on the target grid.
        lead_time: forecast lead (hours) to use when predictors hold several.
        freq: expected target time step (inferred when None).
        allow_gaps: accept missing target times (the pairs are still exact).

    Raises:
        AlignmentError: gaps, duplicates, target times without predictors, misaligned leads.
        GridError: static fields on another grid than the targets.
    """
    if not allow_gaps:
        check_time_axis(targets, freq=freq, role="targets")
    else:
        t = pd.DatetimeIndex(targets["time"].values)
        if t.has_duplicates or not t.is_monotonic_increasing:
            raise AlignmentError(
                f"{_where(targets, 'targets')}: expected unique increasing valid times"
            )
    pred = None
    if predictors is not None:
        pred = select_lead_time(predictors, lead_time)
        where = _where(pred, "predictors")
        pt = pd.DatetimeIndex(pred["time"].values)
        if pt.has_duplicates:
            raise AlignmentError(
                f"{where}: expected one field per valid time, found duplicates "
                f"{_fmt(pt[pt.duplicated()].values)}"
            )
        tt = pd.DatetimeIndex(targets["time"].values)
        missing = tt.difference(pt)
        if len(missing):
            near = (
                pt[np.searchsorted(pt.values, missing.values[:1]).clip(0, len(pt) - 1)]
                if len(pt)
                else []
            )
            hint = f"; nearest predictor time {near[0]}" if len(near) else ""
            raise AlignmentError(
                f"{where}: expected a predictor valid at every target time, missing "
                f"{_fmt(missing.values)}{hint}"
            )
        pred = pred.sel(time=tt)
    if static is not None:
        if "time" in static.dims:
            raise AlignmentError(
                f"{_where(static, 'static')}: expected time-invariant fields, found a 'time' dim"
            )
        if not _same_grid(static, targets):
            raise GridError(
                f"{_where(static, 'static')}: expected fields on the target grid "
                f"{grid_of(targets)!r}, found {grid_of(static)!r} (regrid them first)"
            )
    return PairedData(targets, pred, static, lead_time)


def _same_grid(a: xr.Dataset, b: xr.Dataset) -> bool:
    ga, gb = grid_of(a), grid_of(b)
    if ga.shape != gb.shape or ga.dims != gb.dims:
        return False
    la, lb = ga.latlon(), gb.latlon()
    return bool(np.allclose(la[0], lb[0], atol=1e-5) and np.allclose(la[1], lb[1], atol=1e-5))


def split_by_time(
    ds: xr.Dataset,
    *,
    train: Period | None = None,
    val: Period | None = None,
    test: Period | None = None,
) -> dict[str, xr.Dataset]:
    """Split ``ds`` into non-overlapping time periods (inclusive date strings).

    Returns:
        {"train": ..., "val": ..., "test": ...} for the periods given.

    Raises:
        ConfigError: overlapping or inverted periods.
        AlignmentError: a period holding no time of ``ds``.
    """
    periods = {k: v for k, v in (("train", train), ("val", val), ("test", test)) if v is not None}
    if not periods:
        raise ConfigError(
            "split_by_time: expected at least one of train/val/test periods, found none"
        )
    bounds = {}
    for name, (start, end) in periods.items():
        s, e = pd.Timestamp(start), pd.Timestamp(end)
        if len(str(end)) <= 10:  # a date: include the whole day
            e = e + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
        if e < s:
            raise ConfigError(
                f"split_by_time: {name} period expected start <= end, found {start}..{end}"
            )
        bounds[name] = (s, e)
    names = sorted(bounds, key=lambda k: bounds[k][0])
    for a, b in zip(names, names[1:], strict=False):
        if bounds[b][0] <= bounds[a][1]:
            raise ConfigError(
                f"split_by_time: expected non-overlapping periods, found {a} {periods[a]} "
                f"overlapping {b} {periods[b]}"
            )
    out = {}
    t = pd.DatetimeIndex(ds["time"].values)
    for name, (s, e) in bounds.items():
        idx = np.flatnonzero((t >= s) & (t <= e))
        if idx.size == 0:
            raise AlignmentError(
                f"{_where(ds, 'dataset')}: {name} period {periods[name][0]}..{periods[name][1]}: "
                f"expected times, found none (data spans {t[0]}..{t[-1]})"
                if len(t)
                else f"{name}: expected times, found an empty dataset"
            )
        out[name] = ds.isel(time=idx)
    return out


def parse_period(text: str) -> Period:
    """Parse ``"2019-03-01:2019-03-20"`` (or ``..``) into a (start, end) pair."""
    for sep in ("..", ":", ","):
        if sep in text and not (sep == ":" and text.count(":") != 1):
            start, end = text.split(sep, 1)
            return start.strip(), end.strip()
    raise ConfigError(
        f"period: expected 'START..END' (e.g. 2019-03-01..2019-03-20), found {text!r}"
    )


def periods_overlap(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether two inclusive date periods share a time."""
    return not (pd.Timestamp(a[1]) < pd.Timestamp(b[0]) or pd.Timestamp(b[1]) < pd.Timestamp(a[0]))
