"""HEALPix regridding benchmark (issue 17, item 1): writes the ``regrid`` key of
``benchmarks/results/sphere_codec.json`` (read-modify-write: other keys of that file belong
to the codec benchmark) and times regional HEALPix on the 4384 x 6880 1 km demo domain.

Data: ERA5 1 deg ``t2m, msl, u10, v10`` (``era5_global_1deg_2026-03_24steps.nc``), the six
test times (the last six; regridding has no trained setting, nside is fixed a priori to the
HEALPix grid closest to the source resolution: nside 64, 0.92 deg).

Fields: two smooth analytic fields (the headline: the target is stated for smooth fields)
and the ERA5 variables (per variable, under ``era5``).

- ``healpix_roundtrip_rmse``: 1 deg -> HEALPix (bilinear) -> 1 deg, back-map "spectral"
  (``healpix_bilinear``: healpy's 4-point weights, reported beside it).
- ``bilinear_rmse``: 1 deg -> a cell-centred lat-lon grid with as many cells as the HEALPix
  grid (157 x 314 for nside 64) -> 1 deg, bilinear both ways (scipy): the lat-lon baseline
  at the same resolution. A grid with the same spacing as the HEALPix cells (196 x 392, 56 %
  more cells) is reported too.
- ``conservative_mean_err``: max over fields of |HEALPix area mean - lat-lon area mean| /
  |lat-lon area mean| with ``method="conservative"``.

Usage::

    nice python benchmarks/sphere_regrid.py            # about a minute on one core
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

from kmscale.sphere import HealpixGrid, healpix_to_latlon, latlon_to_healpix

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # kmscale_testdata.py
from kmscale_testdata import data_dir  # noqa: E402

VARIABLES = ("t2m", "msl", "u10", "v10")
RESULTS = Path(__file__).parent / "results" / "sphere_codec.json"


def periodic_bilinear(
    values: np.ndarray, lat: np.ndarray, lon: np.ndarray, lat_out: np.ndarray, lon_out: np.ndarray
) -> np.ndarray:
    """scipy bilinear lat-lon -> lat-lon, longitude periodic; ``lat`` ascending."""
    lon_ext = np.concatenate([[lon[-1] - 360.0], lon, [lon[0] + 360.0]])
    v = np.concatenate([values[..., -1:], values, values[..., :1]], axis=-1)
    interp = RegularGridInterpolator((lat, lon_ext), np.moveaxis(v, (-2, -1), (0, 1)))
    la, lo = np.meshgrid(lat_out, np.mod(lon_out - lon_ext[1], 360) + lon_ext[1], indexing="ij")
    return np.moveaxis(interp(np.stack([la, lo], -1)), (0, 1), (-2, -1))


def area_mean(values: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Exact area mean of cell-centred lat-lon fields (``lat`` ascending, poles bounding)."""
    bounds = np.sin(np.radians(np.r_[-90.0, 0.5 * (lat[1:] + lat[:-1]), 90.0]))
    w = np.diff(bounds)
    return (values * w[:, None]).sum((-2, -1)) / (w.sum() * values.shape[-1])


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def smooth_fields(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Two smooth analytic test fields on the sphere ``(2, nlat, nlon)`` (functions of the
    Cartesian position, so smooth at the poles; dominant scales of l ~ 5-15)."""
    la, lo = np.meshgrid(np.radians(lat), np.radians(lon), indexing="ij")
    x, y, z = np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)
    return np.stack(
        [
            np.sin(3 * x + 2 * y) * np.cos(4 * z) + 5 * x * y * z,
            np.cos(6 * x) * np.sin(5 * y + 3 * z),
        ]
    )


def roundtrips(x: np.ndarray, lat: np.ndarray, lon: np.ndarray, nside: int) -> dict:
    """RMSE of every round trip for fields ``(..., nlat, nlon)`` on the ascending grid."""
    h = latlon_to_healpix(x, lat, lon, nside)
    npix = HealpixGrid(nside).npix
    out = {
        "healpix_bilinear": rmse(healpix_to_latlon(h, nside, lat, lon), x),
        "healpix_spectral": rmse(healpix_to_latlon(h, nside, lat, lon, "spectral"), x),
    }
    n_eq = int(round(np.sqrt(npix / 2)))  # lat-lon grid with as many cells as HEALPix
    n_sp = int(round(180 / HealpixGrid(nside).resolution_deg))  # ... with the same spacing
    for key, n in (("latlon_equal_cells", n_eq), ("latlon_equal_spacing", n_sp)):
        lat_mid = -90 + (np.arange(n) + 0.5) * 180 / n
        lon_mid = (np.arange(2 * n) + 0.5) * 180 / n
        out[key] = rmse(_latlon_roundtrip(x, lat, lon, lat_mid, lon_mid), x)
        out[key + "_shape"] = [n, 2 * n]
    return out


def regrid(nside: int, n_test: int) -> dict:
    path = data_dir() / "era5_global" / "era5_global_1deg_2026-03_24steps.nc"
    ds = xr.open_dataset(path, engine="h5netcdf").isel(time=slice(-n_test, None))
    ds = ds.sortby("latitude")
    lat, lon = ds.latitude.values, ds.longitude.values
    per_var = {}
    for name in VARIABLES:
        x = ds[name].values.astype(float)
        t0 = time.perf_counter()
        cons = latlon_to_healpix(x, lat, lon, nside, method="conservative")
        t_cons = time.perf_counter() - t0
        truth = area_mean(x, lat)
        per_var[name] = {
            "units": ds[name].attrs.get("units", ""),
            **roundtrips(x, lat, lon, nside),
            "conservative_mean_err": float(np.max(np.abs(cons.mean(-1) - truth) / np.abs(truth))),
            "seconds_conservative_to_healpix": t_cons,
        }
    smooth = roundtrips(smooth_fields(lat, lon), lat, lon, nside)
    return {
        "split": f"ERA5: test, the last {n_test} of 24 times (no setting tuned)",
        "nside": nside,
        "healpix_resolution_deg": HealpixGrid(nside).resolution_deg,
        "source": "1 deg grid of " + path.name,
        "headline": "smooth analytic fields (the target's 'smooth fields'): HEALPix round trip "
        "with the spectral back-map vs lat-lon bilinear round trip through a grid "
        "with as many cells as HEALPix; ERA5 per variable under era5",
        "healpix_roundtrip_rmse": smooth["healpix_spectral"],
        "bilinear_rmse": smooth["latlon_equal_cells"],
        "conservative_mean_err": max(v["conservative_mean_err"] for v in per_var.values()),
        "smooth": smooth,
        "era5": per_var,
    }


def _latlon_roundtrip(x, lat, lon, lat_mid, lon_mid):
    """1 deg -> the offset lat-lon grid -> 1 deg; rows beyond the offset grid's outermost
    latitudes take the zonal mean at the pole, as the HEALPix path does."""
    mid = periodic_bilinear(x, lat, lon, lat_mid, lon_mid)
    pole_s = np.repeat(x[..., :1, :].mean(-1, keepdims=True), lon_mid.size, -1)
    pole_n = np.repeat(x[..., -1:, :].mean(-1, keepdims=True), lon_mid.size, -1)
    ext = np.concatenate([pole_s, mid, pole_n], axis=-2)
    return periodic_bilinear(ext, np.r_[-90.0, lat_mid, 90.0], lon_mid, lat, lon)


def regional(nside: int) -> dict:
    """Build the regional HEALPix of the whole 1 km demo domain and map one field through it,
    in a subprocess so that its peak memory is its own."""
    code = (
        "import json,resource,time,numpy as np;"
        "from kmscale.data.demo import DemoRegion;from kmscale.sphere import RegionalHealpix;"
        "r=DemoRegion.full();lat,lon=r.lat,r.lon;"
        f"t=time.perf_counter();reg=RegionalHealpix({nside},lat,lon);tb=time.perf_counter()-t;"
        "f=np.add.outer(np.sin(np.radians(lat)*40),np.cos(np.radians(lon)*40)).astype('f4');"
        "t=time.perf_counter();c=reg.to_cells(f);tc=time.perf_counter()-t;"
        "print(json.dumps({'shape':list(f.shape),'nside':reg.nside,'ncell':reg.ncell,"
        "'build_s':tb,'to_cells_s':tc,"
        "'peak_rss_gib':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nside", type=int, default=64, help="HEALPix grid of the round trip")
    p.add_argument("--test-times", type=int, default=6, help="the last N times (test split)")
    p.add_argument(
        "--regional-nside",
        type=int,
        default=4096,
        help="nside of the regional grid on the 0.01 deg demo domain (0 to skip)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    result = regrid(args.nside, args.test_times)
    if args.regional_nside:
        result["regional_demo_domain"] = regional(args.regional_nside)
    result.update(
        {
            "machine": (
                f"2-core shared dev VM, no GPU ({platform.processor() or platform.machine()})"
            ),
            "load_avg_1min": os.getloadavg()[0],
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
            "command": "nice python benchmarks/sphere_regrid.py " + " ".join(argv or sys.argv[1:]),
            "peak_rss_gib_main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        }
    )
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    data["regrid"] = result
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, args.out)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
