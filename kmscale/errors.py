"""The exceptions kmscale raises for bad input.

Every error names what was expected and what was found (and, where it applies, the
file and the variable), so that a user can fix the input without reading code. They
derive from ``ValueError`` (or ``OSError`` for unreadable files) so that generic
callers can still catch them.
"""

from __future__ import annotations


class KmscaleError(Exception):
    """Base class of all kmscale errors."""


class SchemaError(KmscaleError, ValueError):
    """A dataset lacks a variable or dimension, or has the wrong shape or dims."""


class UnitsError(KmscaleError, ValueError):
    """Units are missing, unknown, or disagree with the variable."""


class RangeError(UnitsError):
    """A value lies outside its variable's plausible physical range (often a unit mix-up)."""


class CoordinateError(KmscaleError, ValueError):
    """Coordinates are non-monotonic, duplicated or otherwise unusable."""


class GridError(KmscaleError, ValueError):
    """Grids do not match, or a source grid does not cover the target grid."""


class AlignmentError(KmscaleError, ValueError):
    """Valid times or lead times are missing, duplicated or misaligned."""


class MissingValueError(KmscaleError, ValueError):
    """NaNs where no mask allows them."""


class CorruptFileError(KmscaleError, OSError):
    """A file is truncated, corrupt or not in a format kmscale can read."""


class StoreError(KmscaleError, ValueError):
    """A zarr store is incomplete, corrupt, or was written by something else."""


class CheckpointError(KmscaleError, ValueError):
    """A checkpoint or pretrained directory is corrupt or from another architecture."""


class BundleError(KmscaleError, ValueError):
    """A model bundle is invalid or does not match the data it is applied to."""


class ConfigError(KmscaleError, ValueError):
    """A configuration value or override is invalid."""


def describe(expected: object, found: object, *, where: str = "") -> str:
    """Format the standard 'expected ... found ...' message body."""
    prefix = f"{where}: " if where else ""
    return f"{prefix}expected {expected}, found {found}"
