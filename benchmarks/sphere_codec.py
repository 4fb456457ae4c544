"""Global sphere codec benchmark (issue 17): the HEALPix hyperprior against SZ3 and ZFP.

ERA5 t2m at 1 deg (24 times), regridded bilinearly to HEALPix nested nside 64 with
:mod:`kmscale.sphere`; every codec compresses and is scored on those HEALPix fields
(equal-area cells, so plain means are area means). Times 0-13 train the hyperprior
(with copies rotated by whole-degree longitudes), 14-17 validate every choice (lambda,
training length, gain step, each baseline's array layout, the gain step per error bound),
18-23 are the test split, scored once.

Methods:
  hyperprior     the mean-scale hyperprior on the 12 faces; rate from the archive file on
                 disk (header included); curve from the gain step (y quantized by step)
  sz3_3d         SZ3 absolute error bound on the whole test block (imagecodecs)
  zfp            ZFP fixed-accuracy mode on the whole test block (imagecodecs)
  error_bounded  the hyperprior's reconstruction + a residual quantized with step 2 x bound
                 (``kmscale compress --max-error``); compared with SZ3 at the same bound

Each point: ratio (raw float32 bytes / bytes), rmse, mae, max_abs, q999_err (99.9th
percentile of |error|) in K. Decoder weights are stated separately. Training runs on CPU
with one thread, its CPU time is recorded (the budget is ~15 CPU-minutes).

Usage::

    nice python benchmarks/sphere_codec.py                 # recipes/configs/benchmarks/...
    nice python benchmarks/sphere_codec.py train.steps=50  # dotted overrides
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from kmscale.autoencoders.archive import compress_dataset, decompress_archive
from kmscale.autoencoders.hyperprior import HyperpriorAutoencoder, fit_hyperprior
from kmscale.config import load_config
from kmscale.data.readers import open_dataset
from kmscale.sphere import HealpixGrid, latlon_to_healpix
from kmscale.sphere.regrid import healpix_coords

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # kmscale_testdata.py
from kmscale_testdata import data_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes/configs/benchmarks/sphere_codec.yaml"
RESULTS = ROOT / "benchmarks/results/sphere_codec.json"
FIGURE = ROOT / "benchmarks/results/sphere_codec_rd.png"


@dataclass
class ModelSpec:
    channels: int = 32
    latent_channels: int = 16
    levels: int = 3
    hyper_levels: int = 2


@dataclass
class TrainSpec:
    steps: int = 300
    batch_size: int = 4
    lr: float = 2e-3
    validate_every: int = 100
    seed: int = 0


@dataclass
class SphereCodecBench:
    data: str = "era5_global/era5_global_1deg_2026-03_24steps.nc"
    variable: str = "t2m"
    nside: int = 64
    train_times: list[int] = field(default_factory=lambda: [0, 14])
    validation_times: list[int] = field(default_factory=lambda: [14, 18])
    test_times: list[int] = field(default_factory=lambda: [18, 24])
    augment_shifts: int = 8
    field_mean: bool = True
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    lambdas: list[float] = field(default_factory=lambda: [1000.0, 5000.0])
    gain_steps: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    error_bound_gain_steps: list[float] = field(default_factory=lambda: [1.0])
    select_rmse: float = 0.3
    sz3_bounds: list[float] = field(default_factory=lambda: [0.1, 0.5])
    zfp_tolerances: list[float] = field(default_factory=lambda: [0.125, 0.5])
    error_bounds: list[float] = field(default_factory=lambda: [0.1, 0.5])


# ---- metrics --------------------------------------------------------------------------
def point(truth: np.ndarray, rec: np.ndarray, nbytes: int, **extra) -> dict:
    err = np.abs(rec.astype(np.float64) - truth)
    return {
        "ratio": truth.size * 4 / nbytes,
        "bytes": int(nbytes),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(err.mean()),
        "max_abs": float(err.max()),
        "q999_err": float(np.quantile(err, 0.999)),
        **extra,
    }


def ratio_at(curve: list[dict], rmse: float) -> float | None:
    """Log-log interpolated ratio of a curve at ``rmse`` (None outside its range)."""
    pts = sorted((p["rmse"], p["ratio"]) for p in curve)
    r, q = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    if not pts or np.log(rmse) < r.min() or np.log(rmse) > r.max():
        return None
    order = np.argsort(r)
    return float(np.exp(np.interp(np.log(rmse), r[order], q[order])))


# ---- data -----------------------------------------------------------------------------
def load_fields(cfg: SphereCodecBench) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    ds = open_dataset(data_dir() / cfg.data)
    x = np.asarray(ds[cfg.variable].values, np.float32)
    lat, lon = ds["lat"].values, ds["lon"].values
    hp = latlon_to_healpix(x, lat, lon, cfg.nside).astype(np.float32)
    a, b = cfg.train_times
    rng = np.random.default_rng(cfg.train.seed)
    shifts = [0] + rng.integers(1, 360, cfg.augment_shifts - 1).tolist()
    step = int(round(360 / len(lon)))
    train = np.concatenate(
        [
            latlon_to_healpix(np.roll(x[a:b], s // step, axis=-1), lat, lon, cfg.nside)
            for s in shifts
        ]
    ).astype(np.float32)
    info = {
        "times": [str(t)[:19] for t in ds["time"].values],
        "units": ds[cfg.variable].attrs.get("units", "K"),
        "longitude_shifts_deg": shifts,
    }
    return hp, train, ds["time"].values, info


def healpix_dataset(
    x: np.ndarray, times: np.ndarray, nside: int, name: str, units: str
) -> xr.Dataset:
    return xr.Dataset(
        {name: (("time", "cell"), x, {"units": units})},
        coords={"time": times, **healpix_coords(nside)},
        attrs=HealpixGrid(nside).attrs(),
    )


# ---- the hyperprior -----------------------------------------------------------------------
def build_model(cfg: SphereCodecBench, train: np.ndarray) -> HyperpriorAutoencoder:
    stats = {cfg.variable: {"mean": float(train.mean()), "std": float(train.std())}}
    m = HyperpriorAutoencoder(
        variables=[cfg.variable], input_stats=stats, nside=cfg.nside, **asdict(cfg.model)
    )
    if cfg.field_mean:
        m.set_field_mean(torch.from_numpy(train.mean(0, keepdims=True)))
    return m


def hyperprior_curve(model, x, times, cfg, steps, workdir: Path) -> list[dict]:
    """RD points on fields x (T, npix): one archive per gain step, bytes from the file."""
    out = []
    ds = healpix_dataset(x, times, cfg.nside, cfg.variable, "K")
    for s in steps:
        path = workdir / f"hp_{s}.kmsc"
        res = compress_dataset(model, ds, path, step=s, overwrite=True)
        rec, failed = decompress_archive(path, model)
        assert not failed
        out.append(point(x, rec[cfg.variable].values, res.nbytes, gain_step=s))
    return out


def error_bounded_points(model, x, times, cfg, bound_steps: dict, workdir: Path) -> list[dict]:
    out = []
    ds = healpix_dataset(x, times, cfg.nside, cfg.variable, "K")
    for b, s in bound_steps.items():
        path = workdir / f"eb_{b}.kmsc"
        res = compress_dataset(model, ds, path, step=s, max_error=b, overwrite=True)
        rec, failed = decompress_archive(path, model)
        assert not failed
        p = point(x, rec[cfg.variable].values, res.nbytes, bound=b, gain_step=s)
        p["within_bound_fraction"] = float(np.mean(np.abs(rec[cfg.variable].values - x) <= b))
        out.append(p)
    return out


def train_and_select(cfg, train, val, val_times, workdir) -> tuple[HyperpriorAutoencoder, dict]:
    """Train one model per lambda; validate every ``validate_every`` steps; keep the best
    (lambda, step count) by the validation ratio at ``select_rmse``."""
    best, log = None, []
    cpu0 = time.process_time()
    for lmbda in cfg.lambdas:
        model = build_model(cfg, train)
        fields = model.normalize_input(torch.from_numpy(train[:, None]))

        def validate(step, model=model, lmbda=lmbda):
            curve = hyperprior_curve(model, val, val_times, cfg, cfg.gain_steps, workdir)
            score = ratio_at(curve, cfg.select_rmse)
            log.append(
                {"lambda": lmbda, "steps": step, "ratio_at_select_rmse": score, "curve": curve}
            )
            print(
                f"  validation lambda {lmbda} step {step}: ratio at {cfg.select_rmse} K = "
                f"{score}; rmse range {min(p['rmse'] for p in curve):.3f}-"
                f"{max(p['rmse'] for p in curve):.3f}",
                flush=True,
            )
            nonlocal best
            # a curve that does not reach select_rmse ranks below every one that does,
            # by its lowest RMSE
            key = score if score is not None else -min(p["rmse"] for p in curve)
            if best is None or key > best[0]:
                best = (key, lmbda, step, copy.deepcopy(model.state_dict()))

        fit_hyperprior(
            model,
            fields,
            lmbda=lmbda,
            steps=cfg.train.steps,
            batch_size=cfg.train.batch_size,
            lr=cfg.train.lr,
            seed=cfg.train.seed,
            callback=validate,
            callback_every=cfg.train.validate_every,
        )
    cpu = time.process_time() - cpu0
    model = build_model(cfg, train)
    model.load_state_dict(best[3])
    model.eval()
    return model, {
        "lambda": best[1],
        "steps": best[2],
        "validation_log": log,
        "training_and_validation_cpu_s": cpu,
    }


# ---- baselines ------------------------------------------------------------------------------
def layouts(x: np.ndarray, nside: int) -> dict[str, np.ndarray]:
    """Candidate 3-D arrays for SZ3/ZFP: (time, 12 nside, nside) faces stacked in rows, or
    (12 time, nside, nside) each face's time series contiguous."""
    faces = x.reshape(x.shape[0], 12, nside, nside)  # nested order: a face is contiguous
    return {
        "time_rows": np.ascontiguousarray(faces.reshape(x.shape[0], 12 * nside, nside)),
        "face_time": np.ascontiguousarray(faces.transpose(1, 0, 2, 3).reshape(-1, nside, nside)),
    }


def from_layout(arr: np.ndarray, name: str, t: int, nside: int) -> np.ndarray:
    if name == "time_rows":
        return arr.reshape(t, -1)
    return arr.reshape(12, t, nside, nside).transpose(1, 0, 2, 3).reshape(t, -1)


def sz3_points(x, nside, bounds, layout) -> list[dict]:
    import imagecodecs

    arr = layouts(x, nside)[layout]
    out = []
    for b in bounds:
        enc = imagecodecs.sz3_encode(arr, mode="abs", abs=b)
        dec = imagecodecs.sz3_decode(enc, arr.shape, arr.dtype)
        out.append(
            point(x, from_layout(dec, layout, x.shape[0], nside), len(enc), bound=b, layout=layout)
        )
    return out


def zfp_points(x, nside, tolerances, layout) -> list[dict]:
    import imagecodecs

    arr = layouts(x, nside)[layout]
    out = []
    for tol in tolerances:
        enc = imagecodecs.zfp_encode(arr, level=tol, mode="a")
        dec = imagecodecs.zfp_decode(enc)
        out.append(
            point(
                x,
                from_layout(dec, layout, x.shape[0], nside),
                len(enc),
                tolerance=tol,
                layout=layout,
            )
        )
    return out


def best_layout(fn, x, nside, params, rmse) -> str:
    scores = {}
    for name in ("time_rows", "face_time"):
        curve = fn(x, nside, params, name)
        scores[name] = ratio_at(curve, rmse) or 0.0
    return max(scores, key=scores.get)


# ---- determinism and speed ------------------------------------------------------------------
_DECODE = """
import sys, torch
torch.set_num_threads(2)
from kmscale.autoencoders import load_autoencoder
m = load_autoencoder(sys.argv[1])
data = open(sys.argv[2], "rb").read()
sys.stdout.buffer.write(m.decompress([data], (int(sys.argv[3]),)).numpy().tobytes())
"""


def bitexact(model, x, workdir: Path) -> bool:
    model.save_pretrained(workdir / "model")
    torch.set_num_threads(1)
    (data,) = model.compress(torch.from_numpy(x[:1, None]))
    here = model.decompress([data], (x.shape[1],)).numpy().tobytes()
    (workdir / "s.bin").write_bytes(data)
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            _DECODE,
            str(workdir / "model"),
            str(workdir / "s.bin"),
            str(x.shape[1]),
        ],
        capture_output=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    torch.set_num_threads(2)
    two = model.decompress([data], (x.shape[1],)).numpy().tobytes()
    torch.set_num_threads(1)
    return res.stdout == here and two == here


def throughput(model, x, step) -> dict:
    """MB/s of raw float32 through compress / decompress, one thread, CPU time."""
    t = torch.from_numpy(x[:, None])
    c0 = time.process_time()
    strings = model.compress(t, step)
    c1 = time.process_time()
    model.decompress(strings, (x.shape[1],))
    c2 = time.process_time()
    mb = x.size * 4 / 1e6
    return {"encode": mb / (c1 - c0), "decode": mb / (c2 - c1)}


# ---- output ---------------------------------------------------------------------------------
def write_results(update: dict) -> None:
    """Read-modify-write: other keys of the file (e.g. ``regrid``) are kept."""
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    glob = data.get("global", {})
    glob.update(update.pop("global"))
    data.update(update, **{"global": glob})
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, RESULTS)


def figure(curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    styles = {"hyperprior": "o-", "sz3_3d": "s--", "zfp": "^:", "error_bounded": "D-"}
    for name, curve in curves.items():
        pts = sorted((p["rmse"], p["ratio"]) for p in curve)
        ax.loglog(*zip(*pts, strict=True), styles[name], label=name)
    ax.axvspan(0.1, 0.5, color="0.9", zorder=0, label="useful range")
    ax.set_xlabel("RMSE (K), test times")
    ax.set_ylabel("compression ratio (raw float32 / bytes on disk)")
    ax.set_title("ERA5 t2m on HEALPix nside 64 (6 test times)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(CONFIG))
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=50")
    args = p.parse_args(argv)
    cfg = load_config(SphereCodecBench, args.config, args.overrides)
    torch.set_num_threads(1)
    hp, train, times, info = load_fields(cfg)
    val_sl, test_sl = slice(*cfg.validation_times), slice(*cfg.test_times)
    val, test = hp[val_sl], hp[test_sl]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, chosen = train_and_select(cfg, train, val, times[val_sl], work)
        print(
            f"chosen: lambda {chosen['lambda']}, {chosen['steps']} steps; training+validation "
            f"{chosen['training_and_validation_cpu_s']:.0f} CPU-s",
            flush=True,
        )
        # error-bounded: per bound, the gain step with the fewest validation bytes
        bound_steps, bound_sizes = {}, {}
        for b in cfg.error_bounds:
            sizes = {}
            for s in cfg.error_bound_gain_steps:
                (pt,) = error_bounded_points(model, val, times[val_sl], cfg, {b: s}, work)
                sizes[s] = pt["bytes"]
            bound_steps[b] = min(sizes, key=sizes.get)
            bound_sizes[b] = sizes
        sz3_layout = best_layout(sz3_points, val, cfg.nside, cfg.sz3_bounds, cfg.select_rmse)
        zfp_layout = best_layout(zfp_points, val, cfg.nside, cfg.zfp_tolerances, cfg.select_rmse)
        # ---- test split, once ----
        curves = {
            "hyperprior": hyperprior_curve(model, test, times[test_sl], cfg, cfg.gain_steps, work),
            "sz3_3d": sz3_points(test, cfg.nside, cfg.sz3_bounds, sz3_layout),
            "zfp": zfp_points(test, cfg.nside, cfg.zfp_tolerances, zfp_layout),
            "error_bounded": error_bounded_points(
                model, test, times[test_sl], cfg, bound_steps, work
            ),
        }
        sz3_at_bound = {
            p["bound"]: p for p in sz3_points(test, cfg.nside, cfg.error_bounds, sz3_layout)
        }
        exact = bitexact(model, test, work)
        speed = throughput(model, test, 1.0)
        ds = healpix_dataset(test, times[test_sl], cfg.nside, cfg.variable, "K")
        c0 = time.process_time()
        compress_dataset(
            model, ds, work / "t.kmsc", max_error=0.1, step=bound_steps.get(0.1), overwrite=True
        )
        c1 = time.process_time()
        decompress_archive(work / "t.kmsc", model)
        c2 = time.process_time()
        speed_eb = {
            "encode": test.size * 4 / 1e6 / (c1 - c0),
            "decode": test.size * 4 / 1e6 / (c2 - c1),
        }
    comparison = []
    for r in (0.1, 0.2, 0.3, 0.4, 0.5):
        a, b = ratio_at(curves["hyperprior"], r), ratio_at(curves["sz3_3d"], r)
        comparison.append(
            {
                "rmse": r,
                "hyperprior_ratio": a,
                "sz3_3d_ratio": b,
                "gain": a / b if a and b else None,
            }
        )
    eb_vs_sz3 = [
        {
            "bound": p["bound"],
            "error_bounded_ratio": p["ratio"],
            "sz3_3d_ratio": sz3_at_bound[p["bound"]]["ratio"],
            "gain": p["ratio"] / sz3_at_bound[p["bound"]]["ratio"],
            "max_abs": p["max_abs"],
            "within_bound_fraction": p["within_bound_fraction"],
        }
        for p in curves["error_bounded"]
    ]
    result = {
        "global": {
            **curves,
            "hyperprior_vs_sz3_at_equal_rmse": comparison,
            "error_bounded_vs_sz3_at_equal_bound": eb_vs_sz3,
            "sz3_at_error_bounds": list(sz3_at_bound.values()),
            "split": "test (times 18-23); every choice on validation (times 14-17)",
            "grid": f"HEALPix nested nside {cfg.nside} (bilinear from 1 deg lat-lon)",
            "chosen": {k: v for k, v in chosen.items() if k != "validation_log"},
            "validation_log": chosen["validation_log"],
            "error_bounded_gain_steps": bound_steps,
            "error_bounded_validation_bytes": bound_sizes,
            "baseline_layouts": {"sz3_3d": sz3_layout, "zfp": zfp_layout},
            "decoder_bytes": model.decoder_nbytes(),
            "config": asdict(cfg),
            "data": info,
        },
        "bitexact": exact,
        "throughput_mb_s": {
            **speed,
            "error_bounded_archive": speed_eb,
            "note": "raw float32 MB per CPU-second, torch 1 thread, hyperprior "
            "compress/decompress at gain step 1 on the 6 test fields",
        },
        "sphere_codec_run": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": "2-core shared dev VM, no GPU ("
            + (platform.processor() or platform.machine())
            + ")",
            "load": os.getloadavg(),
            "command": "nice python benchmarks/sphere_codec.py " + " ".join(args.overrides),
        },
    }
    write_results(result)
    figure(curves)
    print(
        json.dumps(
            {
                "comparison": comparison,
                "error_bounded": eb_vs_sz3,
                "bitexact": exact,
                "throughput": speed,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
