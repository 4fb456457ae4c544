"""Static fields of the demo world: the real land-sea mask and a synthetic orography.

Land-sea mask: the GLOBE-derived 30 arc-second mask shipped by the ``global-land-mask``
package, looked up exactly as ``global_land_mask.globe.is_land`` does. Importing
``globe`` decompresses the whole 21600 x 43200 mask (about 0.9 GiB); here the package's
file is streamed once per process and only the demo domain (plus a 1 degree margin,
about 45 MB) is kept.

Orography: no installed package ships elevation data (pvlib's 5 arc-minute altitude
table would need pvlib; the shared data folder must not be a package dependency), so the
terrain is synthetic: a smooth envelope of the major massifs of the domain (Tibetan
plateau, Himalaya, Tian Shan, Yunnan-Guizhou, Mongolian plateau, Taiwan, Japan ...)
roughened by fractal noise (Hurst 0.8, 1-D spectrum about k^-2.6), set to zero over
the sea and tapered towards the coast. It uses a fixed terrain seed, so every weather
seed shares the same world.

Window consistency: every field is a function of global pixel indices; neighbourhood
operations (coastal land fraction, slopes) are computed on a window widened by their
halo, with exact integer box sums, so a sub-window equals the same pixels of any
larger window.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from kmscale.data.demo_noise import fbm
from kmscale.errors import CorruptFileError, GridError

# The demo grid: 4384 x 6880 cells of 0.01 deg, lower-left corner 15N 75E, rows going north.
FULL_SHAPE = (4384, 6880)
LAT0, LON0, RES = 15.0, 75.0, 0.01
M_PER_DEG = 111_195.0  # metres per degree of latitude (mean Earth radius 6371 km)
TERRAIN_SEED = 20240101
COAST_RADIUS = 6  # px: land fraction box radius used for coastal tapers and land-sea weights
HALO = COAST_RADIUS + 1  # px: widest neighbourhood any static field needs

_STREAM_TERRAIN = 1
_MASK_MARGIN_DEG = 1.0
_mask_lock = threading.Lock()
logger = logging.getLogger(__name__)


def pixel_lat(rows: np.ndarray) -> np.ndarray:
    """Latitude (deg N) of pixel centres at global row indices (float64)."""
    return LAT0 + RES * (np.asarray(rows, dtype=np.float64) + 0.5)


def pixel_lon(cols: np.ndarray) -> np.ndarray:
    """Longitude (deg E) of pixel centres at global column indices (float64)."""
    return LON0 + RES * (np.asarray(cols, dtype=np.float64) + 0.5)


def cache_dir() -> Path:
    """Where derived demo data is cached: ``$KMSCALE_CACHE`` or ``$XDG_CACHE_HOME/kmscale``."""
    env = os.environ.get("KMSCALE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kmscale"


@functools.lru_cache(maxsize=1)
def _domain_mask() -> tuple[np.ndarray, int, int, tuple[float, float], tuple[float, float]]:
    """Ocean mask (True = ocean, as in the package) of the demo domain plus margin.

    Returns (crop, first_row, first_col, (lat[0], dlat), (lon[0], dlon)) where the last two
    describe the package's full grid, so indices are computed exactly as ``globe`` does.
    Streaming the package's file takes ~5-10 s, so the crop is cached (bit-packed, ~6 MB)
    under :func:`cache_dir`, keyed by the package file's size and mtime.
    """
    # find_spec, not import: the package's __init__ decompresses the whole global mask
    spec = importlib.util.find_spec("global_land_mask")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the demo land-sea mask needs the 'global-land-mask' package: pip install "
            "global-land-mask",
            name="global_land_mask",
        )
    path = Path(spec.origin).with_name("globe_combined_mask_compressed.npz")
    stat = path.stat()
    cached = cache_dir() / f"demo_land_mask_{stat.st_size}_{int(stat.st_mtime)}.npz"
    if cached.exists():
        try:
            with np.load(cached) as z:
                shape = tuple(z["shape"])
                crop = (
                    np.unpackbits(z["bits"], count=shape[0] * shape[1]).reshape(shape).astype(bool)
                )
                meta = z["meta"]
            return crop, int(meta[0]), int(meta[1]), (meta[2], meta[3]), (meta[4], meta[5])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            logger.warning("ignoring unreadable cache %s (%s); rebuilding it", cached, err)
    crop, r0, c0, latg, long_ = _read_domain_mask(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            bits=np.packbits(crop),
            shape=np.array(crop.shape),
            meta=np.array([r0, c0, *latg, *long_]),
        )
        os.replace(tmp, cached)
    except OSError as err:  # a read-only home only costs time, not correctness
        logger.warning("could not cache the demo land mask at %s (%s)", cached, err)
    return crop, r0, c0, latg, long_


def _read_domain_mask(
    path: Path,
) -> tuple[np.ndarray, int, int, tuple[float, float], tuple[float, float]]:
    """Stream the package's mask file, keeping only the demo domain plus margin."""
    try:
        with np.load(path) as npz:
            lat, lon = npz["lat"], npz["lon"]
        lat_f, dlat = float(lat[0]), float(lat[1] - lat[0])
        lon_f, dlon = float(lon[0]), float(lon[1] - lon[0])
        lat_hi = LAT0 + RES * FULL_SHAPE[0] + _MASK_MARGIN_DEG
        lat_lo = LAT0 - _MASK_MARGIN_DEG
        r0 = int((lat_hi - lat_f) / dlat)
        r1 = int((lat_lo - lat_f) / dlat) + 1
        c0 = int((LON0 - _MASK_MARGIN_DEG - lon_f) / dlon)
        c1 = int((LON0 + RES * FULL_SHAPE[1] + _MASK_MARGIN_DEG - lon_f) / dlon) + 1
        with zipfile.ZipFile(path) as zf, zf.open("mask.npy") as f:
            version = npy_format.read_magic(f)
            read_header = (
                npy_format.read_array_header_1_0
                if version == (1, 0)
                else npy_format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            if fortran or dtype != np.bool_ or len(shape) != 2:
                raise CorruptFileError(
                    f"{path}: expected a C-ordered 2-D bool mask, found shape {shape} dtype {dtype}"
                )
            ncol = shape[1]
            rows_per_read = 256
            skip = r0
            while skip > 0:  # stream past the rows north of the domain
                n = min(skip, rows_per_read)
                f.read(n * ncol)
                skip -= n
            parts = []
            todo = r1 - r0
            while todo > 0:
                n = min(todo, rows_per_read)
                buf = f.read(n * ncol)
                if len(buf) != n * ncol:
                    raise CorruptFileError(f"{path}: mask.npy is truncated")
                parts.append(np.frombuffer(buf, dtype=np.bool_).reshape(n, ncol)[:, c0:c1].copy())
                todo -= n
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        if isinstance(err, CorruptFileError):
            raise
        raise CorruptFileError(f"{path}: cannot read the global-land-mask data ({err})") from err
    return np.concatenate(parts), r0, c0, (lat_f, dlat), (lon_f, dlon)


def land_mask(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Land (True) at global pixel rows x cols, identical to ``globe.is_land(lat, lon)``.

    Raises:
        GridError: the pixels lie more than the margin outside the demo domain.
    """
    with _mask_lock:
        crop, r0, c0, (lat_f, dlat), (lon_f, dlon) = _domain_mask()
    ri = ((pixel_lat(rows) - lat_f) / dlat).astype(int) - r0
    ci = ((pixel_lon(cols) - lon_f) / dlon).astype(int) - c0
    if ri.min() < 0 or ri.max() >= crop.shape[0] or ci.min() < 0 or ci.max() >= crop.shape[1]:
        raise GridError(
            f"demo land mask: expected pixels within {_MASK_MARGIN_DEG} deg of the demo domain, "
            f"found rows {rows.min()}..{rows.max()}, cols {cols.min()}..{cols.max()}"
        )
    return ~crop[ri[:, None], ci[None, :]]


def _box_fraction(mask: np.ndarray, radius: int) -> np.ndarray:
    """Fraction of True in the (2r+1)^2 box around each interior pixel, exact (integer sums).

    Input (ny + 2r, nx + 2r); output (ny, nx) float32.
    """
    s = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    s[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    k = 2 * radius + 1
    counts = s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]
    return (counts / float(k * k)).astype(np.float32)


# Massifs of the domain: (lat, lon, half-extent lat, half-extent lon, height m).
_MASSIFS = (
    (33.0, 87.0, 5.0, 12.5, 4700.0),  # Tibetan plateau
    (28.8, 85.0, 1.3, 9.0, 5600.0),  # Himalaya
    (36.3, 75.8, 2.2, 3.0, 5000.0),  # Karakoram / Pamir
    (42.5, 82.0, 1.4, 7.0, 3200.0),  # Tian Shan
    (38.5, 98.5, 1.2, 4.5, 3800.0),  # Qilian Shan
    (29.0, 100.0, 3.0, 2.2, 3800.0),  # Hengduan
    (25.8, 104.5, 2.5, 4.0, 1800.0),  # Yunnan-Guizhou plateau
    (33.8, 108.5, 0.6, 3.5, 2200.0),  # Qinling
    (36.8, 108.5, 2.2, 3.5, 1300.0),  # Loess plateau
    (46.5, 102.0, 4.0, 11.0, 1500.0),  # Mongolian plateau
    (48.5, 89.5, 2.0, 4.0, 2600.0),  # Altai
    (47.5, 120.5, 4.0, 1.5, 1000.0),  # Greater Khingan
    (42.0, 128.0, 1.6, 1.8, 1300.0),  # Changbai
    (38.0, 128.3, 1.8, 1.0, 900.0),  # Korean ridge
    (36.0, 137.8, 1.2, 1.2, 2200.0),  # Japanese Alps
    (38.5, 140.0, 3.5, 1.5, 900.0),  # Honshu
    (23.6, 121.0, 1.2, 0.45, 3000.0),  # Taiwan Central Range
    (26.5, 116.5, 2.5, 3.5, 800.0),  # SE China hills (Wuyi)
    (18.5, 76.5, 3.0, 2.5, 650.0),  # Deccan
    (20.0, 103.0, 3.0, 2.5, 1200.0),  # Laos / Annamite
)
_LAND_BASE_M = 150.0


def envelope(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Smooth large-scale terrain height (m) at (lat, lon) (broadcast), before roughening."""
    env = np.zeros(np.broadcast_shapes(np.shape(lat), np.shape(lon)), dtype=np.float64)
    for la, lo, a, b, height in _MASSIFS:
        d = np.sqrt(((lat - la) / a) ** 2 + ((lon - lo) / b) ** 2)
        env = np.maximum(env, height / (1.0 + np.exp((d - 1.0) / 0.15)))
    return _LAND_BASE_M + env


def static_fields(r0: int, r1: int, c0: int, c1: int) -> dict[str, np.ndarray]:
    """Static fields on global rows [r0, r1) x cols [c0, c1) (float32 unless noted).

    Returns:
        land (bool), land_fraction (box mean of land over COAST_RADIUS, 0..1), orography
        (m, 0 over sea), dh_drow / dh_dcol (terrain slope, m per m, northward / eastward).
    """
    rows = np.arange(r0 - HALO, r1 + HALO)
    cols = np.arange(c0 - HALO, c1 + HALO)
    land = land_mask(rows, cols)  # window + HALO
    lf = _box_fraction(land, COAST_RADIUS)  # window + 1
    rows1, cols1 = rows[COAST_RADIUS:-COAST_RADIUS], cols[COAST_RADIUS:-COAST_RADIUS]
    lat1, lon1 = pixel_lat(rows1), pixel_lon(cols1)
    env = envelope(lat1[:, None], lon1[None, :]).astype(np.float32)
    rough = fbm(
        TERRAIN_SEED,
        _STREAM_TERRAIN,
        rows1,
        cols1,
        None,
        scales=[2**k for k in range(1, 11)],
        hurst=0.8,
    )["value"]
    h = np.maximum(env + (80.0 + 0.3 * env) * rough, 0.0)
    taper = np.clip((lf - 0.2) / 0.6, 0.0, 1.0)
    taper = taper * taper * (3.0 - 2.0 * taper)  # smoothstep: no cliff at the coast
    h = (h * taper * land[COAST_RADIUS:-COAST_RADIUS, COAST_RADIUS:-COAST_RADIUS]).astype(
        np.float32
    )
    dy = RES * M_PER_DEG
    dx = (dy * np.cos(np.deg2rad(lat1[1:-1])))[:, None]
    dh_drow = (h[2:, 1:-1] - h[:-2, 1:-1]) / np.float32(2.0 * dy)
    dh_dcol = ((h[1:-1, 2:] - h[1:-1, :-2]) / (2.0 * dx)).astype(np.float32)
    return {
        "land": land[HALO:-HALO, HALO:-HALO],
        "land_fraction": lf[1:-1, 1:-1],
        "orography": h[1:-1, 1:-1],
        "dh_drow": dh_drow.astype(np.float32),
        "dh_dcol": dh_dcol,
    }
