"""Rolling-origin splits of a time axis: train before, validate just before, test a block.

The standard evaluation of a model of a time series (Tashman 2000, "Out-of-sample tests of
forecasting accuracy"): for each origin, a test block of ``test_days`` days starting at the
origin; a validation block of the ``val_days`` days just before it, on which every setting
is chosen; and the training period, everything from ``first_day`` up to the validation
block. Each test block is scored once, by models that saw neither it nor anything after it.

    first_day ......... train ......... | val (val_days) | test (test_days) | later days unused
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kmscale.errors import ConfigError

_DAY = np.timedelta64(1, "D")
_LAST_HOUR = np.timedelta64(23, "h")


def _day(value: str, key: str) -> np.datetime64:
    try:
        day = np.datetime64(value, "D")
    except ValueError as err:
        raise ConfigError(f"{key}: expected a date such as 2019-03-13, found {value!r}") from err
    if np.datetime64(value) != day:
        raise ConfigError(f"{key}: expected a whole day (a date without hours), found {value!r}")
    return day


def _hours(first: np.datetime64, last: np.datetime64) -> list[str]:
    """[first 00 UTC, last 23 UTC] of an inclusive day range, as the recipes' period strings."""
    return [str(np.datetime64(first, "h")), str(np.datetime64(last, "h") + _LAST_HOUR)]


@dataclass(frozen=True)
class RollingOrigin:
    """One origin: inclusive [first, last] hourly periods (``"2019-03-13T00"`` strings)."""

    origin: str  # first day of the test block
    train: list[str]
    validation: list[str]
    test: list[str]

    def as_dict(self) -> dict:
        return {
            "origin": self.origin,
            "train": self.train,
            "validation": self.validation,
            "test": self.test,
        }


def rolling_origins(
    first_day: str,
    test_starts: Sequence[str],
    test_days: int,
    val_days: int,
    min_train_days: int = 1,
) -> list[RollingOrigin]:
    """The rolling-origin splits of the module docstring, one per test block start.

    Args:
        first_day: first day of data (start of every training period), e.g. ``"2019-03-01"``.
        test_starts: first day of each test block, ascending, blocks not overlapping.
        test_days, val_days: block lengths in days (>= 1).
        min_train_days: fewest training days an origin may leave.

    Raises:
        ConfigError: lengths < 1, unordered or overlapping blocks, or too little training.
    """
    if test_days < 1 or val_days < 1:
        raise ConfigError(
            f"rolling: expected test_days and val_days >= 1, found {test_days} and {val_days}"
        )
    if not test_starts:
        raise ConfigError("rolling: expected at least one test block start, found none")
    first = _day(first_day, "rolling.first_day")
    starts = [_day(s, "rolling.origins") for s in test_starts]
    if any(b < a + test_days * _DAY for a, b in zip(starts, starts[1:], strict=False)):
        raise ConfigError(
            f"rolling.origins: expected ascending starts at least test_days={test_days} apart, "
            f"found {list(test_starts)}"
        )
    out = []
    for start in starts:
        val_first = start - val_days * _DAY
        train_days = int((val_first - first) / _DAY)
        if train_days < min_train_days:
            raise ConfigError(
                f"rolling origin {start}: expected at least {min_train_days} training days before "
                f"its "
                f"{val_days}-day validation block, found {train_days}"
            )
        out.append(
            RollingOrigin(
                origin=str(start),
                train=_hours(first, val_first - _DAY),
                validation=_hours(val_first, start - _DAY),
                test=_hours(start, start + (test_days - 1) * _DAY),
            )
        )
    return out
