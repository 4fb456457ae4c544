"""The variable catalogue: canonical names, units, aliases, plausible ranges, conversions.

Every reader maps what a file calls a field (``T2``, ``2t``, ``TMP_2maboveground``,
``surface_altitude`` ...) onto one canonical name and converts it to one canonical unit,
so that everything downstream (statistics, autoencoders, scores) can rely on

- ``t2m``, ``d2m`` in K; ``u10``, ``v10`` in m s-1;
- ``tp`` precipitation as an hourly amount in mm h-1;
- ``msl``, ``sp`` in Pa;
- pressure-level predictors ``{t,u,v,z,q}{level}`` (``t850`` K, ``u500`` m s-1,
  ``z500`` m2 s-2, ``q850`` kg kg-1);
- static ``orography`` (m) and ``land_sea_mask`` (1 = land, a fraction in 0..1).

Units are compared after normalising their spelling (``m/s``, ``m s**-1`` and ``m s-1``
are one unit). A unit that is known but belongs to another quantity (``m s-1`` for
``t2m``) or that is unknown (``furlongs``) is a :class:`~kmscale.errors.UnitsError`.
Values outside a variable's plausible range (``t2m`` labelled K but holding -5..20) are
refused by :mod:`kmscale.data.ranges` with a RangeError (a UnitsError: that is almost
always a unit mix-up, Celsius where Kelvin is expected); :mod:`kmscale.data.units`
converts the units a file declares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kmscale.errors import SchemaError, UnitsError


@dataclass(frozen=True)
class Variable:
    """One canonical variable.

    Attributes:
        name: canonical name (``t2m``).
        units: canonical units (``K``), the spelling written into stores.
        standard_name: CF standard name.
        long_name: human-readable description.
        valid_range: (low, high) plausible physical range in canonical units; values
            outside it signal a unit mix-up or corrupt data.
        aliases: other names files use for it (matched case-sensitively first, then
            case-insensitively).
        transform: default value transform for normalization (see ``transforms.py``).
        static: True for time-invariant fields (orography, land-sea mask).
    """

    name: str
    units: str
    standard_name: str
    long_name: str
    valid_range: tuple[float, float]
    aliases: tuple[str, ...] = ()
    transform: str = "none"
    static: bool = False
    cf_standard_names: tuple[str, ...] = field(default=())

    def cf_attrs(self) -> dict[str, str]:
        """CF attributes written on this variable in every store."""
        return {
            "units": self.units,
            "standard_name": self.standard_name,
            "long_name": self.long_name,
        }


# ---- units ------------------------------------------------------------------------
# Normalised spellings: every accepted spelling maps to one key of _CONVERSIONS.
_UNIT_SPELLINGS: dict[str, str] = {
    "k": "K",
    "kelvin": "K",
    "degk": "K",
    "deg_k": "K",
    "degc": "degC",
    "deg_c": "degC",
    "c": "degC",
    "celsius": "degC",
    "degrees_celsius": "degC",
    "°c": "degC",
    "degree_celsius": "degC",
    "degf": "degF",
    "f": "degF",
    "fahrenheit": "degF",
    "m s-1": "m s-1",
    "m/s": "m s-1",
    "m s**-1": "m s-1",
    "m s^-1": "m s-1",
    "ms-1": "m s-1",
    "meter second-1": "m s-1",
    "metre second-1": "m s-1",
    "m.s-1": "m s-1",
    "km h-1": "km h-1",
    "km/h": "km h-1",
    "kt": "kt",
    "knots": "kt",
    "knot": "kt",
    "mm h-1": "mm h-1",
    "mm/h": "mm h-1",
    "mm hr-1": "mm h-1",
    "mm/hr": "mm h-1",
    "mm h**-1": "mm h-1",
    "kg m-2 h-1": "mm h-1",
    "mm s-1": "mm s-1",
    "mm/s": "mm s-1",
    "kg m-2 s-1": "mm s-1",
    "kg m**-2 s**-1": "mm s-1",
    "m": "m",
    "metre": "m",
    "meter": "m",
    "metres": "m",
    "meters": "m",
    "mm": "mm",
    "kg m-2": "mm",
    "kg m**-2": "mm",
    "kg/m2": "mm",
    "kg/m^2": "mm",
    "pa": "Pa",
    "pascal": "Pa",
    "hpa": "hPa",
    "mb": "hPa",
    "mbar": "hPa",
    "millibar": "hPa",
    "kpa": "kPa",
    "m2 s-2": "m2 s-2",
    "m**2 s**-2": "m2 s-2",
    "m^2/s^2": "m2 s-2",
    "m2/s2": "m2 s-2",
    "m^2 s^-2": "m2 s-2",
    "gpm": "gpm",
    "kg kg-1": "kg kg-1",
    "kg kg**-1": "kg kg-1",
    "kg/kg": "kg kg-1",
    "g kg-1": "g kg-1",
    "g/kg": "g kg-1",
    "1": "1",
    "": "1",
    "fraction": "1",
    "0-1": "1",
    "(0 - 1)": "1",
    "-": "1",
    "dimensionless": "1",
    "%": "%",
    "percent": "%",
}

# (from, to) -> (scale, offset): canonical = value * scale + offset.
# Precipitation (rates, and amounts over an accumulation period) is converted by
# kmscale.data.units, which needs the period as well as the units.
_G = 9.80665
_CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("degC", "K"): (1.0, 273.15),
    ("degF", "K"): (5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0),
    ("km h-1", "m s-1"): (1.0 / 3.6, 0.0),
    ("kt", "m s-1"): (0.514444, 0.0),
    ("hPa", "Pa"): (100.0, 0.0),
    ("kPa", "Pa"): (1000.0, 0.0),
    ("gpm", "m2 s-2"): (_G, 0.0),
    ("m", "m2 s-2"): (_G, 0.0),
    ("g kg-1", "kg kg-1"): (1e-3, 0.0),
    ("%", "1"): (0.01, 0.0),
}


def normalize_units(units: str | None) -> str | None:
    """Canonical spelling of a units string, or None when the spelling is unknown."""
    if units is None:
        return None
    key = re.sub(r"\s+", " ", str(units).strip()).lower()
    return _UNIT_SPELLINGS.get(key)


def conversion(units: str | None, var: Variable, *, where: str = "") -> tuple[float, float]:
    """(scale, offset) turning values in ``units`` into ``var.units``.

    Raises:
        UnitsError: missing or unknown units, or units of another quantity.
    """
    prefix = f"{where}: " if where else ""
    if units is None:
        raise UnitsError(
            f"{prefix}variable {var.name!r}: expected a 'units' attribute ({var.units}), found "
            f"none (pass units={{'{var.name}': '...'}} to open_dataset if you know them)"
        )
    norm = normalize_units(units)
    if norm is None:
        raise UnitsError(
            f"{prefix}variable {var.name!r}: expected units {var.units}, found unknown units "
            f"{units!r}"
        )
    target = normalize_units(var.units)
    if norm == target:
        return 1.0, 0.0
    if (norm, target) in _CONVERSIONS:
        return _CONVERSIONS[(norm, target)]
    raise UnitsError(
        f"{prefix}variable {var.name!r}: expected units {var.units} (or convertible), "
        f"found {units!r} which is not a unit of {var.standard_name}"
    )


# ---- the catalogue ------------------------------------------------------------------
def _v(*args, **kwargs) -> Variable:
    return Variable(*args, **kwargs)


CATALOGUE: dict[str, Variable] = {
    v.name: v
    for v in (
        _v(
            "t2m",
            "K",
            "air_temperature",
            "2 metre temperature",
            (150.0, 350.0),
            (
                "T2",
                "2t",
                "t2m",
                "TMP_2maboveground",
                "TMP_P0_L103_GLL0",
                "tas",
                "2m_temperature",
                "air_temperature_2m",
                "t2",
                "T_2M",
            ),
        ),
        _v(
            "d2m",
            "K",
            "dew_point_temperature",
            "2 metre dewpoint temperature",
            (150.0, 350.0),
            ("2d", "d2m", "DPT_2maboveground", "tdps", "2m_dewpoint_temperature", "TD_2M"),
        ),
        _v(
            "u10",
            "m s-1",
            "eastward_wind",
            "10 metre U wind component",
            (-150.0, 150.0),
            ("U10", "10u", "u10", "UGRD_10maboveground", "uas", "10m_u_component_of_wind", "U_10M"),
        ),
        _v(
            "v10",
            "m s-1",
            "northward_wind",
            "10 metre V wind component",
            (-150.0, 150.0),
            ("V10", "10v", "v10", "VGRD_10maboveground", "vas", "10m_v_component_of_wind", "V_10M"),
        ),
        _v(
            "tp",
            "mm h-1",
            "lwe_precipitation_rate",
            "hourly precipitation",
            (0.0, 500.0),
            (
                "tp",
                "precipitation",
                "pr",
                "precip",
                "APCP_surface",
                "tprate",
                "rainrate",
                "RW",
                "lwe_precipitation_rate",
                "total_precipitation",
                "TOT_PREC",
            ),
            transform="log1p",
            cf_standard_names=(
                "lwe_precipitation_rate",
                "precipitation_amount",
                "precipitation_flux",
            ),
        ),
        _v(
            "msl",
            "Pa",
            "air_pressure_at_mean_sea_level",
            "mean sea level pressure",
            (85000.0, 110000.0),
            ("msl", "MSL", "PRMSL_meansealevel", "psl", "mslp", "PMSL", "prmsl"),
            cf_standard_names=("air_pressure_at_mean_sea_level", "air_pressure_at_sea_level"),
        ),
        _v(
            "sp",
            "Pa",
            "surface_air_pressure",
            "surface pressure",
            (40000.0, 110000.0),
            ("sp", "PSFC", "PRES_surface", "ps", "surface_pressure", "PS"),
        ),
        _v(
            "orography",
            "m",
            "surface_altitude",
            "surface altitude",
            (-500.0, 9000.0),
            (
                "orography",
                "HSURF",
                "HGT",
                "surface_altitude",
                "altitude",
                "orog",
                "elevation",
                "topography",
                "height_above_sea_level",
            ),
            static=True,
            cf_standard_names=("surface_altitude",),
        ),
        _v(
            "land_sea_mask",
            "1",
            "land_binary_mask",
            "land-sea mask (1 = land, fraction)",
            (0.0, 1.0),
            (
                "lsm",
                "land_sea_mask",
                "FR_LAND",
                "LANDMASK",
                "LANDFRAC",
                "sftlf",
                "landmask",
                "land_area_fraction",
            ),
            static=True,
            cf_standard_names=("land_binary_mask", "land_area_fraction"),
        ),
    )
}

# Pressure-level predictors: short name -> (units, standard_name, long_name, range).
LEVEL_FIELDS: dict[str, tuple[str, str, str, tuple[float, float]]] = {
    "t": ("K", "air_temperature", "temperature", (150.0, 340.0)),
    "u": ("m s-1", "eastward_wind", "U wind component", (-200.0, 200.0)),
    "v": ("m s-1", "northward_wind", "V wind component", (-200.0, 200.0)),
    "z": ("m2 s-2", "geopotential", "geopotential", (-5000.0, 400000.0)),
    "q": ("kg kg-1", "specific_humidity", "specific humidity", (0.0, 0.1)),
}
LEVEL_ALIASES: dict[str, str] = {
    "t": "t",
    "T": "t",
    "temperature": "t",
    "TMP": "t",
    "ta": "t",
    "u": "u",
    "U": "u",
    "u_component_of_wind": "u",
    "UGRD": "u",
    "ua": "u",
    "v": "v",
    "V": "v",
    "v_component_of_wind": "v",
    "VGRD": "v",
    "va": "v",
    "z": "z",
    "Z": "z",
    "geopotential": "z",
    "zg": "z",
    "q": "q",
    "Q": "q",
    "specific_humidity": "q",
    "SPFH": "q",
    "hus": "q",
}
_LEVEL_RE = re.compile(r"^([tuvzq])(\d{2,4})$")


def level_variable(short: str, level: int) -> Variable:
    """The catalogue entry of a pressure-level predictor, e.g. ``level_variable('t', 850)``."""
    if short not in LEVEL_FIELDS:
        raise SchemaError(
            f"expected a pressure-level field among {sorted(LEVEL_FIELDS)}, found {short!r}"
        )
    units, std, long, rng = LEVEL_FIELDS[short]
    return Variable(f"{short}{int(level)}", units, std, f"{long} at {int(level)} hPa", rng)


def lookup(name: str) -> Variable:
    """Catalogue entry of a canonical name (``t2m``, ``z500`` ...).

    Raises:
        SchemaError: the name is not canonical.
    """
    if name in CATALOGUE:
        return CATALOGUE[name]
    m = _LEVEL_RE.match(name)
    if m:
        return level_variable(m.group(1), int(m.group(2)))
    raise SchemaError(
        f"expected a canonical variable name ({', '.join(CATALOGUE)} or t/u/v/z/q + level), "
        f"found {name!r}"
    )


_ALIAS_INDEX: dict[str, str] = {a: v.name for v in CATALOGUE.values() for a in v.aliases}
_ALIAS_INDEX_LOWER: dict[str, str] = {a.lower(): n for a, n in _ALIAS_INDEX.items()}
_STANDARD_NAME_INDEX: dict[str, str] = {
    s: v.name for v in CATALOGUE.values() for s in v.cf_standard_names
}


def canonical_name(name: str, attrs: dict | None = None) -> str | None:
    """Canonical name for a file's variable ``name`` (using its CF attrs as a fallback).

    Returns None when the variable is not one kmscale knows (it is then dropped).
    """
    if name in CATALOGUE or _LEVEL_RE.match(name):
        return name
    if name in _ALIAS_INDEX:
        return _ALIAS_INDEX[name]
    if name.lower() in _ALIAS_INDEX_LOWER:
        return _ALIAS_INDEX_LOWER[name.lower()]
    std = (attrs or {}).get("standard_name")
    if std in _STANDARD_NAME_INDEX:
        return _STANDARD_NAME_INDEX[std]
    return None
