"""Land-sea fraction on any grid from the 30-arcsecond GLOBE mask of ``global-land-mask``.

The mask is 21600 x 43200 booleans (about 1 GB once decompressed), so instead of loading
it whole (what ``global_land_mask.globe`` does at import, ~10 s) the rows covering the
target are streamed out of the compressed ``.npz`` member and averaged per target cell.
"""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import xarray as xr
from numpy.lib import format as npformat

from kmscale.data.grids import Grid, regrid
from kmscale.data.variables import CATALOGUE
from kmscale.errors import CorruptFileError

MASK_STEP = 1.0 / 120.0  # degrees (30 arcsec); row 0 is 90N, column 0 is 180W
# NB: the stored array is True over OCEAN (global_land_mask.globe.is_ocean returns it and
# is_land its negation), whatever the shared data README says; land = ~mask.


def default_mask_file() -> Path:
    """The mask shipped in the ``global-land-mask`` package (a dependency); located without
    importing it, since its import decompresses the whole mask."""
    spec = importlib.util.find_spec("global_land_mask")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("expected the global-land-mask package (a dependency), found none")
    return Path(next(iter(spec.submodule_search_locations))) / "globe_combined_mask_compressed.npz"


def read_mask_rows(row0: int, row1: int, path: Path | None = None) -> np.ndarray:
    """Rows ``row0:row1`` of the stored global mask, streamed.

    Returns bool (row1 - row0, 43200), True = ocean."""
    path = Path(path or default_mask_file())
    try:
        with zipfile.ZipFile(path) as zf, zf.open("mask.npy") as f:
            version = npformat.read_magic(f)
            shape, fortran, dtype = (
                npformat.read_array_header_1_0(f)
                if version == (1, 0)
                else npformat.read_array_header_2_0(f)
            )
            if fortran or dtype != np.bool_ or len(shape) != 2:
                raise CorruptFileError(
                    f"{path}: expected a C-ordered 2-D bool mask, found {shape} {dtype}"
                )
            ncol = shape[1]
            f.read(row0 * ncol)  # skip (decompressing) the rows north of the target
            buf = f.read((row1 - row0) * ncol)
    except (zipfile.BadZipFile, KeyError, EOFError, ValueError) as err:
        raise CorruptFileError(
            f"{path}: expected the global-land-mask npz, found an unreadable file ({err})"
        ) from err
    if len(buf) != (row1 - row0) * ncol:
        raise CorruptFileError(
            f"{path}: expected {row1 - row0} rows of the mask, found a truncated file"
        )
    return np.frombuffer(buf, dtype=np.bool_).reshape(row1 - row0, ncol)


def land_fraction(target: Grid, *, path: Path | None = None) -> xr.DataArray:
    """Fraction of land (0..1) in each cell of ``target``, from the 1 km mask.

    Returns:
        ``land_sea_mask`` DataArray on the target dims (float32, 1 = land).
    """
    lat, lon = target.latlon()
    pad = 1.0
    north, south = min(90.0, float(np.max(lat)) + pad), max(-90.0, float(np.min(lat)) - pad)
    row0 = int(np.floor((90.0 - north) / MASK_STEP))
    row1 = int(np.ceil((90.0 - south) / MASK_STEP)) + 1
    rows = read_mask_rows(row0, min(row1, 21600), path)
    mlat = 90.0 - MASK_STEP * np.arange(row0, row0 + rows.shape[0])
    mlon = -180.0 + MASK_STEP * np.arange(rows.shape[1])
    # keep only the needed longitude window (with wrap) to bound the work
    west, east = float(np.min(lon)) - pad, float(np.max(lon)) + pad
    if east - west < 300:
        lon_w = ((mlon - west) % 360.0) + west
        sel = lon_w <= east
        order = np.argsort(lon_w[sel])
        mlon = lon_w[sel][order]
        rows = rows[:, np.flatnonzero(sel)[order]]
    src = xr.Dataset(
        {
            "land_sea_mask": (
                ("lat", "lon"),
                (~rows[::-1]).astype("float32"),
                CATALOGUE["land_sea_mask"].cf_attrs(),
            )
        },
        coords={"lat": mlat[::-1], "lon": mlon},
        attrs={"kmscale_source": str(path or default_mask_file())},
    )
    out = regrid(src, target, "area")
    return out["land_sea_mask"].clip(0.0, 1.0)
