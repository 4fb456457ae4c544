"""Compression benchmark (issue 3): learned VAE latents against classical codecs.

Datasets (real, from the shared data folder):
  * ERA5 UK 2 m temperature, cropped to 32 x 48 at 0.25 deg: VAEs trained on
    2019-03-01..20, everything evaluated on 2019-03-21..24 (96 fields).
  * RADOLAN RW 1 km hourly precipitation, 900 x 900, 2022-10-18: only 24 hours of one
    day exist, so the VAEs train on hours 00-15 and are evaluated on hours 16-23 (the
    hours are strongly correlated: this is an optimistic split, stated as such).

Methods, each swept over its rate parameter:
  vae       kmscale VAE (AutoencoderKL) at several latent sizes; latents quantized
            per channel (step in normalized units) + zstd-19; decoder size stated separately
  resize    block mean by k, stored float32, bilinear upsampling
  zfp       ZFP fixed-accuracy mode on the whole (time, y, x) block (imagecodecs)
  sz3       SZ3 absolute error bound, each 2-D field separately (as the VAE sees them)
  sz3_3d    SZ3 absolute error bound on the whole (time, y, x) block
  bitround  mantissa bit-rounding (numcodecs BitRound) + zstd-19 on the block

Bytes are what would sit on disk for the evaluation block; for RADOLAN every method
also pays for the NaN mask (zstd of the packed bits, stored once). Ratio = raw float32
bytes of the evaluation block / bytes. Metrics on valid points: RMSE, MAE, max |error|,
bias, error of the 0.1 % and 99.9 % quantiles, and the ratio of zonal power in the
smallest quarter of scales (reconstruction / truth).

CPU budget (2 cores shared by 5 engineers): each ERA5 VAE trains ``--era5-seconds``
(default 240 CPU-seconds, counted as process CPU time so that a busy machine gives
the same compute), each RADOLAN VAE ``--radolan-seconds`` (default 240), two stages
(small patches for 60 % of the budget, then larger patches). The tiled full-grid
check encodes + decodes one 4384 x 6880 x 3-variable field in a subprocess and
reports wall time and peak RSS.

Usage::

    python benchmarks/compression.py                 # everything, ~20 min on 2 cores
    python benchmarks/compression.py --only tiled     # just the full-grid tiling check
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from kmscale.autoencoders.losses import VAELoss
from kmscale.autoencoders.quantize import dequantize, quantize, zstd_bytes
from kmscale.autoencoders.tiling import tiled_decode, tiled_encode
from kmscale.autoencoders.vae import VAEAutoencoder
from kmscale.data.patches import random_patch
from kmscale.data.readers import detect_engine
from kmscale.paths import data_file

RESULTS = Path(__file__).resolve().parent / "results"

# name -> (block_out_channels, latent_channels): 2x, 4x, 8x downsampling.
# Small widths: the shared 2-core machine affords a few CPU-minutes per model.
ERA5_VAES = {
    "vae_4x_c2": ((16, 32, 32), 2),
    "vae_8x_c4": ((16, 32, 32, 32), 4),
}
RADOLAN_VAES = {
    "vae_8x_c4": ((16, 32, 32, 32), 4),
}
TILED_WIDTHS = (16, 32, 64, 64)  # full-grid tiling check: 8x, 4 latent channels
QUANT_STEPS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


# ---------------------------------------------------------------------------- data
def load_era5() -> tuple[np.ndarray, np.ndarray]:
    path = data_file("era5_uk_t2m_201903", "era5_uk_t2m_20190301-24.nc")
    ds = xr.open_dataset(path, engine=detect_engine(path))
    t2m = ds["t2m"].isel(latitude=slice(0, 32), longitude=slice(0, 48))
    train = t2m.sel(time=slice("2019-03-01", "2019-03-20")).values.astype(np.float32)
    test = t2m.sel(time=slice("2019-03-21", "2019-03-24")).values.astype(np.float32)
    return train, test


def load_radolan() -> tuple[np.ndarray, np.ndarray]:
    path = data_file("radolan_rw_20221018", "radolan_RW_20221018_hourly_1km.nc")
    ds = xr.open_dataset(path, engine=detect_engine(path))
    pr = ds["precipitation"].values.astype(np.float32)
    return pr[:16], pr[16:]


# ---------------------------------------------------------------------------- metrics
def small_scale_power_ratio(truth: np.ndarray, recon: np.ndarray) -> float:
    """Zonal power in the highest quarter of wavenumbers, reconstruction / truth."""
    def power(x):
        x = np.nan_to_num(x) - np.nanmean(x, axis=-1, keepdims=True)
        p = np.abs(np.fft.rfft(x * np.hanning(x.shape[-1]), axis=-1)) ** 2
        return p.reshape(-1, p.shape[-1]).mean(0)

    pt, pr = power(truth), power(recon)
    k = pt.shape[0]
    hi = slice(k - k // 4, k)
    return float(pr[hi].sum() / pt[hi].sum())


def metrics(truth: np.ndarray, recon: np.ndarray, valid: np.ndarray | None) -> dict:
    t = truth[valid] if valid is not None else truth.ravel()
    r = recon[valid] if valid is not None else recon.ravel()
    if not np.all(np.isfinite(r)):
        raise FloatingPointError("reconstruction has non-finite values at valid points")
    err = (r.astype(np.float64) - t)
    q = np.quantile(t, [0.001, 0.999]), np.quantile(r, [0.001, 0.999])
    return {
        "rmse": float(np.sqrt(np.mean(err ** 2))),
        "mae": float(np.mean(np.abs(err))),
        "max_abs": float(np.max(np.abs(err))),
        "bias": float(np.mean(err)),
        "q001_err": float(q[1][0] - q[0][0]),
        "q999_err": float(q[1][1] - q[0][1]),
        "small_scale_power_ratio": small_scale_power_ratio(
            np.where(np.isfinite(truth), truth, 0), np.where(np.isfinite(truth), recon, 0)),
    }


def point(truth, recon, valid, nbytes, extra_bytes, **setting) -> dict:
    raw = truth.size * 4
    total = nbytes + extra_bytes
    return {"ratio": raw / total, "bytes": int(total), **metrics(truth, recon, valid), **setting}


# ---------------------------------------------------------------------------- baselines
def run_resize(x, valid, extra, factors=(2, 4, 8, 16)) -> list[dict]:
    import torch.nn.functional as F

    out = []
    T, H, W = x.shape
    for k in factors:
        Hp, Wp = -(-H // k) * k, -(-W // k) * k
        xp = np.full((T, Hp, Wp), np.nan, np.float32)
        xp[:, :H, :W] = x
        blocks = xp.reshape(T, Hp // k, k, Wp // k, k)
        with np.errstate(invalid="ignore"), __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore", RuntimeWarning)
            coarse = np.nanmean(blocks, axis=(2, 4))
        coarse = np.nan_to_num(coarse, nan=0.0).astype(np.float32)
        up = F.interpolate(torch.from_numpy(coarse)[:, None], scale_factor=k, mode="bilinear",
                           align_corners=False)[:, 0, :H, :W].numpy()
        out.append(point(x, up, valid, coarse.nbytes, extra, factor=k))
    return out


def run_zfp(x, valid, extra, tolerances) -> list[dict]:
    import imagecodecs

    filled = np.ascontiguousarray(np.nan_to_num(x, nan=0.0))
    out = []
    for tol in tolerances:
        enc = imagecodecs.zfp_encode(filled, level=tol, mode="a")
        dec = imagecodecs.zfp_decode(enc)
        out.append(point(x, dec, valid, len(enc), extra, tolerance=tol))
    return out


def run_sz3(x, valid, extra, bounds, per_field: bool) -> list[dict]:
    import imagecodecs

    filled = np.ascontiguousarray(np.nan_to_num(x, nan=0.0))
    out = []
    for eb in bounds:
        if per_field:
            encs = [imagecodecs.sz3_encode(np.ascontiguousarray(f), mode="abs", abs=eb) for f in filled]
            dec = np.stack([imagecodecs.sz3_decode(e, f.shape, f.dtype) for e, f in zip(encs, filled, strict=True)])
            nbytes = sum(len(e) for e in encs)
        else:
            enc = imagecodecs.sz3_encode(filled, mode="abs", abs=eb)
            dec = imagecodecs.sz3_decode(enc, filled.shape, filled.dtype)
            nbytes = len(enc)
        out.append(point(x, dec, valid, nbytes, extra, error_bound=eb))
    return out


def run_bitround(x, valid, extra, keepbits=(2, 3, 4, 5, 6, 7, 8, 10, 12)) -> list[dict]:
    from numcodecs import BitRound

    filled = np.ascontiguousarray(np.nan_to_num(x, nan=0.0))
    out = []
    for k in keepbits:
        rounded = np.frombuffer(BitRound(keepbits=k).encode(filled), dtype=np.float32).reshape(x.shape)
        out.append(point(x, rounded, valid, len(zstd_bytes(rounded)), extra, keepbits=k))
    return out


# ---------------------------------------------------------------------------- VAE
def train_vae(name, widths, latent_ch, train, stat, variable, budget_s, patches, batch, seed=0,
              spectral_weight=0.0) -> tuple[VAEAutoencoder, dict]:
    """Two-stage training for ``budget_s`` seconds: ``patches[0]`` for 60 %, then ``patches[1]``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = VAEAutoencoder(variables=[variable], input_stats={variable: stat},
                           block_out_channels=widths, latent_channels=latent_ch)
    loss = VAELoss(charbonnier_eps=1e-3, kl_weight=1e-6, kl_warmup_samples=2000,
                   spectral_weight=spectral_weight)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    # The budget is process CPU time (both threads), so a busy shared machine gives the
    # model the same compute, only later.
    t0, steps, seen, last = time.process_time(), 0, 0, float("nan")
    H, W = train.shape[-2:]
    while (elapsed := time.process_time() - t0) < budget_s:
        patch = patches[0] if elapsed < 0.6 * budget_s else patches[1]
        lr = 1e-3 * min(1.0, (steps + 1) / 50) * (0.3 if elapsed > 0.85 * budget_s else 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        xs = []
        for _ in range(batch):
            sy, sx = random_patch((H, W), patch, rng)
            xs.append(train[rng.integers(len(train)), sy, sx])
        x = torch.from_numpy(np.stack(xs))[:, None]
        mask = torch.isfinite(x)
        xn = model.normalize_input(x)
        x_hat, post = model(xn)
        parts = loss(x_hat, xn, post, mask=mask, samples_seen=seen)
        total = parts["total"].mean()
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps, seen, last = steps + 1, seen + batch, float(parts["recon"].detach().mean())
    model.eval()
    # Latent normalization from training latents (posterior means).
    sub = train[:: max(1, len(train) // (64 if train.shape[-1] < 256 else 4))]
    z = tiled_encode(model, sub[:, None], batch_size=16 if sub.shape[-1] < 256 else 1).numpy()
    model.set_latent_stats(z.mean(axis=(0, 2, 3)).tolist(), (z.std(axis=(0, 2, 3)) + 1e-6).tolist())
    info = {"config": name, "train_cpu_seconds": budget_s, "train_steps": steps, "train_samples": seen,
            "final_recon_loss": last, "decoder_bytes": model.decoder_nbytes(),
            "parameters": sum(p.numel() for p in model.parameters())}
    print(f"  {name}: {steps} steps, {seen} samples, recon {last:.4f}", flush=True)
    return model, info


def run_vae(model, info, x, valid, extra, steps=QUANT_STEPS, clip=None) -> list[dict]:
    """Points for float16 latents and each quantization step; ``clip`` bounds the
    reconstruction to a physical range (precipitation: a barely trained log1p decoder
    can overflow expm1)."""
    z = tiled_encode(model, x[:, None], batch_size=16 if x.shape[-1] < 256 else 1).numpy()
    mask = None if valid is None else valid[:, None]  # the composite's footprint changes by the hour
    out = []
    settings = [None, *steps]
    for step in settings:
        if step is None:
            data, zq = z.astype(np.float16), z.astype(np.float16).astype(np.float32)
            if not np.all(np.isfinite(data)):
                print(f"  {info['config']}: float16 latents overflow (|z| max {np.abs(z).max():.3g}); "
                      f"float16 point skipped", flush=True)
                continue
        else:
            data = quantize(z, step, channel_axis=1)
            zq = dequantize(data, step, channel_axis=1)
        nbytes = len(zstd_bytes(data))
        recon = tiled_decode(model, zq, shape=x.shape[-2:], mask=mask, batch_size=16 if x.shape[-1] < 256 else 1)[:, 0].numpy()
        if clip is not None:
            recon = np.where(np.isnan(recon), recon, np.clip(np.nan_to_num(recon, posinf=clip[1]), *clip))
        out.append(point(x, recon, valid, nbytes, extra, quant_step=step,
                         latent_dtype=str(data.dtype), **info))
    return out


ERA5_BOUNDS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
ERA5_ZFP = (0.1, 0.4, 1.6, 3.2, 6.4, 12.8, 25.6)  # ZFP's accuracy mode is conservative: RMSE << tolerance
RADOLAN_BOUNDS = (0.01, 0.03, 0.1, 0.3, 1.0, 2.0)
RADOLAN_ZFP = (0.03, 0.1, 0.3, 1.0, 2.0, 4.0, 8.0, 16.0)


def era5_baselines(test) -> dict:
    return {"resize": run_resize(test, None, 0),
            "zfp": run_zfp(test, None, 0, ERA5_ZFP),
            "sz3": run_sz3(test, None, 0, ERA5_BOUNDS, per_field=True),
            "sz3_3d": run_sz3(test, None, 0, ERA5_BOUNDS, per_field=False),
            "bitround": run_bitround(test, None, 0)}


def radolan_baselines(test, valid, mask_bytes) -> dict:
    return {"resize": run_resize(test, valid, mask_bytes),
            "zfp": run_zfp(test, valid, mask_bytes, RADOLAN_ZFP),
            "sz3": run_sz3(test, valid, mask_bytes, RADOLAN_BOUNDS, per_field=True),
            "sz3_3d": run_sz3(test, valid, mask_bytes, RADOLAN_BOUNDS, per_field=False),
            "bitround": run_bitround(test, valid, mask_bytes)}


def era5_benchmark(budget_s: float) -> dict:
    train, test = load_era5()
    stat = {"mean": float(train.mean()), "std": float(train.std()), "transform": "none"}
    res = {**era5_baselines(test), "vae": []}
    for name, (widths, ch) in ERA5_VAES.items():
        model, info = train_vae(name, widths, ch, train, stat, "t2m", budget_s,
                                patches=((16, 16), (32, 48)), batch=16)
        res["vae"] += run_vae(model, info, test, None, 0)
    return res


def radolan_benchmark(budget_s: float) -> dict:
    train, test = load_radolan()
    valid = np.isfinite(test)
    mask_bytes = len(zstd_bytes(np.packbits(valid)))  # per-hour NaN masks (the footprint varies)
    y = np.log1p(train[np.isfinite(train)])
    stat = {"mean": float(y.mean()), "std": float(y.std()), "transform": "log1p", "scale": 1.0}
    res = {**radolan_baselines(test, valid, mask_bytes), "vae": []}
    for name, (widths, ch) in RADOLAN_VAES.items():
        model, info = train_vae(name, widths, ch, train, stat, "tp", budget_s,
                                patches=((64, 64), (96, 96)), batch=4, spectral_weight=0.1)
        res["vae"] += run_vae(model, info, test, valid, mask_bytes, clip=(0.0, 2.0 * float(np.nanmax(train))))
    return res


# ---------------------------------------------------------------------------- tiled full grid
def tiled_full_grid_child(tile: int, overlap: int) -> None:
    """Encode + decode one 4384 x 6880 x 3 field; print JSON with seconds and peak RSS."""
    torch.set_num_threads(2)
    shape = (4384, 6880)
    source = "kmscale.data.demo"
    try:
        from kmscale.data.demo import DemoRegion, demo_targets

        ds = demo_targets(DemoRegion.full(), ["2020-07-01T00:00"])
        field = np.stack([np.asarray(ds[v].isel(time=0).values, np.float32) for v in ("t2m", "u10", "v10")])
    except ImportError:
        source = "synthetic (kmscale.data.demo not available)"
        rng = np.random.default_rng(0)
        yy, xx = np.meshgrid(np.linspace(0, 40, shape[0], dtype=np.float32),
                             np.linspace(0, 60, shape[1], dtype=np.float32), indexing="ij")
        field = np.stack([285 + 5 * np.sin(yy) * np.cos(xx), 3 * np.cos(0.7 * yy), 3 * np.sin(0.5 * xx)])
        field += rng.standard_normal(field.shape, dtype=np.float32) * 0.3
    stats = {v: {"mean": float(field[i].mean()), "std": float(field[i].std())}
             for i, v in enumerate(("t2m", "u10", "v10"))}
    torch.manual_seed(0)
    model = VAEAutoencoder(variables=["t2m", "u10", "v10"], input_stats=stats,
                           block_out_channels=TILED_WIDTHS).eval()
    t0 = time.perf_counter()
    z = tiled_encode(model, field, tile=tile, overlap=overlap, batch_size=1)
    t1 = time.perf_counter()
    out = tiled_decode(model, z, shape=shape, tile=tile, overlap=overlap, batch_size=1)
    t2 = time.perf_counter()
    assert out.shape == (3, *shape) and torch.isfinite(out).all()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"seconds": t2 - t0, "encode_seconds": t1 - t0, "decode_seconds": t2 - t1,
                      "peak_rss_gib": rss, "tile": tile, "overlap": overlap, "threads": 2,
                      "model": f"vae 8x, 4 latent channels, block_out_channels {TILED_WIDTHS}",
                      "cpu_seconds": time.process_time(),
                      "field_source": source, "latent_shape": list(z.shape)}))


def tiled_full_grid(tile: int, overlap: int, repeats: int = 3) -> dict:
    """Median wall time and largest peak RSS over ``repeats`` fresh subprocesses."""
    cmd = [sys.executable, __file__, "--tiled-child", "--tile", str(tile), "--overlap", str(overlap)]
    runs = []
    for _ in range(repeats):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out = dict(runs[0])
    out.update(seconds=float(np.median([r["seconds"] for r in runs])),
               encode_seconds=float(np.median([r["encode_seconds"] for r in runs])),
               decode_seconds=float(np.median([r["decode_seconds"] for r in runs])),
               peak_rss_gib=max(r["peak_rss_gib"] for r in runs),
               runs=[{k: r[k] for k in ("seconds", "peak_rss_gib", "cpu_seconds")} for r in runs])
    return out


# ---------------------------------------------------------------------------- summary
def _interp(points: list[dict], x_key: str, y_key: str, x: float) -> float | None:
    """log-log interpolation of y at x along a method's curve (None outside its range)."""
    pts = sorted((p[x_key], p[y_key]) for p in points if p[x_key] > 0 and p[y_key] > 0)
    xs = np.log([p[0] for p in pts])
    if not len(xs) or not xs[0] <= np.log(x) <= xs[-1]:
        return None
    return float(np.exp(np.interp(np.log(x), xs, np.log([p[1] for p in pts]))))


def summarize(results: dict) -> str:
    """Markdown tables of every point and the issue's target checks."""
    lines = []
    for key, unit in (("era5_uk", "K"), ("radolan", "mm/h")):
        if key not in results:
            continue
        lines += [f"\n**{key}** (errors in {unit})\n",
                  "| method | setting | ratio | RMSE | MAE | max abs | bias | q0.1% err | q99.9% err | small-scale power |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for method, points in results[key].items():
            for p in sorted(points, key=lambda p: p["ratio"]):
                setting = {k: p[k] for k in ("config", "quant_step", "factor", "tolerance", "error_bound", "keepbits")
                           if k in p}
                lines.append(
                    f"| {method} | {', '.join(f'{k}={v}' for k, v in setting.items())} | {p['ratio']:.1f} | "
                    f"{p['rmse']:.3f} | {p['mae']:.3f} | {p['max_abs']:.2f} | {p['bias']:+.3f} | "
                    f"{p['q001_err']:+.2f} | {p['q999_err']:+.2f} | {p['small_scale_power_ratio']:.2f} |")
        vae = [p for p in results[key].get("vae", []) if p.get("quant_step") is not None]
        lines += ["", "| VAE point | ratio | RMSE | resize RMSE at that ratio | SZ3 ratio at that RMSE | "
                      "SZ3-3D ratio at that RMSE | ZFP q99.9% err at that RMSE |", "|---|---|---|---|---|---|---|"]
        for p in sorted(vae, key=lambda p: p["ratio"]):
            r_resize = _interp(results[key]["resize"], "ratio", "rmse", p["ratio"])
            r_sz3 = _interp(results[key]["sz3"], "rmse", "ratio", p["rmse"])
            r_sz3d = _interp(results[key]["sz3_3d"], "rmse", "ratio", p["rmse"])
            zfp = sorted(results[key]["zfp"], key=lambda q: abs(np.log(q["rmse"] / p["rmse"])))
            fmt = lambda v: "n/a (outside curve)" if v is None else f"{v:.3g}"  # noqa: E731
            lines.append(f"| {p['config']} step {p['quant_step']} | {p['ratio']:.1f} | {p['rmse']:.3f} | "
                         f"{fmt(r_resize)} | {fmt(r_sz3)} | {fmt(r_sz3d)} | "
                         f"{zfp[0]['q999_err']:+.2f} (ZFP RMSE {zfp[0]['rmse']:.3f}) |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- seams
def tiling_agreement(budget_s: float, tile: int = 448, overlap: int = 320) -> dict:
    """Tiled vs untiled encode/decode of a trained VAE on 512 x 768 demo t2m fields.

    Trains an 8x, 4-channel VAE for ``budget_s`` CPU-seconds on 64-128 px patches of the
    demo t2m, then compares the reconstruction of held-out fields done in one pass with
    the one done in ``tile`` px tiles (``overlap`` px blended), relative to the
    reconstruction error itself. The VAE uses per-pixel normalization (``norm_type="pixel"``),
    and 3/8 of the overlap (120 px) covers its receptive radius (encoder 81 px, decoder
    112 px), so the two should agree to float rounding (kmscale.autoencoders.tiling).
    """
    from kmscale.data.demo import DemoRegion, demo_targets

    region = DemoRegion.small(512, 768)
    train = demo_targets(region, [f"2023-07-01T{h:02d}:00" for h in range(0, 24, 2)])["t2m"].values
    test = demo_targets(region, ["2023-07-02T06:00", "2023-07-02T18:00"])["t2m"].values
    stat = {"mean": float(train.mean()), "std": float(train.std()), "transform": "none"}
    model, info = train_vae("seams_8x_c4", (16, 32, 32, 32), 4, train.astype(np.float32), stat, "t2m",
                            budget_s, patches=((64, 64), (128, 128)), batch=8)
    x = test[:, None].astype(np.float32)
    z_full = tiled_encode(model, x, batch_size=1).numpy()
    z_tiled = tiled_encode(model, x, tile=tile, overlap=overlap, batch_size=1).numpy()
    y_full = tiled_decode(model, z_full, batch_size=1).numpy()
    y_tiled = tiled_decode(model, z_tiled, tile=tile, overlap=overlap, batch_size=1).numpy()
    rms = lambda a: float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))  # noqa: E731
    return {"tile": tile, "overlap": overlap, "field": [512, 768], "norm_type": model.config.norm_type, **info,
            "latent_diff_rel": rms(z_tiled - z_full) / rms(z_full),
            "tiled_vs_untiled_rmse_K": rms(y_tiled - y_full),
            "tiled_vs_untiled_max_K": float(np.abs(y_tiled - y_full).max()),
            "untiled_recon_rmse_K": rms(y_full - x), "tiled_recon_rmse_K": rms(y_tiled - x)}


# ---------------------------------------------------------------------------- figure
def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, (key, title, unit) in zip(axes, (("era5_uk", "ERA5 UK t2m, 21-24 Mar 2019", "K"),
                                             ("radolan", "RADOLAN RW, 18 Oct 2022 16-23 UTC", "mm/h")), strict=True):
        if key not in results:
            continue
        for method, points in results[key].items():
            if method == "vae":
                for cfg in sorted({p["config"] for p in points}):
                    pts = sorted((p for p in points if p["config"] == cfg), key=lambda p: p["ratio"])
                    ax.plot([p["ratio"] for p in pts], [p["rmse"] for p in pts], "o-", label=cfg)
            else:
                pts = sorted(points, key=lambda p: p["ratio"])
                ax.plot([p["ratio"] for p in pts], [p["rmse"] for p in pts], "s--", label=method, alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compression ratio (raw float32 / bytes on disk)")
        ax.set_ylabel(f"RMSE ({unit})")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["era5_uk", "radolan", "tiled", "seams"], action="append",
                   help="run only these parts (repeatable); results merge into the JSON")
    p.add_argument("--era5-seconds", type=float, default=240.0, help="training CPU-seconds per ERA5 VAE")
    p.add_argument("--radolan-seconds", type=float, default=240.0, help="training CPU-seconds per RADOLAN VAE")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="full-grid tiling runs (median time)")
    p.add_argument("--seams-seconds", type=float, default=120.0,
                   help="training CPU-seconds of the VAE used for the tiled-vs-untiled check")
    p.add_argument("--out", type=Path, default=RESULTS / "compression.json")
    p.add_argument("--summary", action="store_true", help="print markdown tables of --out and exit")
    p.add_argument("--baselines-only", action="store_true",
                   help="recompute the classical codecs only, keeping the VAE points already in --out")
    p.add_argument("--tiled-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiled_child:
        tiled_full_grid_child(args.tile, args.overlap)
        return 0
    if args.summary:
        print(summarize(json.loads(args.out.read_text())))
        return 0
    torch.set_num_threads(args.threads)
    parts = args.only or ["era5_uk", "radolan", "tiled", "seams"]
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.baselines_only:
        train, test = load_era5()
        results.setdefault("era5_uk", {}).update(era5_baselines(test))
        _, test = load_radolan()
        valid = np.isfinite(test)
        results.setdefault("radolan", {}).update(
            radolan_baselines(test, valid, len(zstd_bytes(np.packbits(valid)))))
        parts = [p for p in parts if p == "tiled" and args.only]
    if "era5_uk" in parts:
        print("ERA5 UK t2m", flush=True)
        results["era5_uk"] = era5_benchmark(args.era5_seconds)
        args.out.write_text(json.dumps(results, indent=1))  # keep partial results
    if "radolan" in parts:
        print("RADOLAN", flush=True)
        results["radolan"] = radolan_benchmark(args.radolan_seconds)
    if "seams" in parts:
        print("tiled vs untiled agreement of a trained VAE", flush=True)
        results.setdefault("tiled_full_grid", {})["agreement"] = tiling_agreement(args.seams_seconds)
        print(results["tiled_full_grid"]["agreement"], flush=True)
    if "tiled" in parts:
        print("tiled full grid", flush=True)
        agreement = results.get("tiled_full_grid", {}).get("agreement")
        results["tiled_full_grid"] = tiled_full_grid(args.tile, args.overlap, args.repeats)
        if agreement is not None:
            results["tiled_full_grid"]["agreement"] = agreement
        print(results["tiled_full_grid"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    plot(results, args.out.parent / "compression_rd.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
