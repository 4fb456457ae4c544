"""Precipitation benchmark (issue 16): pseudo-precipitation encoders, x4 and x8 downscaling.

1. PP encoder on ERA5 2020-01-01 over western Europe (tp + VIMD from u, v, q, sp): fit on
   00-15 UTC; every candidate setting (width, quantile grid, weights, tp scale) is scored
   on 16-19 UTC and the best (lowest :func:`selection_score`) is reported on 20-23 UTC.
   The companion comparison (VIMD, the rain-edge distance from TP alone, both) uses the
   chosen setting and is reported on 20-23 UTC as well.
2. ERA5 Telangana tp x4 (0.25 deg target cropped to 20 x 20, predictors its 4 x 4 block
   means): train June 1 - July 15, validation July 16-23 (PP encoder setting, best
   checkpoints), test July 24-31 scored once. Methods: bilinear and bicubic interpolation
   of the block means; the regression U-Net and residual diffusion (EDM, cross-fitted
   residuals) in pixel space on log1p(tp) (IdentityAutoencoder, catalogue transform);
   the same two in pseudo-precipitation space (PP encoder with the rain-edge-distance
   companion), decoded to tp.
3. The Gibbs check (published figure): spectral truncation of TP versus of PP (decoded),
   on the Telangana test fields: negative values, ringing, wet fraction.
4. RADOLAN 1 km x8 (a 256 x 256 km crop, predictors its 8 x 8 block means): fit 00-13 UTC,
   validation 14-17, test 18-23; interpolation baselines, the PP encoder, and the same
   regression / diffusion spaces as Telangana when ``radolan.regression_samples`` and
   ``ldm_samples`` are > 0 (0 in the committed config: CPU cost, see BENCHMARKS.md).

All settings come from recipes/configs/precipitation_benchmark.yaml (and the two
pseudo_precip configs it names). CPU budget: about 20 minutes on one core.

    nice python benchmarks/precipitation.py [--config recipes/configs/precipitation_benchmark.yaml]

Writes benchmarks/results/precipitation.json and precipitation_gibbs.png; trained runs are
reused from ``out_dir`` when present.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # kmscale_testdata.py sits at the repository root


@dataclass
class PPSelection:
    config: str = "recipes/configs/pseudo_precip.yaml"
    choose_period: list[str] = field(default_factory=lambda: ["2020-01-01T16", "2020-01-01T19"])
    test_period: list[str] = field(default_factory=lambda: ["2020-01-01T20", "2020-01-01T23"])
    # Each candidate: space-separated overrides of the recipe config ("" = the config).
    candidates: list[str] = field(default_factory=lambda: [""])
    companions: list[list[str]] = field(default_factory=lambda: [["vimd"]])


@dataclass
class Telangana:
    pp_config: str = "recipes/configs/pseudo_precip_telangana.yaml"
    pp_candidates: list[str] = field(default_factory=lambda: [""])
    train_period: list[str] = field(default_factory=lambda: ["2023-06-01T00", "2023-07-15T23"])
    val_period: list[str] = field(default_factory=lambda: ["2023-07-16T00", "2023-07-23T23"])
    test_period: list[str] = field(default_factory=lambda: ["2023-07-24T00", "2023-07-31T23"])
    size: int = 20  # crop (px) of the 21 x 21 grid, a multiple of factor and of 4 (U-Net)
    factor: int = 4
    unet: list[int] = field(default_factory=lambda: [32, 64, 64])
    regression_samples: int = 8_000
    ldm_samples: int = 16_000
    residual_folds: int = 2
    members: int = 16
    steps: int = 12
    test_every_hours: int = 2  # scored test times: every n-th hour of the test split
    wet_threshold: float = 0.1  # mm h-1: wet hour for the downscaling scores
    fss_windows: list[int] = field(default_factory=lambda: [1, 3, 5])
    gibbs_keep: int = 2  # wavenumbers kept by the spectral truncation (20 px -> the 1-deg scales)


@dataclass
class Radolan:
    data_dir: str = "radolan_rw_20221018"
    file: str = "radolan_RW_20221018_hourly_1km.nc"
    # pp_config plus these overrides (the RADOLAN fields are given to the recipe in memory)
    pp_config: str = "recipes/configs/pseudo_precip_telangana.yaml"
    pp_overrides: list[str] = field(default_factory=list)
    # The encoder is per pixel: it trains on every n-th pixel of each row and column (the
    # same distribution of (tp, companion) pairs, n^2 times cheaper); it is scored on all.
    pp_stride: int = 4
    train_period: list[str] = field(default_factory=lambda: ["2022-10-18T00", "2022-10-18T13"])
    val_period: list[str] = field(default_factory=lambda: ["2022-10-18T14", "2022-10-18T17"])
    test_period: list[str] = field(default_factory=lambda: ["2022-10-18T18", "2022-10-18T23"])
    size: int = 256  # square crop (px = km) inside the composite; see radolan_data
    factor: int = 8
    unet: list[int] = field(default_factory=lambda: [32, 64, 64])
    regression_samples: int = 800
    ldm_samples: int = 2_000
    ldm_patch: list[int] = field(default_factory=lambda: [64, 64])
    # overrides of both recipes' configs (the U-Net without attention: 4,096 tokens at 256 px)
    overrides: list[str] = field(default_factory=list)
    residual_folds: int = 2
    members: int = 8
    steps: int = 6
    test_every_hours: int = 1
    wet_threshold: float = 0.1  # mm h-1
    fss_thresholds: dict[str, float] = field(default_factory=lambda: {"1mm_h": 1.0, "5mm_h": 5.0})
    fss_windows: list[int] = field(default_factory=lambda: [1, 5, 17])


@dataclass
class PrecipBenchmarkConfig:
    out_dir: str = "runs/bench_precip"
    pp: PPSelection = field(default_factory=PPSelection)
    telangana: Telangana = field(default_factory=Telangana)
    radolan: Radolan = field(default_factory=Radolan)


# ---- 1. the PP encoder ------------------------------------------------------------------
def train_pp(config: str, out: Path, overrides: list[str], fields: xr.Dataset | None = None):
    """Train (or reuse) one PP encoder with the recipe config plus overrides (on ``fields``
    when given, else on the config's data source)."""
    from kmscale.autoencoders import load_autoencoder
    from kmscale.autoencoders.pseudo_precip_train import PseudoPrecipConfig, train_pseudo_precip
    from kmscale.config import load_config

    cfg = load_config(PseudoPrecipConfig, ROOT / config, [f"out_dir={out}", *overrides])
    if (out / "autoencoder" / "config.json").is_file():
        return load_autoencoder(out / "autoencoder").eval(), cfg
    t0 = time.perf_counter()
    model, _ = train_pseudo_precip(cfg, fields)
    (out / "seconds.json").write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    return model, cfg


def pp_on(model, cfg, period: list[str], fields: xr.Dataset | None = None) -> dict:
    """PP scores on ``period``, with the rain-matched marginal against the fit hours."""
    from kmscale.autoencoders.pseudo_precip_train import load_fields, pp_scores
    from kmscale.autoencoders.train import select_period, stack_fields

    fields = load_fields(cfg.data) if fields is None else fields
    fit = select_period(fields, cfg.data.train_period, "period", required=True)["tp"]
    rain_fraction = float((fit > 0).mean())
    x = torch.from_numpy(
        stack_fields(select_period(fields, period, "period", required=True), model.variables)
    )
    return pp_scores(model, x, cfg.data.wet_threshold, rain_fraction=rain_fraction)


def pp_encoder_section(s: PPSelection, out: Path) -> dict:
    from kmscale.autoencoders.pseudo_precip_train import selection_score

    choose = [f"data.val_period=[{s.choose_period[0]},{s.choose_period[1]}]"]
    tried = {}
    for i, cand in enumerate(s.candidates):
        model, cfg = train_pp(s.config, out / f"pp_candidate_{i}", choose + cand.split())
        sc = pp_on(model, cfg, s.choose_period)
        tried[cand or "(config)"] = {"selection_score": selection_score(sc), **sc}
        print(f"PP candidate {cand or '(config)'}: {tried[cand or '(config)']}", flush=True)
    best = min(tried, key=lambda k: tried[k]["selection_score"])
    best_over = [] if best == "(config)" else best.split()
    i_best = list(tried).index(best)
    model, cfg = train_pp(s.config, out / f"pp_candidate_{i_best}", choose + best_over)
    test = pp_on(model, cfg, s.test_period)
    companions = {}
    for comps in s.companions:
        name = "+".join(comps)
        if list(comps) == list(cfg.data.companions):
            companions[name] = test
            continue
        over = choose + best_over + [f"data.companions=[{','.join(comps)}]"]
        m, c = train_pp(s.config, out / f"pp_companions_{name}", over)
        companions[name] = pp_on(m, c, s.test_period)
    return {
        "split": f"chosen on {s.choose_period}, reported on {s.test_period} (fit on 00-15 UTC)",
        "wet_fraction_error": test["wet_fraction_error"],
        "rmse_rel": test["rmse_rel"],
        "marginal": test["marginal"],
        "exact_zero_fraction": test["exact_zero_fraction"],
        "wet_threshold_mm_h": cfg.data.wet_threshold,
        "chosen": best,
        "candidates_on_choose_split": tried,
        "companions_on_test_split": companions,
        # The fit's own hours: what the quantile loss reaches without a change of weather.
        "on_training_hours": pp_on(model, cfg, cfg.data.train_period),
    }


# ---- 2. Telangana downscaling -----------------------------------------------------------
def telangana_data(t: Telangana, pp_data):
    """Targets (tp mm h-1 + rain_edge_distance) on the cropped 0.25 deg grid, block means.

    The companion is computed as the PP encoder's own recipe computes it (``pp_data``, its
    PPDataConfig: threshold, clipping, space-time scale) on the whole 21 x 21 grid before
    the crop, so the encoder sees at training, at encoding and in the Gibbs check one and
    the same field."""
    from kmscale.autoencoders.pseudo_precip_train import add_companions
    from kmscale.data.readers import open_dataset
    from kmscale_testdata import data_file

    ds = open_dataset(data_file("era5_telangana_tp_2023", "era5_telangana_tp_20230601-0731.nc"))
    tp = ds["tp"].load().clip(min=0.0)  # GRIB packing leaves a few -0.0
    full = add_companions(xr.Dataset({"tp": tp}), ["rain_edge_distance"], pp_data)
    targets = full.isel(lat=slice(0, t.size), lon=slice(0, t.size))
    targets["rain_edge_distance"].attrs["units"] = "km"
    coarse = targets[["tp"]].coarsen(lat=t.factor, lon=t.factor).mean()
    coarse["tp"].attrs = dict(tp.attrs)
    coarse = coarse.assign_coords(
        lead_time=("time", np.zeros(coarse.sizes["time"]), {"units": "hours"})
    )
    return targets, coarse


def _timed_once(run: Path, train) -> float | None:
    """Wall seconds of ``train()`` writing ``run/bundle``; a finished run is reused and its
    recorded seconds returned (None when it recorded none)."""
    record = run / "seconds.json"
    if (run / "bundle" / "bundle.json").is_file():
        return float(json.loads(record.read_text())["seconds"]) if record.is_file() else None
    t0 = time.perf_counter()
    train()
    seconds = time.perf_counter() - t0
    record.write_text(json.dumps({"seconds": seconds}))
    return seconds


def train_space(
    t: Telangana | Radolan,
    out: Path,
    name: str,
    autoencoder: str,
    data,
    variables: str,
    extra: Sequence[str] = (),
    ldm_extra: Sequence[str] = (),
) -> dict:
    """Regression + residual diffusion bundles of one space (reused when present);
    ``extra``: further overrides of both configs, ``ldm_extra`` of the diffusion config
    only (e.g. patch training)."""
    from kmscale.config import load_config
    from kmscale.diffusion.train import LDMConfig, RegressionConfig, train_ldm, train_regression

    common = [
        f"data.train_period=[{t.train_period[0]},{t.train_period[1]}]",
        f"data.val_period=[{t.val_period[0]},{t.val_period[1]}]",
        f"unet.block_out_channels={t.unet}",
        "unet.norm_num_groups=16",
        "train.global_batch_size=16",
        "train.lr=1e-3",
        "train.warmup_samples=500",
        "train.lr_decay=cosine",
        "train.ema_decay=0.99",
        "train.log_every_samples=800",
        f"data.variables={variables}",
    ]
    wall, bundles = {}, {}
    n = t.regression_samples
    reg = out / f"regression_{name}"
    cfg = load_config(
        RegressionConfig,
        None,
        common
        + [
            f"out_dir={reg}",
            f"autoencoder={autoencoder}",
            f"train.total_samples={n}",
            f"train.checkpoint_every_samples={n // 2}",
            f"train.validate_every_samples={n // 4}",
            *extra,
        ],
    )
    bundles["regression"] = reg / "bundle"
    wall["regression"] = _timed_once(reg, lambda: train_regression(cfg, data))
    n = t.ldm_samples
    ldm = out / f"diffusion_{name}"
    cfg = load_config(
        LDMConfig,
        None,
        common
        + [
            f"out_dir={ldm}",
            f"regression_bundle={reg / 'bundle'}",
            f"train.total_samples={n}",
            f"train.checkpoint_every_samples={n // 2}",
            f"train.validate_every_samples={n // 4}",
            "validation.members=4",
            "validation.steps=6",
            "validation.max_times=8",
            f"residual_folds={t.residual_folds}",
            *extra,
            *ldm_extra,
        ],
    )
    bundles["diffusion"] = ldm / "bundle"
    wall["diffusion"] = _timed_once(ldm, lambda: train_ldm(cfg, data))
    return {"bundles": bundles, "seconds": wall}


def sample(bundle: Path, coarse: xr.Dataset, members: int, steps: int, store: Path) -> np.ndarray:
    """tp members (M, T, H, W) in mm h-1 (a store under ``store``, reused when complete)."""
    from kmscale.data.store import open_store
    from kmscale.diffusion.bundle import ModelBundle
    from kmscale.diffusion.pipeline import DownscalingPipeline, SamplerSettings

    if not store.exists():
        pipe = DownscalingPipeline(ModelBundle.load(bundle))
        pipe.run(
            coarse,
            store,
            SamplerSettings(members=members, steps=steps, member_batch=16, time_chunk=16),
            progress=False,
        )
    ds = open_store(store, kind="ensemble")
    return np.asarray(ds["tp"].transpose("member", "time", "lat", "lon").values, np.float64)


def scores(ens: np.ndarray, truth: np.ndarray, t: Telangana | Radolan, thresholds: dict) -> dict:
    """ens (M, T, H, W) mm h-1 (M = 1: deterministic), truth (T, H, W)."""
    from kmscale.evaluation.precipitation import fss_field
    from kmscale.evaluation.probabilistic import crps_ensemble, rank_of_truth
    from kmscale.evaluation.quantiles import quantile_error
    from kmscale.evaluation.spectra import radial_power_spectrum, zonal_power_spectrum

    m = ens.shape[0]
    mean = ens.mean(0)
    err = mean - truth
    wet_t = float((truth >= t.wet_threshold).mean())
    wet_f = float((ens >= t.wet_threshold).mean())
    q = np.quantile(truth, [0.99, 0.999])
    qe = quantile_error(ens, truth, (0.99, 0.999))
    zt = zonal_power_spectrum(truth).reshape(-1, truth.shape[-1] // 2).mean(0)
    zf = zonal_power_spectrum(ens).reshape(-1, truth.shape[-1] // 2).mean(0)
    rt = np.mean([radial_power_spectrum(f) for f in truth], axis=0)
    rf = np.mean([radial_power_spectrum(f) for f in ens.reshape(-1, *truth.shape[-2:])], axis=0)
    fss = {}
    for label, thr in thresholds.items():
        fss[label] = {}
        for w in t.fss_windows:
            per = [
                fss_field(ens[:, i] if m > 1 else ens[0, i], truth[i], thr, w)
                for i in range(truth.shape[0])
            ]
            fss[label][str(w)] = float(np.nanmean(per))
    out = {
        "crps_fair": float(crps_ensemble(ens, truth, axis=0, fair=True).mean())
        if m > 1
        else float(np.abs(err).mean()),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "bias": float(err.mean()),
        "wet_fraction_error": (wet_f - wet_t) / wet_t,
        "q99_error": float(qe[0] / q[0]),
        "q999_error": float(qe[1] / q[1]),
        "fss": fss,
        "power_ratio_smallest": [float(zf[-2] / zt[-2]), float(zf[-1] / zt[-1])],
        "radial_power_ratio_smallest": [float(rf[-2] / rt[-2]), float(rf[-1] / rt[-1])],
        "_zonal_spectrum": zf.tolist(),
        "_zonal_spectrum_truth": zt.tolist(),
    }
    if m > 1:
        out["spread_skill"] = float(
            np.sqrt((m + 1) / m * ens.var(0, ddof=1).mean()) / np.sqrt(np.mean(err**2))
        )
        ranks = rank_of_truth(ens, truth, axis=0)
        hist = np.bincount(ranks.astype(int).ravel(), minlength=m + 1)
        out["rank_histogram"] = (hist / hist.sum()).round(4).tolist()
    return out


def interpolate(coarse: xr.Dataset, targets: xr.Dataset, mode: str) -> np.ndarray:
    from kmscale.conditioning.predictors import interpolate_regular

    x = interpolate_regular(
        np.asarray(coarse["tp"].values, np.float32),
        coarse["lat"].values,
        coarse["lon"].values,
        targets["lat"].values,
        targets["lon"].values,
        mode=mode,
    ).numpy()
    return np.maximum(x, 0.0)[None].astype(np.float64)


def telangana_section(t: Telangana, out: Path, only: str | None = None) -> tuple[dict, dict]:
    """The Telangana results; ``only`` ("log1p" or "pp"): train that space's models and stop."""
    from kmscale.autoencoders.pseudo_precip_train import selection_score
    from kmscale.diffusion.train import TrainingData

    # The PP encoder: settings chosen on the validation weeks.
    tried = {}
    for i, cand in enumerate(t.pp_candidates):
        model, cfg = train_pp(t.pp_config, out / f"pp_telangana_{i}", cand.split())
        sc = pp_on(model, cfg, t.val_period)
        tried[cand or "(config)"] = {"selection_score": selection_score(sc), **sc}
        print(
            f"Telangana PP candidate {cand or '(config)'}: {tried[cand or '(config)']}", flush=True
        )
    best = min(tried, key=lambda k: tried[k]["selection_score"])
    pp_dir = out / f"pp_telangana_{list(tried).index(best)}" / "autoencoder"
    pp_model, pp_cfg = train_pp(
        t.pp_config, pp_dir.parent, [] if best == "(config)" else best.split()
    )
    pp_test = pp_on(pp_model, pp_cfg, t.test_period)

    targets, coarse = telangana_data(t, pp_cfg.data)
    data = TrainingData(targets, coarse, None)
    train_tp = targets["tp"].sel(time=slice(*t.train_period)).values
    wet = train_tp[train_tp >= t.wet_threshold]
    thresholds = {"p90_wet": float(np.quantile(wet, 0.9)), "p99_wet": float(np.quantile(wet, 0.99))}
    how = {"log1p": ("identity", "[tp]"), "pp": (str(pp_dir), "[tp,rain_edge_distance]")}
    if only is not None:
        train_space(t, out, only, how[only][0], data, how[only][1])
        return {}, {}
    spaces = {k: train_space(t, out, k, ae, data, v) for k, (ae, v) in how.items()}
    # The choices (PP setting, best checkpoints) were made on validation above; the test
    # split is scored once here.
    every = slice(None, None, t.test_every_hours)
    tr = targets.sel(time=slice(*t.test_period)).isel(time=every)
    cr = coarse.sel(time=slice(*t.test_period)).isel(time=every)
    truth = np.asarray(tr["tp"].values, np.float64)
    results = {
        m: scores(interpolate(cr, tr, m), truth, t, thresholds) for m in ("bilinear", "bicubic")
    }
    for space, info in spaces.items():
        for kind in ("regression", "diffusion"):
            m = t.members if kind == "diffusion" else 1
            ens = sample(info["bundles"][kind], cr, m, t.steps, out / f"{kind}_{space}_test.zarr")
            results[f"{kind}_{space}"] = scores(ens, truth, t, thresholds)
    public = {
        k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in results.items()
    }
    section = {
        "split": f"test {t.test_period} every {t.test_every_hours} h ({truth.shape[0]} fields, "
        f"scored once); choices on validation {t.val_period}",
        "bilinear": public["bilinear"],
        "bicubic": public["bicubic"],
        "regression": public["regression_log1p"],
        "regression_pp": public["regression_pp"],
        "diffusion_log1p": public["diffusion_log1p"],
        "diffusion_pp": public["diffusion_pp"],
        "fss_thresholds_mm_h": thresholds,
        "pp_encoder": {
            "chosen": best,
            "candidates_on_val": tried,
            "test": pp_test,
            "on_training_period": pp_on(pp_model, pp_cfg, t.train_period),
        },
        "training_seconds": {k: v["seconds"] for k, v in spaces.items()},
    }
    return section, {"results": results, "targets": targets, "pp": pp_model}


# ---- 3. RADOLAN x8 --------------------------------------------------------------------
def radolan_data(r: Radolan, pp_data) -> tuple[xr.Dataset, xr.Dataset, dict]:
    """Targets (tp mm h-1 + rain_edge_distance) on a ``size`` x ``size`` km crop of the
    RADOLAN composite, and their ``factor`` x ``factor`` block means.

    The crop is the square fully inside the composite (no NaN at any hour) whose least
    rainy split (train, validation, test) has the most wet pixels: the rain crosses the
    domain during the day, and a crop chosen on the training hours alone is dry in the
    test hours. It is a choice of scoring domain made on the data, not on any model's
    scores. The 1 km polar-stereographic rows/columns are labelled as a regular grid of
    0.009 deg (1 km) near the equator, which is what the lat/lon-gridded recipes read: the
    CNNs use no coordinates, and the distances of the companion stay in km."""
    from kmscale.autoencoders.pseudo_precip_train import add_companions
    from kmscale_testdata import data_file

    ds = xr.open_dataset(data_file(r.data_dir, r.file), engine="h5netcdf")
    p = ds["precipitation"]
    valid = np.asarray(p.notnull().all("time").values)
    splits = [
        p.sel(time=slice(*period)) for period in (r.train_period, r.val_period, r.test_period)
    ]
    wet = [np.asarray((s_ > r.wet_threshold).mean("time").values) for s_ in splits]
    n = r.size
    best, where = -1.0, (0, 0)
    for i in range(0, p.sizes["y"] - n + 1, 16):
        for j in range(0, p.sizes["x"] - n + 1, 16):
            if valid[i : i + n, j : j + n].all():
                least = min(float(w[i : i + n, j : j + n].mean()) for w in wet)
                if least > best:
                    best, where = least, (i, j)
    i, j = where
    tp = p.isel(y=slice(i, i + n), x=slice(j, j + n)).load().clip(min=0.0)
    km = 0.009  # deg of latitude per km
    tp = xr.DataArray(
        tp.values.astype(np.float32),
        dims=("time", "lat", "lon"),
        coords={"time": tp["time"].values, "lat": km * np.arange(n), "lon": km * np.arange(n)},
        attrs={"units": "mm h-1", "standard_name": "lwe_precipitation_rate"},
    )
    targets = add_companions(xr.Dataset({"tp": tp}), ["rain_edge_distance"], pp_data)
    coarse = targets[["tp"]].coarsen(lat=r.factor, lon=r.factor).mean()
    coarse["tp"].attrs = dict(tp.attrs)
    coarse = coarse.assign_coords(
        lead_time=("time", np.zeros(coarse.sizes["time"]), {"units": "hours"})
    )
    crop = {"y0": int(i), "x0": int(j), "size_km": n, "least_split_wet_fraction": best}
    return targets, coarse, crop


def radolan_section(r: Radolan, out: Path) -> dict:
    """x8 downscaling of RADOLAN 1 km tp: the same methods and scores as Telangana."""
    from kmscale.autoencoders.pseudo_precip_train import PseudoPrecipConfig
    from kmscale.config import load_config
    from kmscale.diffusion.train import TrainingData

    out = out / "radolan"
    periods = [
        f"data.train_period=[{r.train_period[0]},{r.train_period[1]}]",
        f"data.val_period=[{r.val_period[0]},{r.val_period[1]}]",
    ]
    pp_over = [*periods, *r.pp_overrides]
    pp_cfg = load_config(PseudoPrecipConfig, ROOT / r.pp_config, pp_over)
    targets, coarse, crop = radolan_data(r, pp_cfg.data)
    thinned = targets.isel(lat=slice(None, None, r.pp_stride), lon=slice(None, None, r.pp_stride))
    pp_model, pp_cfg = train_pp(r.pp_config, out / "pp", pp_over, thinned)
    pp_test = pp_on(pp_model, pp_cfg, r.test_period, targets)
    data = TrainingData(targets, coarse, None)
    learned = r.regression_samples > 0 and r.ldm_samples > 0
    how = {
        "log1p": ("identity", "[tp]"),
        "pp": (str(out / "pp" / "autoencoder"), "[tp,rain_edge_distance]"),
    }
    patch = [f"patch={r.ldm_patch}"]
    spaces = {
        k: train_space(r, out, k, ae, data, v, r.overrides, patch)
        for k, (ae, v) in how.items()
        if learned
    }
    every = slice(None, None, r.test_every_hours)
    tr = targets.sel(time=slice(*r.test_period)).isel(time=every)
    cr = coarse.sel(time=slice(*r.test_period)).isel(time=every)
    truth = np.asarray(tr["tp"].values, np.float64)
    results = {
        m: scores(interpolate(cr, tr, m), truth, r, r.fss_thresholds)
        for m in ("bilinear", "bicubic")
    }
    for space, info in spaces.items():
        for kind in ("regression", "diffusion"):
            m = r.members if kind == "diffusion" else 1
            ens = sample(info["bundles"][kind], cr, m, r.steps, out / f"{kind}_{space}_test.zarr")
            results[f"{kind}_{space}"] = scores(ens, truth, r, r.fss_thresholds)
    public = {
        k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in results.items()
    }
    return {
        "split": f"test {r.test_period} every {r.test_every_hours} h ({truth.shape[0]} fields, "
        f"scored once); choices on validation {r.val_period}; fit {r.train_period}",
        "crop": crop,
        "bilinear": public["bilinear"],
        "bicubic": public["bicubic"],
        # None: not trained (regression_samples or ldm_samples 0: see BENCHMARKS.md)
        "regression": public.get("regression_log1p"),
        "regression_pp": public.get("regression_pp"),
        "diffusion_log1p": public.get("diffusion_log1p"),
        "diffusion_pp": public.get("diffusion_pp"),
        "fss_thresholds_mm_h": r.fss_thresholds,
        "pp_encoder": {
            "wet_fraction_error": pp_test["wet_fraction_error"],
            "rmse_rel": pp_test["rmse_rel"],
            "marginal": pp_test["marginal"],
            "test": pp_test,
            "on_training_period": pp_on(pp_model, pp_cfg, r.train_period, targets),
        },
        "training_seconds": {k: v["seconds"] for k, v in spaces.items()},
    }


# ---- 4. the Gibbs check -----------------------------------------------------------------
def truncate(x: np.ndarray, keep: int) -> np.ndarray:
    """Keep 2-D Fourier wavenumbers |k_y|, |k_x| <= keep of fields (..., H, W)."""
    f = np.fft.fft2(x)
    ky = np.abs(np.fft.fftfreq(x.shape[-2]) * x.shape[-2])
    kx = np.abs(np.fft.fftfreq(x.shape[-1]) * x.shape[-1])
    f = f * ((ky[:, None] <= keep) & (kx[None, :] <= keep))
    return np.real(np.fft.ifft2(f))


def gibbs_check(t: Telangana, extra: dict, path: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets, pp = extra["targets"], extra["pp"]
    test = targets.sel(time=slice(*t.test_period))
    x = torch.from_numpy(np.stack([test[v].values for v in pp.variables], 1).astype(np.float32))
    tp = x[:, pp.precip_index].numpy().astype(np.float64)
    with torch.no_grad():
        z = pp.encode(x).numpy().astype(np.float64)
        z_tr = truncate(z, t.gibbs_keep)
        tp_pp = pp.decode(torch.from_numpy(z_tr).float())[:, pp.precip_index].numpy()
        tp_rec = pp.decode(torch.from_numpy(z).float())[:, pp.precip_index].numpy()
    tp_tr = truncate(tp, t.gibbs_keep)
    smooth = truncate(tp, t.gibbs_keep)  # the reference smooth field is the truncated TP itself

    def stats(field: np.ndarray) -> dict:
        return {
            "negative_fraction": float((field < -1e-6).mean()),
            "min": float(field.min()),
            "wet_fraction": float((field >= t.wet_threshold).mean()),
            "dry_pixels_positive_fraction": float((field[tp == 0] > t.wet_threshold).mean()),
        }

    i = int(np.argmax((tp >= t.wet_threshold).mean((1, 2)) * ((tp < t.wet_threshold).mean((1, 2)))))
    row = int(np.argmax((tp[i] >= t.wet_threshold).mean(1) * (tp[i] < t.wet_threshold).mean(1)))
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    vmax = float(tp[i].max())
    for ax, f, title in zip(
        axes[:3],
        (tp[i], tp_tr[i], tp_pp[i]),
        (
            "ERA5 tp",
            f"tp truncated (|k| <= {t.gibbs_keep})",
            f"PP truncated, decoded (|k| <= {t.gibbs_keep})",
        ),
        strict=True,
    ):
        im = ax.imshow(
            f, origin="lower", cmap="viridis", vmin=min(0.0, float(tp_tr[i].min())), vmax=vmax
        )
        ax.axhline(row, color="w", lw=0.8)
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=axes[:3], shrink=0.8, label="mm h-1")
    axes[3].plot(tp[i, row], "k-", lw=2, label="tp")
    axes[3].plot(tp_tr[i, row], "r-", label="tp truncated")
    axes[3].plot(tp_pp[i, row], "b-", label="PP truncated, decoded")
    axes[3].axhline(0, color="gray", lw=0.5)
    axes[3].set_title("transect (white line)", fontsize=9)
    axes[3].legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    del smooth
    return {
        "split": f"test {t.test_period}",
        "keep_wavenumbers": t.gibbs_keep,
        "truth": stats(tp),
        "tp_truncated": stats(tp_tr),
        "pp_truncated_decoded": stats(tp_pp),
        "pp_untruncated_decoded": stats(tp_rec),
        "figure": path.name,
    }


def main(argv=None) -> int:
    from kmscale.config import dump_yaml, load_config

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", type=Path, default=ROOT / "recipes/configs/precipitation_benchmark.yaml"
    )
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides (results then stay under out_dir)"
    )
    parser.add_argument(
        "--train-only",
        choices=["log1p", "pp", "radolan"],
        default=None,
        help="train one space's Telangana models (or run the RADOLAN section) and stop: "
        "processes can share out_dir; a last run without it reuses them and scores",
    )
    args = parser.parse_args(argv)
    from kmscale_testdata import ENV_VAR, data_dir

    # The recipe configs name their data as ${KMSCALE_DATA}/...: the shared folder here.
    os.environ.setdefault(ENV_VAR, str(data_dir()))
    cfg = load_config(PrecipBenchmarkConfig, args.config, args.overrides)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    if args.train_only == "radolan":
        radolan_section(cfg.radolan, out)
        return 0
    if args.train_only:
        telangana_section(cfg.telangana, out, only=args.train_only)
        return 0
    dest = out if args.overrides else RESULTS
    pp_section = pp_encoder_section(cfg.pp, out)
    # Written as soon as it exists, completed below (the downscaling takes much longer).
    (dest / "precipitation.json").write_text(json.dumps({"pp_encoder": pp_section}, indent=2))
    tel, extra = telangana_section(cfg.telangana, out)
    gibbs = gibbs_check(cfg.telangana, extra, dest / "precipitation_gibbs.png")
    radolan = radolan_section(cfg.radolan, out)
    payload = {
        "pp_encoder": pp_section,
        "era5_telangana": tel,
        "gibbs": gibbs,
        "radolan": radolan,
        "details": {
            "machine": "2-core shared dev VM, no GPU (" + platform.machine() + ")",
            "load_average_start": load_before,
            "load_average_end": os.getloadavg(),
            "wall_seconds": time.perf_counter() - t0,
            "torch_threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(["python", *sys.argv]),
            "config": dump_yaml(cfg),
        },
    }
    (dest / "precipitation.json").write_text(json.dumps(payload, indent=2))
    print(json.dumps({k: v for k, v in payload.items() if k != "details"}, indent=2)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
