"""Conversion of a field to kmscale's canonical units, read from its ``units`` attribute.

The canonical units are those of the variable catalogue (:mod:`kmscale.data.variables`):
``t2m``/``d2m`` in K, winds in m s-1, pressures in Pa, ``z{level}`` in m2 s-2,
``q{level}`` in kg kg-1, ``land_sea_mask`` as a fraction and ``tp`` as an hourly rate in
mm h-1.  Most conversions are a scale and an offset (degC -> K: +273.15); precipitation
needs one more piece of information:

- a **rate** (``mm h-1``, ``mm/h``, ``mm s-1``, ``kg m-2 s-1``, ``m s-1``, ``mm day-1``)
  converts by its time unit alone: ``kg m-2 s-1`` x 3600 = mm h-1 (1 kg m-2 of water is
  1 mm);
- an **accumulation** (``m``, ``mm``, ``kg m-2``) is an amount over some period, so the
  rate is ``amount / period``: ERA5 ``tp`` in m over 1 h is x 1000 mm h-1, a radar sum in
  mm over 5 min is x 12 mm h-1.  The period comes from the ``period`` argument, else the
  field's ``accumulation_period`` attribute (``"1 hour"``, ``"5min"``, ``"PT5M"``), else a
  CF ``cell_methods`` such as ``"time: sum (interval: 5 minutes)"``; an amount whose period
  is nowhere stated is a :class:`~kmscale.errors.UnitsError` (guessing it would silently
  scale the field by the wrong factor);
- a units string naming both (``mm/5min``, ``mm (5 min)-1``, ``kg m-2 per 3 h``) is a rate
  over that period.

A ``units`` string that is unknown or belongs to another quantity is a UnitsError naming
the variable, the units found and the units accepted.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import xarray as xr

from kmscale.data import variables as cat
from kmscale.errors import UnitsError

ACCUMULATION_ATTR = "accumulation_period"
"""Attribute giving the period of a precipitation amount (anything ``pd.Timedelta`` reads)."""

_HOUR = pd.Timedelta(hours=1)

# Precipitation amounts: normalised spelling -> mm of water per unit (1 kg m-2 = 1 mm).
_AMOUNTS_MM: dict[str, float] = {"m": 1000.0, "mm": 1.0}
# Precipitation rates: normalised spelling -> (mm per unit amount, period of the unit).
_RATES: dict[str, tuple[float, pd.Timedelta]] = {
    "mm h-1": (1.0, _HOUR),
    "mm s-1": (1.0, pd.Timedelta(seconds=1)),  # kg m-2 s-1 normalises to mm s-1
    "m s-1": (1000.0, pd.Timedelta(seconds=1)),
    "m h-1": (1000.0, _HOUR),
    "mm day-1": (1.0, pd.Timedelta(days=1)),
}
_EXTRA_RATE_SPELLINGS: dict[str, str] = {
    "mm d-1": "mm day-1",
    "mm/day": "mm day-1",
    "mm/d": "mm day-1",
    "kg m-2 day-1": "mm day-1",
    "kg m-2 d-1": "mm day-1",
    "m/h": "m h-1",
    "m h**-1": "m h-1",
    "m hr-1": "m h-1",
}
# "<amount> / <n> <time unit>" (mm/5min, mm (5 min)-1, kg m-2 per 3 h, mm 10min-1).
_PER_PERIOD = re.compile(
    r"^(?P<amount>mm|m|kg m-2|kg m\*\*-2|kg/m2|kg/m\^2)\s*(?:/|per|\s)\s*\(?\s*"
    r"(?P<n>\d+(?:\.\d+)?)?\s*(?P<unit>s|sec|seconds?|min|mins|minutes?|h|hr|hours?|d|days?)"
    r"\s*\)?\s*(?:-1|\*\*-1|\^-1)?$"
)
_CELL_METHODS_SUM = re.compile(r"time\s*:\s*sum\s*\(\s*interval\s*:\s*(?P<period>[^)]+)\)")
_PANDAS_UNIT = {
    "s": "s",
    "sec": "s",
    "second": "s",
    "seconds": "s",
    "min": "min",
    "mins": "min",
    "minute": "min",
    "minutes": "min",
    "h": "h",
    "hr": "h",
    "hour": "h",
    "hours": "h",
    "d": "D",
    "day": "D",
    "days": "D",
}


def parse_period(text: object, *, where: str = "") -> pd.Timedelta:
    """A positive accumulation period from ``"1 hour"``, ``"5min"``, ``"PT5M"``, a timedelta.

    Raises:
        UnitsError: the text is no duration, or the duration is not positive.
    """
    prefix = f"{where}: " if where else ""
    try:
        period = pd.Timedelta(text)  # reads "5min", "1 hour", "PT1H", numpy/python timedeltas
    except (ValueError, TypeError) as err:
        raise UnitsError(
            f"{prefix}expected an accumulation period such as '1 hour', '5min' or 'PT1H', "
            f"found {text!r}"
        ) from err
    if pd.isna(period) or period <= pd.Timedelta(0):
        raise UnitsError(f"{prefix}expected a positive accumulation period, found {text!r}")
    return period


def declared_period(attrs: dict) -> pd.Timedelta | None:
    """The accumulation period a field's attributes state, or None when they state none."""
    if ACCUMULATION_ATTR in attrs:
        return parse_period(attrs[ACCUMULATION_ATTR], where=f"attribute {ACCUMULATION_ATTR!r}")
    m = _CELL_METHODS_SUM.search(str(attrs.get("cell_methods", "")))
    if m:
        return parse_period(m.group("period").strip(), where="attribute 'cell_methods'")
    return None


def _precip_factor(units: str, period: pd.Timedelta | None, where: str) -> float:
    """mm h-1 per unit of ``units`` (a precipitation rate or amount)."""
    key = re.sub(r"\s+", " ", units.strip()).lower()
    norm = _EXTRA_RATE_SPELLINGS.get(key) or cat.normalize_units(units)
    if norm in _RATES:
        mm, unit_period = _RATES[norm]
        return mm * (_HOUR / unit_period)
    m = _PER_PERIOD.match(key)
    if m:
        amount = cat.normalize_units(m.group("amount"))
        n = float(m.group("n") or 1.0)
        unit_period = pd.Timedelta(n, unit=_PANDAS_UNIT[m.group("unit")])
        return _AMOUNTS_MM[amount] * (_HOUR / unit_period)
    if norm in _AMOUNTS_MM:
        if period is None:
            raise UnitsError(
                f"{where}variable 'tp': units {units!r} are an accumulated amount, expected its "
                f"accumulation period (argument period=, attribute {ACCUMULATION_ATTR!r} or "
                f"cell_methods 'time: sum (interval: ...)'), found none"
            )
        return _AMOUNTS_MM[norm] * (_HOUR / period)
    raise UnitsError(
        f"{where}variable 'tp': expected units of a precipitation rate ({', '.join(_RATES)}, "
        f"kg m-2 s-1) or an amount over a period (m, mm, kg m-2, mm/5min), found {units!r}"
    )


def conversion(
    units: str | None,
    variable: str,
    *,
    period: str | pd.Timedelta | None = None,
    where: str = "",
) -> tuple[float, float]:
    """(scale, offset) turning values in ``units`` into the canonical units of ``variable``.

    canonical = value * scale + offset.

    Args:
        units: the field's units (the ``units`` attribute).
        variable: canonical name (``t2m``, ``tp``, ``z500`` ...).
        period: accumulation period of a precipitation amount (ignored for rates and for
            other variables).
        where: file or dataset named in errors.

    Raises:
        UnitsError: missing, unknown or foreign units; an amount without a period.
        SchemaError: ``variable`` is not a canonical name.
    """
    var = cat.lookup(variable)
    prefix = f"{where}: " if where else ""
    if var.name == "tp" and units is not None:
        per = parse_period(period, where=where) if period is not None else None
        return _precip_factor(str(units), per, prefix), 0.0
    return cat.conversion(units, var, where=where)


def to_canonical_units(
    da: xr.DataArray,
    variable: str,
    *,
    units: str | None = None,
    period: str | pd.Timedelta | None = None,
    where: str = "",
) -> xr.DataArray:
    """``da`` converted to the canonical units of ``variable``, its ``units`` attribute set.

    Args:
        da: any shape; values in ``units`` (default: ``da.attrs['units']``).
        variable: canonical name whose units are the target.
        units: overrides the ``units`` attribute (a file that states none, or wrongly).
        period: accumulation period of a precipitation amount; overrides the attributes.
        where: file or dataset named in errors.

    Returns:
        float32 (float64 stays float64) DataArray in canonical units; NaNs kept; the
        accumulation attributes are dropped, since the result is a rate.

    Raises:
        UnitsError: see :func:`conversion`.
    """
    declared = units if units is not None else da.attrs.get("units")
    if period is None and variable == "tp":
        period = declared_period(da.attrs)
    scale, offset = conversion(declared, variable, period=period, where=where)
    if da.dtype.kind not in "fiub":
        raise UnitsError(
            f"{where + ': ' if where else ''}variable {variable!r}: expected numeric values, "
            f"found dtype {da.dtype}"
        )
    dtype = np.float64 if da.dtype == np.float64 else np.float32
    out = da.astype(dtype)
    if scale != 1.0 or offset != 0.0:
        out = out * dtype(scale) + dtype(offset)
    attrs = {k: v for k, v in da.attrs.items() if k not in (ACCUMULATION_ATTR, "cell_methods")}
    attrs["units"] = cat.lookup(variable).units
    out.attrs = attrs  # ``out`` is a new object (astype copies): the input keeps its attrs
    return out
