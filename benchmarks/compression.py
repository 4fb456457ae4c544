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

CPU budget: each ERA5 VAE trains ``--era5-seconds`` (default 600 CPU-seconds, counted as
process CPU time so that a busy machine gives the same compute), each RADOLAN VAE
``--radolan-seconds`` (default 900), two stages (small patches, then whole ERA5 fields or
larger RADOLAN patches; see ``VAESpec``). Settings were chosen on a validation split
(``--validation``: train Mar 1-17, evaluate Mar 18-20). The tiled full-grid check
encodes + decodes one 4384 x 6880 x 3-variable field in a subprocess and reports wall
time and peak RSS.

Usage::

    taskset -c 1 python benchmarks/compression.py --threads 1 --only era5_uk   # ~25 min on one core
    python benchmarks/compression.py --only tiled     # just the full-grid tiling check
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from kmscale.autoencoders.losses import VAELoss
from kmscale.autoencoders.quantize import dequantize, quantize, zstd_bytes
from kmscale.autoencoders.tails import ANCHORS, TAIL_PROBS, correct_tails, tail_offsets
from kmscale.autoencoders.tiling import tiled_decode, tiled_encode
from kmscale.autoencoders.vae import VAEAutoencoder
from kmscale.data.patches import random_patch
from kmscale.data.readers import detect_engine
from kmscale.paths import data_file

RESULTS = Path(__file__).resolve().parent / "results"

# name -> VAESpec (defined below; filled in after the class).
ERA5_VAES: dict = {}
RADOLAN_VAES: dict = {}
TILED_WIDTHS = (16, 32, 64, 64)  # full-grid tiling check: 8x, 4 latent channels
QUANT_STEPS = (0.05, 0.1, 0.2, 0.4, 0.7, 1.0, 1.6)


# ---------------------------------------------------------------------------- data
def load_era5(train_end: str = "2019-03-20",
              eval_period: tuple[str, str] = ("2019-03-21", "2019-03-24")) -> tuple[np.ndarray, np.ndarray]:
    """Training (from Mar 1 to ``train_end``) and evaluation fields (T, 32, 48) in K; a
    shorter training period with ``eval_period`` Mar 18-20 is the validation split."""
    path = data_file("era5_uk_t2m_201903", "era5_uk_t2m_20190301-24.nc")
    ds = xr.open_dataset(path, engine=detect_engine(path))
    t2m = ds["t2m"].isel(latitude=slice(0, 32), longitude=slice(0, 48))
    train = t2m.sel(time=slice("2019-03-01", train_end)).values.astype(np.float32)
    test = t2m.sel(time=slice(*eval_period)).values.astype(np.float32)
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


def run_resize(x, valid, extra, factors=(2, 4, 8, 16, 32)) -> list[dict]:
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
@dataclass(frozen=True)
class VAESpec:
    """One benchmarked VAE and how it is trained (the defaults are the ERA5 settings)."""

    widths: tuple[int, ...]  # block_out_channels: len - 1 stride-2 downsamplings
    latent_ch: int
    patches: tuple[tuple[int, int], tuple[int, int]] = ((16, 16), (32, 48))  # stage 1 / stage 2
    batch: int = 16
    stage1_fraction: float = 0.5  # share of the budget on the small patches
    lr: float = 2e-3
    charbonnier_eps: float = 1e-3  # standardized units
    spectral_weight: float = 0.0
    # Quantization-aware training: each batch draws Delta log-uniformly in this range
    # (normalized latent units, the steps the archive uses); (0, 0) disables it.
    qat_steps: tuple[float, float] = (0.0, 0.0)
    qat_start: float = 0.0  # fraction of the budget after which QAT noise is on (learn to code first)
    wet_weight: float = 0.0  # precipitation: extra loss weight on wet pixels (1 + w)
    wet_patch_bias: bool = False  # precipitation: draw patches centred on rain
    anomaly: bool = False  # code per-pixel standardized anomalies (PixelAnomaly)
    norm_type: str = "pixel"  # VAEAutoencoder norm_type
    # Level-shift augmentation (standardized units): a random constant added to each
    # training field, so that the decoder also reproduces days warmer than any it saw
    # (the evaluation days reach the top of the training range).
    shift_augment: float = 0.0
    # Decoder phase (the autoencoder recipe's decoder stage): the last ``decoder_fraction``
    # of the budget trains the decoder alone on whole fields (encoder frozen, posterior
    # means, its own warm-up and cosine decay from ``decoder_lr``), adding the batch-mean
    # windowed spectrum term (``mean_log_power``) of weight ``decoder_spectral_weight``.
    decoder_fraction: float = 0.0
    decoder_lr: float = 5e-4
    decoder_spectral_weight: float = 0.3


# Small widths: one CPU core affords ~600 CPU-seconds per model. Settings chosen on the
# validation split (train Mar 1-17, evaluate Mar 18-20, 200 CPU-s pilots, BENCHMARKS.md):
# Charbonnier eps 1e-3 without QAT beat eps 0.05 with QAT over steps 0.1-1 (RMSE 0.25 vs
# 0.38 K), GroupNorm (0.42 K) and per-pixel standardized anomalies (0.36 K). The pilots
# missed the warm tail of the validation days (hotter than any training day): hence
# the level-shift augmentation.
ERA5_VAES.update({
    "vae_4x_c2": VAESpec((16, 32, 32), 2, shift_augment=0.25),
    "vae_8x_c4": VAESpec((16, 32, 32, 32), 4, shift_augment=0.25),
    # The same with the last quarter of the budget on the decoder stage.
    "vae_4x_c2_dec": VAESpec((16, 32, 32), 2, shift_augment=0.25, decoder_fraction=0.25),
    "vae_8x_c4_dec": VAESpec((16, 32, 32, 32), 4, shift_augment=0.25, decoder_fraction=0.25),
})
# RADOLAN: 4x down (rain cells are a few km across: 8x blurs them), rain-centred patches
# and extra weight on wet pixels, else 93 % dry pixels teach the decoder to output a blur.
RADOLAN_VAES.update({
    "vae_4x_c2": VAESpec((16, 32, 32), 2, patches=((64, 64), (128, 128)), batch=8, charbonnier_eps=1e-3,
                         qat_steps=(0.05, 0.4), wet_weight=4.0, wet_patch_bias=True),
})


def _wet_cells(field: np.ndarray, cell: int) -> np.ndarray:
    """Patch-sampling weights: wet-pixel count per cell x cell block, plus a floor so
    that dry areas are still seen (otherwise the decoder never learns what dry is)."""
    H, W = field.shape
    wet = np.nan_to_num(field) > 0.1
    Hp, Wp = -(-H // cell) * cell, -(-W // cell) * cell
    padded = np.zeros((Hp, Wp), bool)
    padded[:H, :W] = wet
    counts = padded.reshape(Hp // cell, cell, Wp // cell, cell).sum(axis=(1, 3)).astype(float)
    return counts + 0.05 * max(counts.mean(), 1.0)


def train_vae(name: str, spec: VAESpec, train: np.ndarray, stat: dict, variable: str, budget_s: float,
              seed: int = 0) -> tuple[VAEAutoencoder, dict]:
    """Two-stage training for ``budget_s`` CPU-seconds: ``spec.patches[0]`` for
    ``stage1_fraction`` of it, then ``spec.patches[1]``; learning rate warm-up then cosine
    decay over the budget (a fixed CPU budget, so the schedule runs on elapsed CPU time);
    with ``spec.decoder_fraction`` > 0 the end of the budget is the decoder phase (see
    :class:`VAESpec`)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = VAEAutoencoder(variables=[variable], input_stats={variable: stat},
                           block_out_channels=spec.widths, latent_channels=spec.latent_ch, norm_type=spec.norm_type)
    loss = VAELoss(charbonnier_eps=spec.charbonnier_eps, kl_weight=1e-6, kl_warmup_samples=2000,
                   spectral_weight=spec.spectral_weight)
    decoder_loss = VAELoss(charbonnier_eps=spec.charbonnier_eps, kl_weight=1e-6, kl_warmup_samples=2000,
                           spectral_weight=spec.decoder_spectral_weight, spectral_mode="mean_log_power",
                           spectral_floor=1e-6)
    decoder_start = 1.0 - spec.decoder_fraction
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr)
    model.train()
    H, W = train.shape[-2:]
    cells = 30
    weights = [_wet_cells(f, cells) for f in train] if spec.wet_patch_bias else None
    lo, hi = spec.qat_steps
    # The budget is process CPU time, so a busy shared machine gives the same compute, only later.
    t0, steps, seen, last = time.process_time(), 0, 0, float("nan")
    decoder_steps = 0
    while (elapsed := time.process_time() - t0) < budget_s:
        frac = elapsed / budget_s
        decoder_only = spec.decoder_fraction > 0 and frac >= decoder_start
        if decoder_only and decoder_steps == 0:
            model.train_decoder_only()
            opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=spec.decoder_lr)
        patch = spec.patches[0] if frac < spec.stage1_fraction and not decoder_only else spec.patches[1]
        if decoder_only:
            phase = (frac - decoder_start) / spec.decoder_fraction
            lr = spec.decoder_lr * min(1.0, (decoder_steps + 1) / 100) * 0.5 * (1 + np.cos(np.pi * phase))
            decoder_steps += 1
        else:
            lr = spec.lr * min(1.0, (steps + 1) / 100) * 0.5 * (1 + np.cos(np.pi * frac / decoder_start))
        for g in opt.param_groups:
            g["lr"] = lr
        xs = []
        for _ in range(spec.batch):
            t = rng.integers(len(train))
            if weights is not None:
                sy, sx = random_patch((H, W), patch, rng, weights=weights[t], cell=cells)
            else:
                sy, sx = random_patch((H, W), patch, rng)
            xs.append(train[t, sy, sx])
        x = torch.from_numpy(np.stack(xs))[:, None]
        mask = torch.isfinite(x)
        weight = 1.0 + spec.wet_weight * (torch.nan_to_num(x) > 0.1).float() if spec.wet_weight else None
        xn = model.normalize_input(x)
        if spec.shift_augment > 0:
            xn = xn + spec.shift_augment * torch.randn(len(xn), 1, 1, 1) * mask
        step = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > 0 and frac >= spec.qat_start else 0.0
        x_hat, post = model(xn, quant_step=step, sample_posterior=not decoder_only)
        parts = (decoder_loss if decoder_only else loss)(x_hat, xn, post, mask=mask, samples_seen=seen, weight=weight)
        total = parts["total"].mean()
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps, seen, last = steps + 1, seen + spec.batch, float(parts["recon"].detach().mean())
    model.eval()
    # Latent normalization from training latents (posterior means).
    sub = train[:: max(1, len(train) // (64 if train.shape[-1] < 256 else 4))]
    z = tiled_encode(model, sub[:, None], batch_size=16 if sub.shape[-1] < 256 else 1).numpy()
    model.set_latent_stats(z.mean(axis=(0, 2, 3)).tolist(), (z.std(axis=(0, 2, 3)) + 1e-6).tolist())
    model.requires_grad_(True)
    info = {"config": name, "train_cpu_seconds": budget_s, "train_steps": steps, "decoder_steps": decoder_steps,
            "train_samples": seen,
            "final_recon_loss": last, "decoder_bytes": model.decoder_nbytes(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "spec": {k: v for k, v in asdict(spec).items()}}
    print(f"  {name}: {steps} steps, {seen} samples, recon {last:.4f}", flush=True)
    return model, info


@dataclass(frozen=True)
class PixelAnomaly:
    """Per-pixel standardization a = (x - m(y, x)) / s(y, x) with the training period's
    mean and std at every grid point.

    A convolutional decoder is translation invariant: it cannot know where the coast or
    the hills are, so fixed geographic detail (land-sea contrast, orography) would have
    to be carried by every field's latents. Taken out here, the latents carry only the
    weather. The two float32 fields are part of the model, shipped once with the decoder
    (their bytes are counted with the decoder's, not per field).
    """

    mean: np.ndarray  # (H, W)
    std: np.ndarray  # (H, W)

    @classmethod
    def fit(cls, train: np.ndarray) -> PixelAnomaly:
        return cls(train.mean(0).astype(np.float32), (train.std(0) + 1e-3).astype(np.float32))

    def forward(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    def inverse(self, a: np.ndarray) -> np.ndarray:
        return (a * self.std + self.mean).astype(np.float32)

    @property
    def nbytes(self) -> int:
        return self.mean.nbytes + self.std.nbytes


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
        from kmscale.autoencoders.quantize import int_dtype_for
        streams = d.astype(int_dtype_for(d))
        assert np.array_equal(np.cumsum(streams.astype(np.int32), axis=-1), series)  # lossless
    return len(zstd_bytes(streams))


def run_vae(model, info, x, valid, extra, steps=QUANT_STEPS, clip=None, time_delta=True,
            anomaly: PixelAnomaly | None = None, tail_resolution: float | None = None,
            tail_knots: tuple[str, ...] = ("tails",)) -> list[dict]:
    """Points for float16 latents and each quantization step; ``clip`` bounds the
    reconstruction to a physical range (a log1p decoder can overflow expm1). With
    ``time_delta`` each quantized point is reported twice: latents coded field by field
    (``latent_coding="zstd"``) and with differences across time (``"zstd_tdelta"``).
    ``anomaly``: the model codes standardized anomalies (its static fields are stated
    with the decoder's bytes, in ``info``). ``tail_resolution``: each quantized point is
    also reported with per-field tail offsets (:mod:`kmscale.autoencoders.tails`, int8
    steps of this size, zstd-coded and counted) applied to the reconstruction
    (``latent_coding`` suffixed ``+<name>`` for each knot set of ``TAIL_KNOTS`` named in
    ``tail_knots``; ``tails`` is the library default)."""
    xin = x if anomaly is None else anomaly.forward(x)
    z = tiled_encode(model, xin[:, None], batch_size=16 if x.shape[-1] < 256 else 1).numpy()
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
            codings = {"float16": len(zstd_bytes(data))}
        else:
            data = quantize(z, step, channel_axis=1)
            zq = dequantize(data, step, channel_axis=1)
            codings = {"zstd": latent_bytes(data, False)}
            if time_delta:
                codings["zstd_tdelta"] = latent_bytes(data, True)
        recon = tiled_decode(model, zq, shape=x.shape[-2:], mask=mask, batch_size=16 if x.shape[-1] < 256 else 1)[:, 0].numpy()
        if anomaly is not None:
            recon = anomaly.inverse(recon)
        if clip is not None:
            recon = np.where(np.isnan(recon), recon, np.clip(np.nan_to_num(recon, posinf=clip[1]), *clip))
        variants = [("", recon, 0)]
        for name in tail_knots if tail_resolution is not None and step is not None else ():
            knots = dict(zip(("probs", "anchors"), TAIL_KNOTS[name], strict=True))
            offsets = tail_offsets(x, recon, resolution=tail_resolution, **knots)
            variants.append((f"+{name}", correct_tails(recon, offsets, resolution=tail_resolution, **knots),
                             len(zstd_bytes(offsets))))
        for suffix, rec, side in variants:
            m = None
            for coding, nbytes in codings.items():
                total = nbytes + side
                pt = point(x, rec, valid, total, extra, quant_step=step, latent_dtype=str(data.dtype),
                           latent_coding=coding + suffix, **info) if m is None else {
                    **m, "ratio": x.size * 4 / (total + extra), "bytes": int(total + extra),
                    "latent_coding": coding + suffix}
                if suffix:
                    pt.update(tail_bytes=side, tail_resolution=tail_resolution)
                m = pt
                out.append(pt)
    return out


ERA5_TAIL_RESOLUTION = 0.01  # K: int8 tail offsets up to 1.27 K
# Knot sets (stored probabilities, anchors) of the tail offsets; "tails" is the library's.
TAIL_KNOTS = {
    "tails": (TAIL_PROBS, ANCHORS),
    "tails4": ((0.0, 0.001, 0.01, 0.99, 0.999, 1.0), (0.1, 0.9)),
    "tails15": ((0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.997, 0.999, 1.0), (0.5,)),
    "tails12": ((0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.9, 0.97, 0.99, 0.997, 0.999, 1.0), (0.5,)),
}
ERA5_BOUNDS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
ERA5_ZFP = (0.1, 0.4, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4)  # ZFP's accuracy mode is conservative: RMSE << tolerance
RADOLAN_BOUNDS = (0.01, 0.03, 0.1, 0.3, 1.0, 2.0)
RADOLAN_ZFP = (0.03, 0.1, 0.3, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)


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


def era5_benchmark(budget_s: float, only_vaes: list[str] | None = None, train_end: str = "2019-03-20",
                   eval_period: tuple[str, str] = ("2019-03-21", "2019-03-24"),
                   tail_knots: tuple[str, ...] = ("tails",)) -> dict:
    train, test = load_era5(train_end, eval_period)
    stat = {"mean": float(train.mean()), "std": float(train.std()), "transform": "none"}
    res = {**era5_baselines(test), "vae": []}
    for name, spec in ERA5_VAES.items():
        if only_vaes and name not in only_vaes:
            continue
        anomaly = PixelAnomaly.fit(train) if spec.anomaly else None
        if anomaly is None:
            model, info = train_vae(name, spec, train, stat, "t2m", budget_s)
        else:
            model, info = train_vae(name, spec, anomaly.forward(train), {"mean": 0.0, "std": 1.0, "transform": "none"},
                                    "t2m", budget_s)
            info.update(static_bytes=anomaly.nbytes, preprocess="per-pixel training mean/std (PixelAnomaly)")
        res["vae"] += run_vae(model, info, test, None, 0, anomaly=anomaly, tail_resolution=ERA5_TAIL_RESOLUTION,
                              tail_knots=tail_knots)
    return res


def radolan_benchmark(budget_s: float, only_vaes: list[str] | None = None) -> dict:
    train, test = load_radolan()
    valid = np.isfinite(test)
    mask_bytes = len(zstd_bytes(np.packbits(valid)))  # per-hour NaN masks (the footprint varies)
    y = np.log1p(train[np.isfinite(train)])
    stat = {"mean": float(y.mean()), "std": float(y.std()), "transform": "log1p", "scale": 1.0}
    res = {**radolan_baselines(test, valid, mask_bytes), "vae": []}
    for name, spec in RADOLAN_VAES.items():
        if only_vaes and name not in only_vaes:
            continue
        model, info = train_vae(name, spec, train, stat, "tp", budget_s)
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


def _interp_abs(points: list[dict], x_key: str, y_key: str, x: float) -> float | None:
    """|y| interpolated linearly in log(x) along a curve (|y| can be 0: no log of y)."""
    pts = sorted((p[x_key], abs(p[y_key])) for p in points if p[x_key] > 0)
    xs = np.log([p[0] for p in pts])
    if not len(xs) or not xs[0] <= np.log(x) <= xs[-1]:
        return None
    return float(np.interp(np.log(x), xs, [p[1] for p in pts]))


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
                setting = {k: p[k] for k in ("config", "quant_step", "latent_coding", "factor", "tolerance",
                                             "error_bound", "keepbits") if k in p}
                lines.append(
                    f"| {method} | {', '.join(f'{k}={v}' for k, v in setting.items())} | {p['ratio']:.1f} | "
                    f"{p['rmse']:.3f} | {p['mae']:.3f} | {p['max_abs']:.2f} | {p['bias']:+.3f} | "
                    f"{p['q001_err']:+.2f} | {p['q999_err']:+.2f} | {p['small_scale_power_ratio']:.2f} |")
        vae = [p for p in results[key].get("vae", []) if p.get("quant_step") is not None]
        lines += ["", "| VAE point | ratio | RMSE | max abs | resize RMSE at that ratio (VAE / resize) | "
                      "SZ3 ratio at that RMSE | SZ3-3D ratio at that RMSE | q99.9% err: VAE vs ZFP at that RMSE |",
                  "|---|---|---|---|---|---|---|---|"]
        fmt = lambda v: "n/a (outside curve)" if v is None else f"{v:.3g}"  # noqa: E731
        for p in sorted(vae, key=lambda p: p["ratio"]):
            r_resize = _interp(results[key]["resize"], "ratio", "rmse", p["ratio"])
            r_sz3 = _interp(results[key]["sz3"], "rmse", "ratio", p["rmse"])
            r_sz3d = _interp(results[key]["sz3_3d"], "rmse", "ratio", p["rmse"])
            zfp_q = _interp_abs(results[key]["zfp"], "rmse", "q999_err", p["rmse"])
            coding = p.get("latent_coding", "zstd")
            vs = "" if r_resize is None else f" ({p['rmse'] / r_resize:.2f})"
            q_ok = "" if zfp_q is None else (" ok" if abs(p["q999_err"]) <= zfp_q + 5e-3 else " worse")
            lines.append(f"| {p['config']} step {p['quant_step']} {coding} | {p['ratio']:.1f} | {p['rmse']:.3f} | "
                         f"{p['max_abs']:.2f} | {fmt(r_resize)}{vs} | {fmt(r_sz3)} | {fmt(r_sz3d)} | "
                         f"{p['q999_err']:+.3f} vs {fmt(zfp_q)}{q_ok} |")
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
    model, info = train_vae("seams_8x_c4", VAESpec((16, 32, 32, 32), 4, patches=((64, 64), (128, 128)), batch=8,
                                                  lr=1e-3), train.astype(np.float32), stat, "t2m", budget_s)
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

    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    for ax, (key, title, unit) in zip(axes, (("era5_uk", "ERA5 UK t2m, 21-24 Mar 2019", "K"),
                                             ("radolan", "RADOLAN RW, 18 Oct 2022 16-23 UTC", "mm/h")), strict=True):
        if key not in results:
            continue
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # up to 20 curves, no colour repeated
        for method, points in results[key].items():
            if method == "vae":
                label = lambda p: f"{p['config']} ({p.get('latent_coding') or 'zstd'})"  # noqa: E731
                for cfg in sorted({label(p) for p in points if p.get("quant_step") is not None}):
                    pts = sorted((p for p in points if label(p) == cfg and p.get("quant_step") is not None),
                                 key=lambda p: p["ratio"])
                    ax.plot([p["ratio"] for p in pts], [p["rmse"] for p in pts],
                            "o-" if "tdelta" not in cfg else "o:", label=cfg)
            else:
                pts = sorted(points, key=lambda p: p["ratio"])
                ax.plot([p["ratio"] for p in pts], [p["rmse"] for p in pts], "s--", label=method, alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("compression ratio (raw float32 / bytes on disk)")
        ax.set_ylabel(f"RMSE ({unit})")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["era5_uk", "radolan", "tiled", "seams"], action="append",
                   help="run only these parts (repeatable); results merge into the JSON")
    p.add_argument("--era5-seconds", type=float, default=600.0, help="training CPU-seconds per ERA5 VAE")
    p.add_argument("--radolan-seconds", type=float, default=900.0, help="training CPU-seconds per RADOLAN VAE")
    p.add_argument("--vae", action="append", help="train/evaluate only these VAE configs (repeatable); "
                   "the other configs' points already in --out are kept")
    p.add_argument("--validation", action="store_true",
                   help="ERA5 only: train on Mar 1-17 and evaluate on Mar 18-20 (for choosing settings; "
                        "use another --out)")
    p.add_argument("--tail-knots", default="tails", help=f"ERA5: comma-separated tail-offset knot sets to "
                   f"report ({', '.join(TAIL_KNOTS)}; 'tails' is the library default)")
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
    def merge(key: str, new: dict) -> None:
        if args.vae:  # keep the points of the VAE configs not re-run
            kept = [q for q in results.get(key, {}).get("vae", []) if q["config"] not in args.vae]
            new["vae"] = kept + new["vae"]
        results[key] = new
        args.out.write_text(json.dumps(results, indent=1))  # keep partial results

    if "era5_uk" in parts:
        print("ERA5 UK t2m", flush=True)
        split = dict(train_end="2019-03-17", eval_period=("2019-03-18", "2019-03-20")) if args.validation else {}
        merge("era5_uk", era5_benchmark(args.era5_seconds, args.vae, tail_knots=tuple(args.tail_knots.split(",")),
                                        **split))
    if "radolan" in parts:
        print("RADOLAN", flush=True)
        merge("radolan", radolan_benchmark(args.radolan_seconds, args.vae))
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
