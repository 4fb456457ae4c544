"""The physics of the demo targets: one function of global pixel indices and hours.

:func:`targets_block` computes t2m, u10, v10 and tp on a window of the demo grid (see
:mod:`kmscale.data.demo` for the description of each field). Every term is an
elementwise function of position, time and the static fields, or noise from
:mod:`kmscale.data.demo_noise`, so a window computed alone equals the same pixels of
any larger window, bit for bit.
"""

from __future__ import annotations

import numpy as np

from kmscale.data.demo_noise import fbm
from kmscale.data.demo_terrain import LAT0, LON0, RES, static_fields

# Noise streams: one per independent random field of a seed.
S_T2M, S_PSI, S_RAIN, S_REGIME, S_ERROR = 10, 11, 12, 13, 100
ADVECT = (0.0, 18.0)  # lattice drift, px per hour (about 5 m s-1 eastward)
OCTAVES = tuple(2**k for k in range(1, 12))  # 2 .. 2048 px


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def season_phase(hours: np.ndarray) -> np.ndarray:
    """cos of the annual phase, +1 in mid-July, -1 in mid-January (nt,)."""
    return np.cos(2 * np.pi * (hours / 24.0 - 196.5) / 365.2425)


def local_hour(hours: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Local solar time in hours, (nt, 1, nx)."""
    return (hours[:, None, None] % 24.0 + lon[None, None, :] / 15.0) % 24.0


def mean_flow(lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zonal-mean 10 m wind (m s-1): mid-latitude westerlies, a southwesterly monsoon flow."""
    u = 6.0 * np.exp(-(((lat - 43.0) / 9.0) ** 2)) + 3.0 * np.exp(-(((lat - 20.0) / 5.0) ** 2))
    v = 2.0 * np.exp(-(((lat - 22.0) / 6.0) ** 2))
    return u, v


def diurnal_amplitude(lf, cloud, h):
    """Half-range of the 2 m temperature diurnal cycle (K): land 6, sea 0.6, less under cloud."""
    return (0.6 + 5.5 * lf) * (1.0 - 0.5 * cloud) * (1.0 + 0.15 * h / 1000.0)


def t_climate(lat, lf, season):
    """Sea-level 2 m temperature climatology (K) by latitude, season and land fraction."""
    annual = 301.0 - 0.6 * (lat - 15.0)
    amp_land = 3.0 + 0.35 * (lat - 15.0)
    return annual + (lf * amp_land + (1.0 - lf) * 0.4 * amp_land) * season


def targets_block(seed: int, r0: int, r1: int, c0: int, c1: int, hours: np.ndarray) -> np.ndarray:
    """The four target fields on global rows [r0, r1) x cols [c0, c1): float32 (4, nt, ny, nx)."""
    rows, cols = np.arange(r0, r1), np.arange(c0, c1)
    lat = (LAT0 + RES * (rows + 0.5))[None, :, None]
    lon = LON0 + RES * (cols + 0.5)
    st = static_fields(r0, r1, c0, c1)
    lf, h = st["land_fraction"][None], st["orography"][None]
    season = season_phase(hours)[:, None, None]
    lst = local_hour(hours, lon)
    noise = dict(advect=ADVECT)

    # winds: u = -d psi/dy, v = d psi/dx, then terrain deflection and surface drag
    psi = fbm(
        seed,
        S_PSI,
        rows,
        cols,
        hours,
        scales=OCTAVES,
        hurst=0.4,
        tau=3.0,
        outputs=("d_row", "d_col"),
        streamfunction=True,
        **noise,
    )
    u_mean, v_mean = mean_flow(lat)
    u = u_mean + 3.5 * -psi["d_row"]
    v = v_mean + 3.5 * psi["d_col"]
    gy, gx = st["dh_drow"][None], st["dh_dcol"][None]
    slope = np.sqrt(gx * gx + gy * gy)
    upslope = u * gx + v * gy  # m s-1 of forced ascent (wind . grad h)
    # u' = u - b (u.n) n with n = grad h / s, b = s / (s + 0.03): on steep slopes the
    # upslope component is removed and the flow turns along the contours (channelling)
    coef = np.where(slope > 0, 1.0 / ((slope + 0.03) * np.maximum(slope, 1e-12)), 0.0)
    u = u - coef * upslope * gx
    v = v - coef * upslope * gy
    speed_factor = (
        (1.0 - 0.35 * lf)
        * (1.0 + 0.08 * h / 1000.0)
        * (1.0 + 0.15 * lf * np.cos(2 * np.pi * (lst - 14.0) / 24.0))
    )
    u, v = u * speed_factor, v * speed_factor

    # precipitation: thresholded latent field z, exceedance -> rate
    cells = fbm(seed, S_RAIN, rows, cols, hours, scales=OCTAVES[:9], hurst=0.35, tau=1.0, **noise)[
        "value"
    ]
    regime = fbm(
        seed, S_REGIME, rows, cols, hours, scales=OCTAVES[5:], hurst=0.8, tau=6.0, **noise
    )["value"]
    arid = sigmoid((lat - 37.0) / 2.0) * sigmoid((108.0 - lon[None, None, :]) / 3.0)
    wet_climate = 0.35 * np.exp(-(((lat - 25.0) / 10.0) ** 2)) * (0.5 + 0.5 * season) - 0.7 * arid
    orographic = 0.6 * np.tanh(np.maximum(upslope, 0.0) / 0.3) - 0.3 * np.tanh(
        np.maximum(-upslope, 0.0) / 0.3
    )
    convective = 0.3 * lf * np.cos(2 * np.pi * (lst - 16.0) / 24.0) * (0.5 + 0.5 * season)
    z = 0.8 * cells + 0.8 * regime + wet_climate + orographic + convective
    excess = np.maximum(z - 0.95, 0.0)
    tp = 0.4 * np.expm1(1.9 * excess)  # mm h-1; exponential in the exceedance: heavy tail

    # 2 m temperature
    cloud = sigmoid(2.5 * (0.8 * regime + wet_climate))
    lapse = -6.5e-3 * h  # K, -6.5 K/km
    diurnal = diurnal_amplitude(lf, cloud, h) * np.cos(2 * np.pi * (lst - 15.0) / 24.0)
    anomaly = (
        3.0
        * fbm(seed, S_T2M, rows, cols, hours, scales=OCTAVES, hurst=0.9, tau=4.0, **noise)["value"]
    )
    t2m = t_climate(lat, lf, season) + lapse + diurnal + anomaly - 2.5 * np.tanh(tp / 4.0)

    return np.stack([t2m, u, v, tp]).astype(np.float32)
