"""Compression benchmark: learned VAE latents against classical codecs.

Settings: ``recipes/configs/benchmarks/compression.yaml`` (splits, sweeps, candidates)
and one autoencoder recipe config per candidate VAE (``compression_<data>_vae_*.yaml``),
trained by the autoencoder recipe's own loop (:func:`kmscale.autoencoders.train.train_autoencoder`).

Splits. ERA5 UK t2m (cropped to 32 x 48): VAEs train on 2019-03-01..17; every choice
(which VAE config, which tail-offset knots) is made on 18..20; the test days 21..24 are
scored once, with the chosen settings only. RADOLAN RW (900 x 900, one day): the same
by hour (00-11 train, 12-15 validation, 16-23 test; the hours are strongly correlated).
The JSON names the split of every figure (``validation`` / ``test`` sections).

Choice on the validation split: the VAE config whose points have the lowest mean
log(RMSE / resize RMSE at the same ratio); then, for that model, the tail knot set with
the most points whose 99.9 % quantile error is within ZFP's at equal RMSE (+ 0.005 K),
ties to the fewer tail bytes.

Methods, each swept over its rate parameter:
  vae       kmscale VAE (AutoencoderKL); latents quantized per channel (step in normalized
            units) + zstd-19, optionally with per-field tail offsets; decoder size stated
  resize    block mean by k, stored float32, bilinear upsampling
  zfp       ZFP fixed-accuracy mode on the whole (time, y, x) block (imagecodecs)
  sz3       SZ3 absolute error bound, each 2-D field separately (as the VAE sees them)
  sz3_3d    SZ3 absolute error bound on the whole (time, y, x) block
  bitround  mantissa bit-rounding (numcodecs BitRound) + zstd-19 on the block

Bytes are what would sit on disk for the evaluated block; for RADOLAN every method also
pays for the NaN mask (zstd of the packed bits). Ratio = raw float32 bytes / bytes.
Metrics on valid points: RMSE, MAE, max |error|, bias, error of the 0.1 % and 99.9 %
quantiles, and the ratio of zonal power in the smallest quarter of scales.

Usage::

    python benchmarks/compression.py --only era5_uk                  # every ERA5 candidate
    python benchmarks/compression.py --only era5_uk --vae vae_4x_c2 --budget-scale 0.25  # bounded
    python benchmarks/compression.py --only tiled                    # full-grid tiling speed
    python benchmarks/compression.py --summary                       # tables of the JSON
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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from kmscale.autoencoders.quantize import dequantize, int_dtype_for, quantize, zstd_bytes
from kmscale.autoencoders.tails import correct_tails, tail_offsets
from kmscale.autoencoders.tiling import tiled_decode, tiled_encode
from kmscale.autoencoders.train import AutoencoderConfig, train_autoencoder
from kmscale.autoencoders.vae import VAEAutoencoder
from kmscale.config import load_config, to_dict
from kmscale.data.readers import detect_engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # kmscale_testdata.py, the shared real data, sits at the root
from kmscale_testdata import data_file  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "recipes" / "configs" / "benchmarks" / "compression.yaml"
Q999_TOLERANCE = (
    0.005  # a VAE point's |q99.9 % error| may exceed ZFP's by this much (units of the data)
)


# ---------------------------------------------------------------------------- settings
@dataclass
class DatasetSettings:
    """One dataset's splits, candidate VAEs and codec sweeps (``compression.yaml``)."""

    train: list[str] = field(default_factory=list)  # [first, last] valid time, inclusive
    validation: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    vaes: dict[str, str] = field(default_factory=dict)  # name -> autoencoder recipe config
    quant_steps: list[float] = field(default_factory=list)
    tail_resolution: float | None = None  # None: no tail offsets
    tail_knots: dict[str, list] = field(
        default_factory=dict
    )  # name -> [probs, anchors] ([]: default)
    resize_factors: list[int] = field(default_factory=list)
    sz3_bounds: list[float] = field(default_factory=list)
    zfp_tolerances: list[float] = field(default_factory=list)
    bitround_keepbits: list[int] = field(default_factory=list)

    def knots(self) -> dict[str, dict]:
        """Tail knot sets as keyword arguments of :func:`tail_offsets` (empty: the default)."""
        return {
            name: dict(zip(("probs", "anchors"), map(tuple, k), strict=True)) if k else {}
            for name, k in self.tail_knots.items()
        }


@dataclass
class TiledSettings:
    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 64])
    tile: int = 1024
    overlap: int = 320
    repeats: int = 3
    threads: int = 2


@dataclass
class SeamsSettings:
    vae: str = ""  # autoencoder recipe config
    tile: int = 448
    overlap: int = 320


@dataclass
class CompressionConfig:
    era5_uk: DatasetSettings = field(default_factory=DatasetSettings)
    radolan: DatasetSettings = field(default_factory=DatasetSettings)
    tiled: TiledSettings = field(default_factory=TiledSettings)
    seams: SeamsSettings = field(default_factory=SeamsSettings)


# ---------------------------------------------------------------------------- data
def load_era5() -> xr.Dataset:
    """ERA5 UK t2m (time, lat, lon) in K, cropped to 32 x 48."""
    path = data_file("era5_uk_t2m_201903", "era5_uk_t2m_20190301-24.nc")
    ds = xr.open_dataset(path, engine=detect_engine(path))
    t2m = ds["t2m"].isel(latitude=slice(0, 32), longitude=slice(0, 48)).astype(np.float32)
    return t2m.rename(latitude="lat", longitude="lon").to_dataset(name="t2m").load()


def load_radolan() -> xr.Dataset:
    """RADOLAN RW precipitation as ``tp`` (time, y, x) in mm/h, NaN outside the composite."""
    path = data_file("radolan_rw_20221018", "radolan_RW_20221018_hourly_1km.nc")
    ds = xr.open_dataset(path, engine=detect_engine(path))
    return ds[["precipitation"]].rename(precipitation="tp").astype(np.float32).load()


def period(ds: xr.Dataset, bounds: list[str]) -> np.ndarray:
    """The single variable of ``ds`` over [first, last] (inclusive), as (T, H, W) float32."""
    (name,) = ds.data_vars
    return np.asarray(ds[name].sel(time=slice(*bounds)).values, np.float32)


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
    err = r.astype(np.float64) - t
    q = np.quantile(t, [0.001, 0.999]), np.quantile(r, [0.001, 0.999])
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "max_abs": float(np.max(np.abs(err))),
        "bias": float(np.mean(err)),
        "q001_err": float(q[1][0] - q[0][0]),
        "q999_err": float(q[1][1] - q[0][1]),
        "small_scale_power_ratio": small_scale_power_ratio(
            np.where(np.isfinite(truth), truth, 0), np.where(np.isfinite(truth), recon, 0)
        ),
    }


def point(truth, recon, valid, nbytes, extra_bytes, **setting) -> dict:
    raw = truth.size * 4
    total = nbytes + extra_bytes
    return {"ratio": raw / total, "bytes": int(total), **metrics(truth, recon, valid), **setting}


# ---------------------------------------------------------------------------- classical codecs
def _block_interp_matrix(n: int, k: int) -> np.ndarray:
    """(n, ceil(n / k)) linear interpolation from block means back to n pixels.

    Each block mean sits at the centroid of the pixels its block covers inside the field
    (a partial last block has its centroid off-centre); values beyond the first/last
    centroid are held constant. For full blocks this is exactly torch's bilinear
    upsampling with ``align_corners=False``.
    """
    centres = np.array([np.arange(i, min(i + k, n)).mean() for i in range(0, n, k)])
    eye = np.eye(len(centres))
    return np.stack([np.interp(np.arange(n), centres, eye[j]) for j in range(len(centres))], axis=1)


def run_resize(x, valid, extra, factors) -> list[dict]:
    import warnings

    out = []
    T, H, W = x.shape
    for k in factors:
        Hp, Wp = -(-H // k) * k, -(-W // k) * k
        xp = np.full((T, Hp, Wp), np.nan, np.float32)
        xp[:, :H, :W] = x
        blocks = xp.reshape(T, Hp // k, k, Wp // k, k)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks (outside a composite)
            coarse = np.nanmean(blocks, axis=(2, 4))
        coarse = np.nan_to_num(coarse, nan=0.0).astype(np.float32)
        ay, ax = _block_interp_matrix(H, k), _block_interp_matrix(W, k)
        up = np.einsum("yi,tij,xj->tyx", ay, coarse.astype(np.float64), ax).astype(np.float32)
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
            encs = [
                imagecodecs.sz3_encode(np.ascontiguousarray(f), mode="abs", abs=eb) for f in filled
            ]
            dec = np.stack(
                [
                    imagecodecs.sz3_decode(e, f.shape, f.dtype)
                    for e, f in zip(encs, filled, strict=True)
                ]
            )
            nbytes = sum(len(e) for e in encs)
        else:
            enc = imagecodecs.sz3_encode(filled, mode="abs", abs=eb)
            dec = imagecodecs.sz3_decode(enc, filled.shape, filled.dtype)
            nbytes = len(enc)
        out.append(point(x, dec, valid, nbytes, extra, error_bound=eb))
    return out


def run_bitround(x, valid, extra, keepbits) -> list[dict]:
    from numcodecs import BitRound

    filled = np.ascontiguousarray(np.nan_to_num(x, nan=0.0))
    out = []
    for k in keepbits:
        rounded = np.frombuffer(BitRound(keepbits=k).encode(filled), dtype=np.float32).reshape(
            x.shape
        )
        out.append(point(x, rounded, valid, len(zstd_bytes(rounded)), extra, keepbits=k))
    return out


# ---------------------------------------------------------------------------- VAE
def vae_config(
    path: str,
    name: str,
    data: DatasetSettings,
    work_dir: Path,
    overrides: list[str],
    budget_scale: float = 1.0,
) -> AutoencoderConfig:
    """A candidate's autoencoder recipe config with the benchmark's train/validation split
    and its own run directory (``overrides``: dotted settings); ``budget_scale`` scales the
    samples of every stage (a bounded run)."""
    split = [
        f"data.train_period={data.train}",
        f"data.val_period={data.validation}",
        f"out_dir={work_dir / name}",
    ]
    cfg = load_config(AutoencoderConfig, ROOT / path, [*split, *overrides])
    for stage in (cfg.stage1, cfg.stage2, cfg.decoder):
        stage.total_samples = int(round(stage.total_samples * budget_scale))
    return cfg


def train_candidate(
    cfg: AutoencoderConfig, targets: xr.Dataset, name: str
) -> tuple[VAEAutoencoder, dict]:
    """Train (or reuse, if ``cfg.out_dir`` holds a finished run) one candidate VAE."""
    t0 = time.process_time()
    model = train_autoencoder(cfg, targets=targets).eval()
    stages = {s: getattr(cfg, s).total_samples for s in ("stage1", "stage2", "decoder")}
    info = {
        "config": name,
        "train_samples": stages,
        "train_cpu_seconds": round(time.process_time() - t0, 1),
        "decoder_bytes": model.decoder_nbytes(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    print(f"  {name}: {stages}, {info['train_cpu_seconds']} CPU-s", flush=True)
    return model, info


def baselines(x: np.ndarray, valid: np.ndarray | None, extra: int, s: DatasetSettings) -> dict:
    """Every classical codec's sweep on the block ``x`` (T, H, W)."""
    return {
        "resize": run_resize(x, valid, extra, s.resize_factors),
        "zfp": run_zfp(x, valid, extra, s.zfp_tolerances),
        "sz3": run_sz3(x, valid, extra, s.sz3_bounds, per_field=True),
        "sz3_3d": run_sz3(x, valid, extra, s.sz3_bounds, per_field=False),
        "bitround": run_bitround(x, valid, extra, s.bitround_keepbits),
    }


def evaluate_block(models: dict, x: np.ndarray, s: DatasetSettings, knots: dict, clip=None) -> dict:
    """Baselines and the points of every VAE in ``models`` (name -> (model, info)) on one
    block; RADOLAN-style NaN masks are paid for by every method."""
    valid = np.isfinite(x) if np.isnan(x).any() else None
    extra = 0 if valid is None else len(zstd_bytes(np.packbits(valid)))
    out = {**baselines(x, valid, extra, s), "vae": []}
    for model, info in models.values():
        out["vae"] += run_vae(
            model,
            info,
            x,
            valid,
            extra,
            s.quant_steps,
            clip=clip,
            tail_resolution=s.tail_resolution,
            tail_knots=knots,
        )
    return out


# ---------------------------------------------------------------------------- choice
def resize_score(block: dict, config: str) -> float:
    """Mean log(RMSE / resize RMSE at the same ratio) of a config's quantized points
    (field-by-field coding, no tails) inside resize's range; lower is better."""
    pts = [p for p in block["vae"] if p["config"] == config and p.get("latent_coding") == "zstd"]
    logs = [
        np.log(p["rmse"] / r)
        for p in pts
        if (r := _interp(block["resize"], "ratio", "rmse", p["ratio"])) is not None
    ]
    return float(np.mean(logs)) if logs else float("inf")


def q999_met(block: dict, p: dict, tolerance: float = Q999_TOLERANCE) -> bool | None:
    """Whether ``p``'s 99.9 % quantile error is within ZFP's at equal RMSE (None: outside
    ZFP's curve)."""
    zfp = _interp_abs(block["zfp"], "rmse", "q999_err", p["rmse"])
    return None if zfp is None else abs(p["q999_err"]) <= zfp + tolerance


def choose(block: dict, knots: dict) -> dict:
    """The validation choice (module docstring): config, then tail knot set."""
    configs = sorted({p["config"] for p in block["vae"]})
    scores = {c: resize_score(block, c) for c in configs}
    config = min(configs, key=scores.get)
    knot_scores = {}
    for name in knots:
        pts = [
            p
            for p in block["vae"]
            if p["config"] == config and p["latent_coding"] == f"zstd+{name}"
        ]
        knot_scores[name] = {
            "q999_met": sum(bool(q999_met(block, p)) for p in pts),
            "points": len(pts),
            "tail_bytes": sum(p["tail_bytes"] for p in pts),
        }
    chosen = max(
        knot_scores,
        key=lambda k: (knot_scores[k]["q999_met"], -knot_scores[k]["tail_bytes"]),
        default=None,
    )
    return {
        "config": config,
        "tail_knots": chosen,
        "config_scores": scores,
        "tail_knot_scores": knot_scores,
    }


def dataset_benchmark(key: str, ds: xr.Dataset, s: DatasetSettings, args) -> dict:
    """Train the candidates on ``s.train``, choose on ``s.validation``, score ``s.test`` once."""
    names = [n for n in s.vaes if not args.vae or n in args.vae]
    val = period(ds, s.validation)
    clip = (0.0, 2.0 * float(np.nanmax(period(ds, s.train)))) if key == "radolan" else None
    models = {}
    for name in names:
        cfg = vae_config(
            s.vaes[name], name, s, args.work_dir / key, args.vae_override, args.budget_scale
        )
        models[name] = train_candidate(cfg, ds.sel(time=slice(s.train[0], s.validation[1])), name)
    knots = s.knots()
    validation = evaluate_block(models, val, s, knots, clip)
    choice = choose(validation, knots)
    chosen_knots = {k: v for k, v in knots.items() if k == choice["tail_knots"]}
    test = evaluate_block(
        {choice["config"]: models[choice["config"]]}, period(ds, s.test), s, chosen_knots, clip
    )
    return {
        "splits": {"train": s.train, "validation": s.validation, "test": s.test},
        "candidates": names,
        "choice": choice,
        "validation": validation,
        "test": test,
    }


def latent_bytes(q: np.ndarray, time_delta: bool) -> int:
    """Bytes on disk of quantized latents q (T, C, h, w): zstd-19 of per-channel streams.

    ``time_delta``: each latent pixel's series is stored as its first value and then
    differences between consecutive hours (lossless: a cumulative sum restores it),
    laid out (C, h, w, T) so zstd sees the small, repetitive differences in a row. This
    uses the time axis, which the per-field codecs (and the VAE itself) do not.
    """
    streams = np.ascontiguousarray(np.moveaxis(q, 1, 0))  # (C, T, h, w)
    if time_delta:
        series = np.ascontiguousarray(np.moveaxis(streams, 1, -1)).astype(np.int32)  # (C, h, w, T)
        d = np.diff(series, axis=-1, prepend=0)
        streams = d.astype(int_dtype_for(d))
        assert np.array_equal(np.cumsum(streams.astype(np.int32), axis=-1), series)  # lossless
    return len(zstd_bytes(streams))


def latent_codings(z: np.ndarray, step: float | None, time_delta: bool):
    """(stored latents, what the decoder sees, {coding: bytes}) for float16 latents
    (``step`` None; None if they overflow) or latents quantized with ``step``."""
    if step is None:
        data = z.astype(np.float16)
        if not np.all(np.isfinite(data)):
            return None
        return data, data.astype(np.float32), {"float16": len(zstd_bytes(data))}
    data = quantize(z, step, channel_axis=1)
    codings = {"zstd": latent_bytes(data, False)}
    if time_delta:
        codings["zstd_tdelta"] = latent_bytes(data, True)
    return data, dequantize(data, step, channel_axis=1), codings


def tail_variants(
    x, recon, resolution: float | None, knots: dict
) -> list[tuple[str, np.ndarray, int]]:
    """(coding suffix, reconstruction, side bytes): as decoded, then with the tail offsets of
    each knot set (:mod:`kmscale.autoencoders.tails`) applied."""
    out = [("", recon, 0)]
    for name, k in knots.items() if resolution is not None else ():
        offsets = tail_offsets(x, recon, resolution=resolution, **k)
        out.append(
            (
                f"+{name}",
                correct_tails(recon, offsets, resolution=resolution, **k),
                len(zstd_bytes(offsets)),
            )
        )
    return out


def run_vae(
    model,
    info,
    x,
    valid,
    extra,
    steps,
    clip=None,
    time_delta=True,
    tail_resolution: float | None = None,
    tail_knots: dict | None = None,
) -> list[dict]:
    """Points for float16 latents and each quantization step; ``clip`` bounds the
    reconstruction to a physical range (a log1p decoder can overflow expm1). With
    ``time_delta`` each quantized point is reported twice: latents coded field by field
    (``latent_coding="zstd"``) and with differences across time (``"zstd_tdelta"``).
    ``tail_resolution``: each quantized point is also reported with per-field tail offsets
    (int8 steps of this size, zstd-coded and counted) applied to the reconstruction, once
    per knot set of ``tail_knots`` (name -> keyword arguments ``probs``/``anchors``, empty
    for the library default), ``latent_coding`` suffixed ``+<name>``."""
    batch = 16 if x.shape[-1] < 256 else 1
    z = tiled_encode(model, x[:, None], batch_size=batch).numpy()
    mask = (
        None if valid is None else valid[:, None]
    )  # the composite's footprint changes by the hour
    out = []
    for step in [None, *steps]:
        coded = latent_codings(z, step, time_delta)
        if coded is None:
            print(
                f"  {info['config']}: float16 latents overflow; float16 point skipped", flush=True
            )
            continue
        data, zq, codings = coded
        recon = tiled_decode(model, zq, shape=x.shape[-2:], mask=mask, batch_size=batch)[
            :, 0
        ].numpy()
        if clip is not None:
            recon = np.where(
                np.isnan(recon), recon, np.clip(np.nan_to_num(recon, posinf=clip[1]), *clip)
            )
        knots = (tail_knots or {}) if step is not None else {}
        for suffix, rec, side in tail_variants(x, recon, tail_resolution, knots):
            scores = metrics(x, rec, valid)  # the same reconstruction for every coding
            for coding, nbytes in codings.items():
                total = nbytes + side + extra
                pt = {
                    "ratio": x.size * 4 / total,
                    "bytes": int(total),
                    **scores,
                    "quant_step": step,
                    "latent_dtype": str(data.dtype),
                    "latent_coding": coding + suffix,
                    **info,
                }
                if suffix:
                    pt.update(tail_bytes=side, tail_resolution=tail_resolution)
                out.append(pt)
    return out


# ---------------------------------------------------------------------------- tiled full grid
def tiled_full_grid_child(tile: int, overlap: int, widths: tuple[int, ...], threads: int) -> None:
    """Encode + decode one 4384 x 6880 x 3 field; print JSON with seconds and peak RSS."""
    torch.set_num_threads(threads)
    shape = (4384, 6880)
    source = "kmscale.data.demo"
    try:
        from kmscale.data.demo import DemoRegion, demo_targets

        ds = demo_targets(DemoRegion.full(), ["2020-07-01T00:00"])
        field = np.stack(
            [np.asarray(ds[v].isel(time=0).values, np.float32) for v in ("t2m", "u10", "v10")]
        )
    except ImportError:
        source = "synthetic (kmscale.data.demo not available)"
        rng = np.random.default_rng(0)
        yy, xx = np.meshgrid(
            np.linspace(0, 40, shape[0], dtype=np.float32),
            np.linspace(0, 60, shape[1], dtype=np.float32),
            indexing="ij",
        )
        field = np.stack(
            [285 + 5 * np.sin(yy) * np.cos(xx), 3 * np.cos(0.7 * yy), 3 * np.sin(0.5 * xx)]
        )
        field += rng.standard_normal(field.shape, dtype=np.float32) * 0.3
    stats = {
        v: {"mean": float(field[i].mean()), "std": float(field[i].std())}
        for i, v in enumerate(("t2m", "u10", "v10"))
    }
    torch.manual_seed(0)
    model = VAEAutoencoder(
        variables=["t2m", "u10", "v10"], input_stats=stats, block_out_channels=widths
    ).eval()
    t0 = time.perf_counter()
    z = tiled_encode(model, field, tile=tile, overlap=overlap, batch_size=1)
    t1 = time.perf_counter()
    out = tiled_decode(model, z, shape=shape, tile=tile, overlap=overlap, batch_size=1)
    t2 = time.perf_counter()
    assert out.shape == (3, *shape) and torch.isfinite(out).all()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(
        json.dumps(
            {
                "seconds": t2 - t0,
                "encode_seconds": t1 - t0,
                "decode_seconds": t2 - t1,
                "peak_rss_gib": rss,
                "tile": tile,
                "overlap": overlap,
                "threads": threads,
                "model": f"vae, block_out_channels {list(widths)}",
                "cpu_seconds": time.process_time(),
                "field_source": source,
                "latent_shape": list(z.shape),
            }
        )
    )


def tiled_full_grid(s: TiledSettings, config: Path) -> dict:
    """Median wall time and largest peak RSS over ``s.repeats`` fresh subprocesses."""
    cmd = [sys.executable, __file__, "--tiled-child", "--config", str(config)]
    runs = []
    for _ in range(s.repeats):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out = dict(runs[0])
    out.update(
        seconds=float(np.median([r["seconds"] for r in runs])),
        encode_seconds=float(np.median([r["encode_seconds"] for r in runs])),
        decode_seconds=float(np.median([r["decode_seconds"] for r in runs])),
        peak_rss_gib=max(r["peak_rss_gib"] for r in runs),
        runs=[{k: r[k] for k in ("seconds", "peak_rss_gib", "cpu_seconds")} for r in runs],
    )
    return out


def _interp(points: list[dict], x_key: str, y_key: str, x: float) -> float | None:
    """log-log interpolation of y at x along a method's curve (None outside its range)."""
    pts = sorted((p[x_key], p[y_key]) for p in points if p[x_key] > 0 and p[y_key] > 0)
    xs = np.log([p[0] for p in pts])
    if not len(xs) or not xs[0] <= np.log(x) <= xs[-1]:
        return None
    return float(np.exp(np.interp(np.log(x), xs, np.log([p[1] for p in pts]))))


def _interp_abs(points: list[dict], x_key: str, y_key: str, x: float) -> float | None:
    """|y| interpolated linearly in log(x) along a curve (|y| can be 0: no log of y)."""
    pts = sorted((p[x_key], abs(p[y_key])) for p in points if p[x_key] > 0)
    xs = np.log([p[0] for p in pts])
    if not len(xs) or not xs[0] <= np.log(x) <= xs[-1]:
        return None
    return float(np.interp(np.log(x), xs, [p[1] for p in pts]))


# ---------------------------------------------------------------------------- seams
def tiling_agreement(s: SeamsSettings, work_dir: Path, overrides: list[str]) -> dict:
    """Tiled vs untiled encode/decode of a trained VAE on 512 x 768 demo t2m fields.

    The VAE (``s.vae``, per-pixel normalization) trains briefly on 12 demo hours; two
    held-out fields are reconstructed in one pass and in ``s.tile`` px tiles (``s.overlap``
    px blended). 3/8 of the overlap covers the receptive radius, so the two should agree
    to float rounding (:mod:`kmscale.autoencoders.tiling`).
    """
    from kmscale.data.demo import DemoRegion, demo_targets

    region = DemoRegion.small(512, 768)
    train = demo_targets(region, [f"2023-07-01T{h:02d}:00" for h in range(0, 24, 2)])[["t2m"]]
    test = demo_targets(region, ["2023-07-02T06:00", "2023-07-02T18:00"])["t2m"].values
    cfg = load_config(
        AutoencoderConfig, ROOT / s.vae, [f"out_dir={work_dir / 'seams'}", *overrides]
    )
    model, info = train_candidate(cfg, train.load(), "seams")
    x = test[:, None].astype(np.float32)
    z_full = tiled_encode(model, x, batch_size=1).numpy()
    z_tiled = tiled_encode(model, x, tile=s.tile, overlap=s.overlap, batch_size=1).numpy()
    y_full = tiled_decode(model, z_full, batch_size=1).numpy()
    y_tiled = tiled_decode(model, z_tiled, tile=s.tile, overlap=s.overlap, batch_size=1).numpy()
    rms = lambda a: float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))  # noqa: E731
    return {
        "tile": s.tile,
        "overlap": s.overlap,
        "field": [512, 768],
        **info,
        "latent_diff_rel": rms(z_tiled - z_full) / rms(z_full),
        "tiled_vs_untiled_rmse_K": rms(y_tiled - y_full),
        "tiled_vs_untiled_max_K": float(np.abs(y_tiled - y_full).max()),
        "untiled_recon_rmse_K": rms(y_full - x),
        "tiled_recon_rmse_K": rms(y_tiled - x),
    }


# ---------------------------------------------------------------------------- summary
def _table(block: dict) -> list[str]:
    lines = [
        "| method | setting | ratio | RMSE | MAE | max abs | bias | q0.1% err | q99.9% err "
        "| small-scale power |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, points in block.items():
        for p in sorted(points, key=lambda p: p["ratio"]):
            setting = {
                k: p[k]
                for k in (
                    "config",
                    "quant_step",
                    "latent_coding",
                    "factor",
                    "tolerance",
                    "error_bound",
                    "keepbits",
                )
                if k in p
            }
            lines.append(
                f"| {method} | {', '.join(f'{k}={v}' for k, v in setting.items())} | "
                f"{p['ratio']:.1f} | "
                f"{p['rmse']:.3f} | {p['mae']:.3f} | {p['max_abs']:.2f} | {p['bias']:+.3f} | "
                f"{p['q001_err']:+.2f} | {p['q999_err']:+.2f} | "
                f"{p['small_scale_power_ratio']:.2f} |"
            )
    return lines


def _targets(block: dict) -> list[str]:
    """Each quantized VAE point against resize, SZ3 and ZFP at equal ratio / RMSE."""
    lines = [
        "| VAE point | ratio | RMSE | max abs | resize RMSE at that ratio (VAE / resize) | "
        "SZ3 ratio at that RMSE | SZ3-3D ratio at that RMSE "
        "| q99.9% err: VAE vs ZFP at that RMSE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "n/a (outside curve)" if v is None else f"{v:.3g}"  # noqa: E731
    for p in sorted(
        (p for p in block["vae"] if p.get("quant_step") is not None), key=lambda p: p["ratio"]
    ):
        r_resize = _interp(block["resize"], "ratio", "rmse", p["ratio"])
        vs = "" if r_resize is None else f" ({p['rmse'] / r_resize:.2f})"
        met = q999_met(block, p)
        verdict = "" if met is None else (" ok" if met else " worse")
        zfp_q = _interp_abs(block["zfp"], "rmse", "q999_err", p["rmse"])
        lines.append(
            f"| {p['config']} step {p['quant_step']} {p['latent_coding']} | {p['ratio']:.1f} | "
            f"{p['rmse']:.3f} | {p['max_abs']:.2f} | {fmt(r_resize)}{vs} | "
            f"{fmt(_interp(block['sz3'], 'rmse', 'ratio', p['rmse']))} | "
            f"{fmt(_interp(block['sz3_3d'], 'rmse', 'ratio', p['rmse']))} | "
            f"{p['q999_err']:+.3f} vs {fmt(zfp_q)}{verdict} |"
        )
    return lines


def summarize(results: dict, split: str = "test") -> str:
    """Markdown tables of every point of ``split`` and the target checks."""
    lines = []
    for key, unit in (("era5_uk", "K"), ("radolan", "mm/h")):
        if key not in results:
            continue
        r = results[key]
        lines += [
            f"\n**{key}**, {split} split {r['splits'][split]} (errors in {unit}); chosen on the "
            f"validation split: {r['choice']['config']}, tail knots {r['choice']['tail_knots']}\n"
        ]
        lines += _table(r[split]) + [""] + _targets(r[split])
    return "\n".join(lines)


def run_record(argv: list[str]) -> dict:
    """Command, machine, date and load of this run (stored beside its figures)."""
    return {
        "command": "python benchmarks/compression.py " + " ".join(argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


# ---------------------------------------------------------------------------- figure
def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    for ax, (key, title, unit) in zip(
        axes, (("era5_uk", "ERA5 UK t2m", "K"), ("radolan", "RADOLAN RW", "mm/h")), strict=True
    ):
        if key not in results:
            continue
        title = f"{title}, test split {' to '.join(results[key]['splits']['test'])}"
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # up to 20 curves, no colour repeated
        for method, points in results[key]["test"].items():
            if method == "vae":
                label = lambda p: f"{p['config']} ({p['latent_coding']})"  # noqa: E731
                for cfg in sorted({label(p) for p in points if p.get("quant_step") is not None}):
                    pts = sorted(
                        (p for p in points if label(p) == cfg and p.get("quant_step") is not None),
                        key=lambda p: p["ratio"],
                    )
                    ax.plot(
                        [p["ratio"] for p in pts],
                        [p["rmse"] for p in pts],
                        "o-" if "tdelta" not in cfg else "o:",
                        label=cfg,
                    )
            else:
                pts = sorted(points, key=lambda p: p["ratio"])
                ax.plot(
                    [p["ratio"] for p in pts],
                    [p["rmse"] for p in pts],
                    "s--",
                    label=method,
                    alpha=0.8,
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compression ratio (raw float32 / bytes on disk)")
        ax.set_ylabel(f"RMSE ({unit})")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", type=Path, default=CONFIG, help="benchmark settings (YAML)")
    p.add_argument(
        "--only",
        choices=["era5_uk", "radolan", "tiled", "seams"],
        action="append",
        help="run only these parts (repeatable); the other parts already in --out are kept",
    )
    p.add_argument(
        "--vae", action="append", help="train and evaluate only these candidate VAEs (repeatable)"
    )
    p.add_argument(
        "--vae-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override of every candidate's recipe config, e.g. stage1.total_samples=8000",
    )
    p.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="scale every stage's training samples (e.g. 0.25 for a bounded run)",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=ROOT / "runs" / "compression",
        help="training runs (a finished run is reused: delete it to retrain)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", type=Path, default=RESULTS / "compression.json")
    p.add_argument("--summary", action="store_true", help="print markdown tables of --out and exit")
    p.add_argument(
        "--split", choices=["validation", "test"], default="test", help="split --summary prints"
    )
    p.add_argument("--tiled-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    cfg = load_config(CompressionConfig, args.config)
    if args.tiled_child:
        t = cfg.tiled
        tiled_full_grid_child(t.tile, t.overlap, tuple(t.block_out_channels), t.threads)
        return 0
    if args.summary:
        print(summarize(json.loads(args.out.read_text()), args.split))
        return 0
    torch.set_num_threads(args.threads)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.setdefault("runs", {})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    loaders = {"era5_uk": load_era5, "radolan": load_radolan}
    for part in args.only or ["era5_uk", "radolan", "tiled", "seams"]:
        print(part, flush=True)
        if part in loaders:
            results[part] = dataset_benchmark(part, loaders[part](), getattr(cfg, part), args)
        elif part == "tiled":
            results[part] = tiled_full_grid(cfg.tiled, args.config)
        else:
            results[part] = tiling_agreement(cfg.seams, args.work_dir, args.vae_override)
        results["runs"][part] = run_record(argv) | {"settings": to_dict(getattr(cfg, part))}
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.rename(args.out)  # atomic: a stopped run leaves the previous JSON whole
    plot(results, args.out.parent / "compression_rd.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
