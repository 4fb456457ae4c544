"""Inverse map projections (x, y metres -> lat, lon degrees) from CF grid-mapping attributes.

Projected files without 2-D ``lat``/``lon`` (the Met Office radar composites, for
instance) still describe their grid through a CF ``grid_mapping`` variable. pyproj would
do this for every projection, but it is a heavy binary dependency for four formulas, so
the common ones of km-scale weather data are implemented here on the ellipsoid
(J. P. Snyder, *Map Projections: A Working Manual*, USGS PP 1395, 1987; equation numbers
refer to it) and checked against its numerical examples in the tests:

- ``lambert_azimuthal_equal_area`` (ch. 24), ``polar_stereographic`` (ch. 21),
  ``mercator`` (ch. 7), ``lambert_conformal_conic`` (ch. 15).

Anything else raises :class:`~kmscale.errors.GridError` asking for 2-D lat/lon.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kmscale.errors import GridError

SUPPORTED = (
    "lambert_azimuthal_equal_area",
    "polar_stereographic",
    "mercator",
    "lambert_conformal_conic",
)
WGS84 = (6378137.0, 1.0 / 298.257223563)  # semi-major axis (m), flattening: the CF-silent default


def ellipsoid(attrs: Mapping) -> tuple[float, float]:
    """(a, e) semi-major axis (m) and eccentricity from CF grid-mapping attributes."""
    if "earth_radius" in attrs:
        return float(attrs["earth_radius"]), 0.0
    a = float(attrs.get("semi_major_axis", WGS84[0]))
    if "semi_minor_axis" in attrs:
        b = float(attrs["semi_minor_axis"])
        return a, float(np.sqrt(max(0.0, 1.0 - (b / a) ** 2)))
    inv_f = (
        float(attrs.get("inverse_flattening", 0.0))
        if "semi_major_axis" in attrs
        else 1.0 / WGS84[1]
    )
    if inv_f == 0.0:
        return a, 0.0  # a sphere
    f = 1.0 / inv_f
    return a, float(np.sqrt(f * (2.0 - f)))


def _m(phi, e):  # (14-15)
    return np.cos(phi) / np.sqrt(1.0 - (e * np.sin(phi)) ** 2)


def _t(phi, e):  # (15-9)
    es = e * np.sin(phi)
    return np.tan(np.pi / 4 - phi / 2) / ((1 - es) / (1 + es)) ** (e / 2)


def _q(phi, e):  # (3-12)
    s = np.sin(phi)
    if e == 0.0:
        return 2.0 * s
    return (1 - e * e) * (s / (1 - (e * s) ** 2) - np.log((1 - e * s) / (1 + e * s)) / (2 * e))


def _phi_from_t(t, e, iterations: int = 15):  # (7-9) by fixed-point iteration
    phi = np.pi / 2 - 2 * np.arctan(t)
    for _ in range(iterations):
        es = e * np.sin(phi)
        phi = np.pi / 2 - 2 * np.arctan(t * ((1 - es) / (1 + es)) ** (e / 2))
    return phi


def _phi_from_q(q, e, iterations: int = 15):  # (3-16)
    phi = np.arcsin(np.clip(q / 2, -1, 1))
    if e == 0.0:
        return phi
    for _ in range(iterations):
        s = np.sin(phi)
        one = 1 - (e * s) ** 2
        phi = phi + one**2 / (2 * np.cos(phi)) * (
            q / (1 - e * e) - s / one + np.log((1 - e * s) / (1 + e * s)) / (2 * e)
        )
    return phi


def _laea(x, y, attrs, a, e):
    phi1 = np.radians(float(attrs["latitude_of_projection_origin"]))
    lam0 = np.radians(float(attrs.get("longitude_of_projection_origin", 0.0)))
    qp = _q(np.pi / 2, e)
    rq = a * np.sqrt(qp / 2)  # (3-13)
    beta1 = np.arcsin(_q(phi1, e) / qp)  # (3-11)
    d = a * _m(phi1, e) / (rq * np.cos(beta1))  # (24-20)
    rho = np.hypot(x / d, d * y)  # (24-28)
    with np.errstate(invalid="ignore", divide="ignore"):
        ce = 2 * np.arcsin(np.clip(rho / (2 * rq), -1, 1))  # (24-29)
        q = qp * (
            np.cos(ce) * np.sin(beta1)
            + np.where(rho > 0, d * y * np.sin(ce) * np.cos(beta1) / rho, 0.0)
        )  # (24-30)
        lam = lam0 + np.arctan2(
            x * np.sin(ce),
            d * rho * np.cos(beta1) * np.cos(ce) - d * d * y * np.sin(beta1) * np.sin(ce),
        )  # (24-26)
    phi = np.where(rho > 0, _phi_from_q(q, e), phi1)
    return phi, lam


def _polar_stereographic(x, y, attrs, a, e):
    origin = float(attrs.get("latitude_of_projection_origin", 90.0))
    south = origin < 0
    lam0 = np.radians(
        float(
            attrs.get(
                "straight_vertical_longitude_from_pole",
                attrs.get("longitude_of_projection_origin", 0.0),
            )
        )
    )
    sgn = -1.0 if south else 1.0
    xs, ys = sgn * x, sgn * y  # Snyder: the south case is the north case with signs flipped
    rho = np.hypot(xs, ys)
    if "standard_parallel" in attrs:
        phic = sgn * np.radians(float(np.atleast_1d(attrs["standard_parallel"])[0]))
        if np.isclose(phic, np.pi / 2):
            t = rho * np.sqrt((1 + e) ** (1 + e) * (1 - e) ** (1 - e)) / (2 * a)
        else:
            t = rho * _t(phic, e) / (a * _m(phic, e))  # (21-40) inverted
    else:
        k0 = float(attrs.get("scale_factor_at_projection_origin", 1.0))
        t = rho * np.sqrt((1 + e) ** (1 + e) * (1 - e) ** (1 - e)) / (2 * a * k0)  # (21-39)
    phi = _phi_from_t(t, e)
    lam = sgn * lam0 + np.arctan2(xs, -ys)  # (20-16)
    return sgn * phi, sgn * lam


def _mercator(x, y, attrs, a, e):
    lam0 = np.radians(float(attrs.get("longitude_of_projection_origin", 0.0)))
    if "standard_parallel" in attrs:
        k0 = float(_m(np.radians(float(np.atleast_1d(attrs["standard_parallel"])[0])), e))
    else:
        k0 = float(attrs.get("scale_factor_at_projection_origin", 1.0))
    t = np.exp(-y / (a * k0))  # (7-10)
    return _phi_from_t(t, e), x / (a * k0) + lam0


def _lcc(x, y, attrs, a, e):
    par = np.radians(np.atleast_1d(np.asarray(attrs["standard_parallel"], dtype="float64")))
    phi0 = np.radians(float(attrs.get("latitude_of_projection_origin", np.degrees(par[0]))))
    lam0 = np.radians(float(attrs.get("longitude_of_central_meridian", 0.0)))
    p1, p2 = par[0], par[-1]
    if np.isclose(p1, p2):
        n = np.sin(p1)
    else:
        n = (np.log(_m(p1, e)) - np.log(_m(p2, e))) / (
            np.log(_t(p1, e)) - np.log(_t(p2, e))
        )  # (15-8)
    f = _m(p1, e) / (n * _t(p1, e) ** n)  # (15-10)
    rho0 = a * f * _t(phi0, e) ** n  # (15-7)
    sn = np.sign(n)
    rho = sn * np.hypot(x, rho0 - y)  # (14-10)
    t = (rho / (a * f)) ** (1 / n)  # (15-11)
    theta = np.arctan2(sn * x, sn * (rho0 - y))
    return _phi_from_t(t, e), theta / n + lam0


_INVERSE = {
    "lambert_azimuthal_equal_area": _laea,
    "polar_stereographic": _polar_stereographic,
    "mercator": _mercator,
    "lambert_conformal_conic": _lcc,
}


def inverse(x: np.ndarray, y: np.ndarray, attrs: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """Projected (x, y) in metres -> (lat, lon) in degrees (lon in -180..180).

    Args:
        x, y: broadcastable arrays of projection coordinates (metres).
        attrs: CF grid-mapping attributes (``grid_mapping_name`` and its parameters).

    Raises:
        GridError: a projection not implemented here or missing parameters.
    """
    name = attrs.get("grid_mapping_name")
    if name not in _INVERSE:
        raise GridError(
            f"expected a grid mapping among {SUPPORTED} (or 2-D lat/lon coordinates in the file), "
            f"found {name!r}"
        )
    a, e = ellipsoid(attrs)
    x = np.asarray(x, "float64") - float(attrs.get("false_easting", 0.0))
    y = np.asarray(y, "float64") - float(attrs.get("false_northing", 0.0))
    try:
        phi, lam = _INVERSE[name](x, y, attrs, a, e)
    except KeyError as err:
        raise GridError(
            f"grid mapping {name!r}: expected the CF attribute {err.args[0]!r}, found none"
        ) from err
    lon = (np.degrees(lam) + 180.0) % 360.0 - 180.0
    return np.degrees(phi), lon
