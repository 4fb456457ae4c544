"""ERA5 UK 2 m temperature x4 downscaling benchmark: headline run and rolling-origin evaluation.

Setup: target ERA5 t2m at 0.25 deg (32 x 48), predictors its 4 x 4 block means (1 deg,
8 x 12), static UKV orography + land fraction averaged onto the target grid. Every model
is trained from the committed recipe configs ``recipes/configs/benchmarks/era5_uk_*.yaml``
(the same files ``accelerate launch recipes/train_*.py --config ...`` reads); this script
only sets the periods and run directories.

Methods: bilinear and bicubic interpolation of the predictors; the regression U-Net in
pixel space (IdentityAutoencoder) and in the latent space of a VAE (4x, 8 channels);
residual diffusion (EDM) on cross-fitted residuals in both spaces, sampled with several
members. Scores: RMSE and MAE of the (ensemble) mean, fair CRPS, spread-skill ratio, rank
histogram, and predicted/true power at the two smallest resolved scales of the windowed
zonal spectrum (``kmscale.evaluation.spectra``).

Headline run (periods of the configs: train March 1-20, the scored days March 21-24 are
also the days the best checkpoints are chosen on; there is no test split)::

    python benchmarks/downscaling_era5_uk.py --out runs/bench_era5_uk [--quick]

Rolling-origin evaluation (``kmscale.data.rolling``): per origin, train on March 1 up to
a validation block, choose every setting on the validation block (best checkpoints,
re-centring of the members, the spread calibration factor), score the test block once;
both spaces side by side; the median over blocks is the result::

    python benchmarks/downscaling_era5_uk.py \
        --rolling recipes/configs/benchmarks/era5_uk_rolling.yaml

Both write ``benchmarks/results/downscaling_era5_uk.json`` (the rolling run under its key
``rolling``, keeping the rest; ``--quick`` writes under --out only). Re-running with the
same --out reuses finished runs. ``--write-data DIR`` writes the benchmark's data as the
zarr stores the recipe configs read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent  # relative config paths: from here if not from cwd
sys.path.insert(0, str(ROOT))  # kmscale_testdata.py, the shared real data
METHODS = (
    "bilinear",
    "regression_pixel",
    "regression_latent",
    "diffusion_pixel",
    "diffusion_latent",
)
SCORE_KEYS = ("rmse", "mae", "crps_fair", "spread_skill", "power_ratio_smallest")
# --quick: a smoke run of the headline mode with tiny budgets (dotted overrides per stage)
QUICK = {
    "vae": [
        "stage1.total_samples=35",
        "stage2.total_samples=29",
        "decoder.total_samples=16",
        "loss.kl_warmup_samples=16",
        "train.warmup_samples=64",
        "train.checkpoint_every_samples=32",
        "train.log_every_samples=16",
    ],
    "regression_pixel": [
        "train.total_samples=32",
        "train.checkpoint_every_samples=16",
        "train.validate_every_samples=8",
    ],
    "regression_latent": [
        "train.total_samples=32",
        "train.checkpoint_every_samples=16",
        "train.validate_every_samples=8",
    ],
    "diffusion_pixel": [
        "train.total_samples=32",
        "train.checkpoint_every_samples=16",
        "train.validate_every_samples=16",
    ],
    "diffusion_latent": [
        "train.total_samples=32",
        "train.checkpoint_every_samples=16",
        "train.validate_every_samples=16",
        "decoder_refinement.total_samples=32",
    ],
}


@dataclass
class StageConfigs:
    """Recipe config of every trained stage (YAML paths, relative to the repository root)."""

    vae: str = "recipes/configs/benchmarks/era5_uk_vae.yaml"
    regression_pixel: str = "recipes/configs/benchmarks/era5_uk_regression_pixel.yaml"
    regression_latent: str = "recipes/configs/benchmarks/era5_uk_regression_latent.yaml"
    diffusion_pixel: str = "recipes/configs/benchmarks/era5_uk_ldm_pixel.yaml"
    diffusion_latent: str = "recipes/configs/benchmarks/era5_uk_ldm_latent.yaml"


@dataclass
class StageOverrides:
    """Dotted overrides per stage (e.g. smaller budgets), applied after the YAML."""

    vae: list[str] = field(default_factory=list)
    regression_pixel: list[str] = field(default_factory=list)
    regression_latent: list[str] = field(default_factory=list)
    diffusion_pixel: list[str] = field(default_factory=list)
    diffusion_latent: list[str] = field(default_factory=list)


@dataclass
class RollingConfig:
    """``--rolling CONFIG`` (recipes/configs/benchmarks/era5_uk_rolling*.yaml)."""

    first_day: str = "2019-03-01"  # every training period starts here
    origins: list[str] = field(default_factory=lambda: ["2019-03-13", "2019-03-17", "2019-03-21"])
    test_days: int = 4  # test block length from each origin
    val_days: int = 4  # validation block: the days just before the test block
    eval_every_hours: int = 4  # scored times: every 4th hour of a block
    members: int = 16
    steps: int = 12  # EDM Heun noise levels (2N - 1 network evaluations per member)
    budget: str = "full"  # "full" or "reduced": a label recorded with the figures
    # re-centring settings (SamplerSettings.center_residuals) tried on the validation block
    center_pixel: list[bool] = field(default_factory=lambda: [False, True])
    center_latent: list[bool] = field(default_factory=lambda: [False, True])
    configs: StageConfigs = field(default_factory=StageConfigs)
    overrides: StageOverrides = field(default_factory=StageOverrides)


# ---- shared helpers ------------------------------------------------------------------
def _reuse(run_dir: str | Path) -> Path | None:
    """The bundle (or autoencoder) of a finished run: re-running reuses trained models."""
    for name, marker in (("bundle", "bundle.json"), ("autoencoder", "config.json")):
        if (Path(run_dir) / name / marker).is_file():
            return Path(run_dir) / name
    return None


def _timed(run_dir: str | Path, train) -> tuple[Path, float]:
    """Train (or reuse) a run; its wall seconds are kept in the run directory."""
    record = Path(run_dir) / "benchmark_seconds.json"
    bundle = _reuse(run_dir)
    if bundle is not None and record.is_file():
        return bundle, json.loads(record.read_text())["seconds"]
    t0 = time.perf_counter()
    bundle = bundle or train()
    seconds = time.perf_counter() - t0
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"seconds": seconds}))
    return bundle, seconds


def _write_json(path: Path, payload: dict) -> None:
    """Atomic write (temp name + rename): a killed run never leaves half a results file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def published_speedup() -> float | None:
    """The latent-vs-pixel speed-up of benchmarks/sampling_speed.py."""
    path = RESULTS / "sampling_speed.json"
    return (
        json.loads(path.read_text())["sampling_speedup_latent_vs_pixel"] if path.is_file() else None
    )


def interpolation_baseline(pred, target, method: str) -> np.ndarray:
    """Predictors interpolated onto the target grid: (T, H, W)."""
    from kmscale.conditioning.predictors import interpolate_regular

    return interpolate_regular(
        np.asarray(pred["t2m"].values, np.float32),
        pred["lat"].values,
        pred["lon"].values,
        target["lat"].values,
        target["lon"].values,
        mode=method,
    ).numpy()


def scores(ens: np.ndarray, truth: np.ndarray) -> dict:
    """ens (M, T, H, W) in K (M = 1 for deterministic), truth (T, H, W)."""
    from kmscale.diffusion.calibration import spread_skill_ratio
    from kmscale.evaluation.probabilistic import crps_ensemble, rank_of_truth
    from kmscale.evaluation.spectra import zonal_power_spectrum

    m = ens.shape[0]
    err = ens.mean(0) - truth
    half = truth.shape[-1] // 2
    p_true = zonal_power_spectrum(truth.astype(np.float64)).reshape(-1, half).mean(0)
    p_pred = zonal_power_spectrum(ens.astype(np.float64)).reshape(-1, half).mean(0)
    out = {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "power_ratio_smallest": [float(p_pred[-2] / p_true[-2]), float(p_pred[-1] / p_true[-1])],
        "_spectrum": p_pred.tolist(),
        "_spectrum_truth": p_true.tolist(),
    }
    if m > 1:
        out["crps_fair"] = float(crps_ensemble(ens, truth, axis=0, fair=True).mean())
        out["spread_skill"] = spread_skill_ratio(ens, truth)
        ranks = rank_of_truth(ens, truth, axis=0)
        hist = np.bincount(ranks.astype(int).ravel(), minlength=m + 1)
        out["rank_histogram"] = (hist / hist.sum()).round(4).tolist()  # frequency of rank 0..M
    return out


def public(s: dict) -> dict:
    return {k: v for k, v in s.items() if not k.startswith("_")}


def sample(
    bundle_path: Path,
    preds,
    members: int,
    store: Path,
    steps: int,
    center: bool = False,
    autoencoder: Path | None = None,
) -> tuple[np.ndarray, float]:
    """Sample ``preds``' times with a bundle into ``store``; (M, T, H, W) in K and seconds.
    ``autoencoder`` replaces the bundle's (the same latents decoded by another decoder)."""
    from kmscale.autoencoders import load_autoencoder
    from kmscale.data.store import open_store
    from kmscale.diffusion.bundle import ModelBundle
    from kmscale.diffusion.pipeline import DownscalingPipeline, SamplerSettings

    t0 = time.perf_counter()
    if not store.exists():
        bundle = ModelBundle.load(bundle_path)
        if autoencoder is not None:
            bundle.autoencoder = load_autoencoder(autoencoder).eval()
        DownscalingPipeline(bundle).run(
            preds,
            store,
            SamplerSettings(
                members=members, steps=steps, member_batch=16, time_chunk=8, center_residuals=center
            ),
            progress=False,
        )
    seconds = time.perf_counter() - t0
    ds = open_store(store, kind="ensemble").load()
    return np.asarray(ds["t2m"].transpose("member", "time", "lat", "lon").values), seconds


def stage_config(stage: str, configs: StageConfigs, overrides: list[str], extra: list[str]):
    """The recipe config of ``stage`` (its YAML, then ``overrides``, then ``extra``)."""
    from kmscale.autoencoders.train import AutoencoderConfig
    from kmscale.config import load_config
    from kmscale.diffusion.train import LDMConfig, RegressionConfig

    cls = {"vae": AutoencoderConfig, "regression": RegressionConfig, "diffusion": LDMConfig}[
        stage.split("_")[0]
    ]
    path = Path(getattr(configs, stage))
    if not path.is_absolute() and not path.exists():
        path = ROOT / path
    return load_config(cls, path, [*overrides, *extra])


def _period(values: list[str]) -> str:
    return f"[{values[0]},{values[1]}]"


def train_chain(
    out: Path,
    data,
    configs: StageConfigs,
    overrides: StageOverrides,
    periods: dict[str, list[str]] | None,
) -> tuple[dict[str, Path], dict[str, float]]:
    """VAE, then regression and residual diffusion in pixel and latent space (reused when
    finished). ``periods`` ({"train": [a, b], "validation": [a, b]}) replaces the configs'
    periods; None keeps them. Returns the bundles (and ``vae``) and the wall seconds."""
    from kmscale.autoencoders.train import train_autoencoder
    from kmscale.diffusion.train import train_ldm, train_regression

    def extra(stage: str, *more: str) -> list[str]:
        keys = [f"out_dir={out / stage}", *more]
        if periods is not None:
            keys.append(f"data.train_period={_period(periods['train'])}")
            keys.append(f"data.val_period={_period(periods['validation'])}")
        return keys

    paths, wall = {}, {}
    cfg = stage_config("vae", configs, overrides.vae, extra("vae"))
    paths["vae"], wall["vae"] = _timed(
        cfg.out_dir,
        lambda: (train_autoencoder(cfg, data.targets), Path(cfg.out_dir) / "autoencoder")[1],
    )
    for space, ae in (("pixel", "identity"), ("latent", str(paths["vae"]))):
        name = f"regression_{space}"
        cfg = stage_config(
            name, configs, getattr(overrides, name), extra(name, f"autoencoder={ae}")
        )
        paths[name], wall[name] = _timed(cfg.out_dir, lambda c=cfg: train_regression(c, data)[1])
        name = f"diffusion_{space}"
        cfg = stage_config(
            name,
            configs,
            getattr(overrides, name),
            extra(name, f"regression_bundle={paths[f'regression_{space}']}"),
        )
        paths[name], wall[name] = _timed(cfg.out_dir, lambda c=cfg: train_ldm(c, data)[1])
    return paths, wall


def load_data():
    """The benchmark's TrainingData: ERA5 UK target, 4 x 4 block-mean predictors, static."""
    from kmscale.diffusion.train import TrainingData
    from kmscale_testdata import era5_uk_predictors, era5_uk_static, era5_uk_t2m

    target = era5_uk_t2m().load()
    return TrainingData(target, era5_uk_predictors(target).load(), era5_uk_static(target).load())


def write_data(folder: Path) -> None:
    """The benchmark's data as the zarr stores the recipe configs read (atomic per store)."""
    data = load_data()
    folder.mkdir(parents=True, exist_ok=True)
    for name, ds in (
        ("targets", data.targets),
        ("predictors", data.predictors),
        ("static", data.static),
    ):
        final, tmp = folder / f"{name}.zarr", folder / f".{name}.zarr.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        print(f"wrote {final}")


def vae_reconstruction(vae_path: Path, targets) -> dict:
    """RMSE/MAE (K) of the autoencoder's reconstruction of ``targets``: the latent floor."""
    from kmscale.autoencoders import load_autoencoder
    from kmscale.conditioning.dataset import encode_targets

    vae = load_autoencoder(vae_path).eval()
    truth = np.asarray(targets["t2m"].values, np.float64)
    with torch.no_grad():
        recon = vae.decode(encode_targets(vae, targets, progress=False))[:, 0].numpy()
    return {
        "rmse": float(np.sqrt(np.mean((recon - truth) ** 2))),
        "mae": float(np.mean(np.abs(recon - truth))),
    }


# ---- rolling-origin evaluation ---------------------------------------------------------
@dataclass
class Choice:
    """Settings of one diffusion bundle chosen on a validation block."""

    center_residuals: bool
    alpha: float  # SpreadCalibration factor, applied unchanged to the test block
    record: dict  # per candidate: raw and calibrated validation scores


def choose_on_validation(candidates: dict[bool, np.ndarray], truth: np.ndarray) -> Choice:
    """Per re-centring setting (``SamplerSettings.center_residuals``), fit the spread
    calibration on the validation ensemble ``candidates[center]`` (M, T, H, W) against
    ``truth`` (T, H, W); keep the setting whose calibrated ensemble has the lowest fair CRPS."""
    from kmscale.diffusion.calibration import SpreadCalibration, spread_skill_ratio
    from kmscale.evaluation.probabilistic import crps_ensemble

    record, best = {}, None
    for center, ens in candidates.items():
        cal = SpreadCalibration.fit(ens, truth)
        crps = float(crps_ensemble(cal.apply(ens), truth, axis=0, fair=True).mean())
        record[f"center_residuals={center}"] = {
            "alpha": cal.alpha,
            "crps_fair_calibrated": crps,
            "crps_fair_raw": float(crps_ensemble(ens, truth, axis=0, fair=True).mean()),
            "spread_skill_raw": spread_skill_ratio(ens, truth),
        }
        if best is None or crps < best[2]:
            best = (center, cal.alpha, crps)
    return Choice(best[0], best[1], record)


def deterministic_scores(field: np.ndarray, truth: np.ndarray) -> dict:
    """Scores of a single field (T, H, W): fair CRPS of one member is its MAE, spread 0."""
    s = public(scores(field[None], truth))
    return {**s, "crps_fair": s["mae"], "spread_skill": 0.0}


def diagnosis(val: dict, test: dict, ae: dict, choices: dict) -> dict:
    """Which part of the chain loses skill from the validation to the test block (K, ratios)."""
    out = {"autoencoder_rmse": {k: ae[k]["rmse"] for k in ("validation", "test")}}
    for split, s in (("validation", val), ("test", test)):
        b = s["bilinear"]["rmse"]
        out.setdefault("regression_latent_rmse_vs_bilinear", {})[split] = (
            s["regression_latent"]["rmse"] / b
        )
        out.setdefault("regression_pixel_rmse_vs_bilinear", {})[split] = (
            s["regression_pixel"]["rmse"] / b
        )
        # share of the latent regression's squared error that the autoencoder's floor accounts for
        out.setdefault("autoencoder_share_of_latent_mse", {})[split] = (
            ae[split]["rmse"] ** 2 / s["regression_latent"]["rmse"] ** 2
        )
    for space in ("latent", "pixel"):
        name = f"diffusion_{space}"
        c = choices[name]
        out[f"{name}_residual_spread"] = {
            "alpha": c.alpha,
            "center_residuals": c.center_residuals,
            "spread_skill_raw_validation": c.record[f"center_residuals={c.center_residuals}"][
                "spread_skill_raw"
            ],
            "spread_skill_raw_test": test[f"_{name}_raw"]["spread_skill"],
            "spread_skill_calibrated_test": test[name]["spread_skill"],
        }
    return out


def run_origin(rc: RollingConfig, origin, data, out: Path) -> dict:
    """Train on ``origin.train``, choose on ``origin.validation``, score ``origin.test`` once."""
    from kmscale.diffusion.calibration import SpreadCalibration

    paths, wall = train_chain(
        out,
        data,
        rc.configs,
        rc.overrides,
        {"train": origin.train, "validation": origin.validation},
    )
    blocks = {}
    for split in ("validation", "test"):
        t, p = data.period(getattr(origin, split))
        every = slice(0, None, rc.eval_every_hours)
        blocks[split] = (t.isel(time=every), p.isel(time=every))
    truth = {k: np.asarray(t["t2m"].values, np.float64) for k, (t, _) in blocks.items()}
    res = {
        k: {"bilinear": deterministic_scores(interpolation_baseline(p, t, "bilinear"), truth[k])}
        for k, (t, p) in blocks.items()
    }
    seconds = {}
    for space in ("pixel", "latent"):
        name = f"regression_{space}"
        for split, (_, p) in blocks.items():
            ens, seconds[f"{name}_{split}"] = sample(
                paths[name], p, 1, out / f"{name}_{split}.zarr", rc.steps
            )
            res[split][name] = deterministic_scores(ens[0], truth[split])
    choices = {}
    for space in ("pixel", "latent"):
        name = f"diffusion_{space}"
        p_val, p_test = blocks["validation"][1], blocks["test"][1]
        cands = {
            c: sample(
                paths[name],
                p_val,
                rc.members,
                out / f"{name}_validation_centred{int(c)}.zarr",
                rc.steps,
                center=c,
            )[0]
            for c in getattr(rc, f"center_{space}")
        }
        choice = choices[name] = choose_on_validation(cands, truth["validation"])
        cal = SpreadCalibration(choice.alpha)
        res["validation"][name] = public(
            scores(cal.apply(cands[choice.center_residuals]), truth["validation"])
        )
        # the test block, sampled and scored once with the settings chosen above
        ens, seconds[f"{name}_test"] = sample(
            paths[name],
            p_test,
            rc.members,
            out / f"{name}_test.zarr",
            rc.steps,
            center=choice.center_residuals,
        )
        res["test"][name] = public(scores(cal.apply(ens), truth["test"]))
        res["test"][f"_{name}_raw"] = public(scores(ens, truth["test"]))
    ae = {k: vae_reconstruction(paths["vae"], t) for k, (t, _) in blocks.items()}
    return {
        **origin.as_dict(),
        "scored_times": {k: int(t.sizes["time"]) for k, (t, _) in blocks.items()},
        "test_scores": {m: res["test"][m] for m in METHODS},
        "validation_scores": {m: res["validation"][m] for m in METHODS},
        "choices": {
            k: {
                "center_residuals": c.center_residuals,
                "spread_alpha": c.alpha,
                "candidates": c.record,
            }
            for k, c in choices.items()
        },
        "diagnosis": diagnosis(res["validation"], res["test"], ae, choices),
        "training_seconds": wall,
        "sampling_seconds": seconds,
    }


def median_over_blocks(blocks: list[dict]) -> dict:
    """Per method and score: the median of the blocks' test scores (element-wise for lists)."""
    out = {}
    for method in METHODS:
        out[method] = {}
        for key in SCORE_KEYS:
            values = [b["test_scores"][method][key] for b in blocks]
            med = np.median(np.asarray(values, np.float64), axis=0)
            out[method][key] = med.tolist() if med.ndim else float(med)
    return out


def _merged(previous: dict | None, blocks: list[dict], resolved: dict) -> list[dict]:
    """This run's blocks plus a previous run's other origins when it had the same config
    (origins run by separate processes end in one result), sorted by origin."""
    keep = {}
    if previous is not None and previous.get("resolved_config") == resolved:
        keep = {b["origin"]: b for b in previous["blocks"]}
    keep.update({b["origin"]: b for b in blocks})
    return [keep[k] for k in sorted(keep)]


def run_rolling(config: Path, out: Path, machine: str, only: list[str] | None = None) -> dict:
    """The origins of ``config`` (RollingConfig YAML; ``only``: a subset of them). The JSON is
    rewritten after each block, merged with the other origins of an earlier run of the same
    config."""
    from kmscale.config import load_config, to_dict
    from kmscale.data.rolling import rolling_origins

    rc = load_config(RollingConfig, config)
    origins = rolling_origins(rc.first_day, rc.origins, rc.test_days, rc.val_days)
    if only:
        unknown = sorted(set(only) - set(rc.origins))
        if unknown:
            raise SystemExit(
                f"--origins: expected origins of {config} ({rc.origins}), found {unknown}"
            )
        origins = [o for o in origins if o.origin in only]
    resolved = to_dict(rc)
    data = load_data()
    dest = RESULTS / "downscaling_era5_uk.json"
    blocks = []
    for origin in origins:
        t0 = time.perf_counter()
        block = run_origin(rc, origin, data, out / f"origin_{origin.origin}")
        block["wall_seconds_this_run"] = time.perf_counter() - t0
        blocks.append(block)
        payload = json.loads(dest.read_text()) if dest.is_file() else {}
        merged = _merged(payload.get("rolling"), blocks, resolved)
        rolling = {
            "complete": [b["origin"] for b in merged] == sorted(rc.origins),
            "budget": rc.budget,
            "split_of_figures": "test blocks",
            "median": median_over_blocks(merged),
            "blocks": merged,
            "config": str(config),
            "resolved_config": resolved,
            "machine": machine,
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(["python", *sys.argv]),
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
        }
        payload["rolling"] = rolling
        _write_json(dest, payload)
        summary = {
            "origin": origin.origin,
            "test": block["test_scores"],
            "diagnosis": block["diagnosis"],
        }
        print(json.dumps(summary, indent=1), flush=True)
    return rolling


# ---- headline run -----------------------------------------------------------------------
def sampling_speed(
    pixel_bundle: Path,
    latent_bundle: Path,
    pred_val,
    steps: int,
    members: int = 16,
    repeats: int = 5,
) -> dict:
    """Seconds per member, pixel vs latent diffusion, same steps and width, side by side."""
    from kmscale.diffusion.bundle import ModelBundle
    from kmscale.diffusion.pipeline import DownscalingPipeline, SamplerSettings
    from kmscale.diffusion.regression import predict_mean

    settings = SamplerSettings(members=members, steps=steps, member_batch=members)
    times = {"pixel": [], "latent": []}
    pipes = {
        k: DownscalingPipeline(ModelBundle.load(p))
        for k, p in (("pixel", pixel_bundle), ("latent", latent_bundle))
    }
    data = {k: p.conditioning(pred_val.isel(time=slice(0, 1))) for k, p in pipes.items()}
    z_mean = {k: predict_mean(p.regression, data[k], progress=False) for k, p in pipes.items()}
    seeds = list(range(members))
    for _ in range(repeats):
        for k, p in pipes.items():  # alternate, so that machine load hits both alike
            t0 = time.perf_counter()
            p.sample_time(data[k][0], z_mean[k][0], seeds, settings)
            times[k].append((time.perf_counter() - t0) / members)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "seconds_per_member": med,
        "speedup": med["pixel"] / med["latent"],
        "steps": steps,
        "members": members,
        "repeats": repeats,
    }


def plot_spectra(results: dict, path: Path, nlon: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = np.arange(1, nlon // 2 + 1)
    wavelength = nlon * 0.25 / k  # degrees of longitude
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    truth = next(iter(results.values()))["_spectrum_truth"]
    ax.loglog(wavelength, truth, "k-", lw=2.5, label="ERA5 truth")
    for name, r in results.items():
        ax.loglog(wavelength, r["_spectrum"], label=name)
    ax.invert_xaxis()
    ax.set_xlabel("zonal wavelength (deg longitude)")
    ax.set_ylabel("power (K$^2$), detrended + Hann")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sample_and_score(
    bundles: dict, p_val, truth: np.ndarray, out, members: int, steps: int, centred, results
) -> tuple[dict, dict]:
    """Sample every regression and diffusion bundle on the validation times and add its
    scores to ``results``; a diffusion bundle is sampled with both centring settings.

    Returns the sampling seconds per bundle and the scores of the other centring setting.
    """
    sample_seconds, variants = {}, {}
    for name in ("regression_pixel", "diffusion_pixel", "regression_latent", "diffusion_latent"):
        m = members if name.startswith("diffusion") else 1
        center = m > 1 and name.split("_")[-1] in centred
        ens, sample_seconds[name] = sample(
            bundles[name],
            p_val,
            m,
            out / f"{name}_val{'_centred' * center}.zarr",
            steps,
            center=center,
        )
        results[name] = scores(ens, truth)
        if m > 1:  # the same bundle with the other centring setting
            other = sample(
                bundles[name],
                p_val,
                m,
                out / f"{name}_val{'_centred' * (not center)}.zarr",
                steps,
                center=not center,
            )[0]
            variants[name] = {"center_residuals": not center, **public(scores(other, truth))}
    return sample_seconds, variants


def refinement_effect(
    bundles: dict, p_val, truth: np.ndarray, out, members: int, steps: int, centred
) -> dict | None:
    """The bundle's decoder-refinement record plus the scores of the headline latent
    ensemble decoded by the VAE before refinement (None without refinement)."""
    from kmscale.diffusion.bundle import ModelBundle

    refinement = (
        ModelBundle.load(bundles["diffusion_latent"]).extra["ldm"].get("decoder_refinement")
    )
    if refinement is not None:  # the headline latent ensemble decoded by the VAE before refinement
        before = sample(
            bundles["diffusion_latent"],
            p_val,
            members,
            out / "diffusion_latent_val_vae.zarr",
            steps,
            center="latent" in centred,
            autoencoder=bundles["vae"],
        )[0]
        refinement = {"without_refinement": public(scores(before, truth)), **refinement}
    return refinement


def run_headline(args) -> dict:
    """The headline run on the configs' own periods (module docstring)."""
    configs = StageConfigs()
    overrides = StageOverrides(**QUICK) if args.quick else StageOverrides()
    steps, members = (4, 4) if args.quick else (RollingConfig.steps, RollingConfig.members)
    reg_cfg = stage_config("regression_pixel", configs, [], [])
    val_period, train_period = reg_cfg.data.val_period, reg_cfg.data.train_period
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = load_data()
    t_val, p_val = data.period(val_period)
    every = slice(0, None, RollingConfig.eval_every_hours)
    t_val, p_val = t_val.isel(time=every), p_val.isel(time=every)
    truth = np.asarray(t_val["t2m"].values, np.float64)
    bundles, wall = train_chain(out, data, configs, overrides, None)
    results = {
        m: scores(interpolation_baseline(p_val, t_val, m)[None], truth)
        for m in ("bilinear", "bicubic")
    }
    centred = {"latent": ["latent"], "none": [], "both": ["pixel", "latent"]}[args.center_residuals]
    sample_seconds, variants = sample_and_score(
        bundles, p_val, truth, out, members, steps, centred, results
    )
    refinement = refinement_effect(bundles, p_val, truth, out, members, steps, centred)
    speed = sampling_speed(bundles["diffusion_pixel"], bundles["diffusion_latent"], p_val, steps)
    dest = out if args.quick else RESULTS
    dest.mkdir(parents=True, exist_ok=True)
    plot_spectra(
        results,
        dest / "downscaling_era5_uk_spectra.png",
        truth.shape[-1],
        f"ERA5 UK t2m x4, {val_period[0][:10]} to {val_period[1][:10]}",
    )
    path = dest / "downscaling_era5_uk.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    payload = {
        **{k: public(v) for k, v in results.items()},
        # benchmarks/sampling_speed.py's headline (256 x 256, 8x VAE); this grid's own: details
        "sampling_speedup_latent_vs_pixel": published_speedup() or speed["speedup"],
        "details": {
            # the days the best checkpoints are chosen on; no test split
            "split_of_figures": "validation",
            # floor of every latent method
            "vae_reconstruction": vae_reconstruction(bundles["vae"], t_val),
            "decoder_refinement": refinement,
            "center_residuals": centred,
            "other_centring": variants,
            "configs": {k: getattr(configs, k) for k in StageConfigs.__dataclass_fields__},
            "overrides": {k: v for k, v in QUICK.items()} if args.quick else {},
            "training_seconds": wall,
            "sampling_seconds_val": sample_seconds,
            "members": members,
            "steps": steps,
            "solver": "heun",
            "sampling_speed": speed,
            "train_period": train_period,
            "val_period": val_period,
            "scored_times": int(t_val.sizes["time"]),
            "scored_every_hours": RollingConfig.eval_every_hours,
            "machine": args.machine,
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(["python", *sys.argv]),
            "torch_threads": torch.get_num_threads(),
        },
    }
    # the rolling-origin runs (--rolling) write their own keys; keep them
    payload.update({k: v for k, v in previous.items() if k.startswith("rolling")})
    _write_json(path, payload)
    return payload


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench_era5_uk"))
    parser.add_argument(
        "--rolling",
        type=Path,
        default=None,
        metavar="CONFIG",
        help="rolling-origin evaluation with this RollingConfig YAML",
    )
    parser.add_argument(
        "--origins",
        nargs="+",
        default=None,
        help="--rolling: run only these origins of the config (runs of the same config merge)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="headline mode with tiny budgets; results under --out"
    )
    parser.add_argument(
        "--write-data",
        type=Path,
        default=None,
        metavar="DIR",
        help="write targets/predictors/static zarr stores for the recipe configs, then stop",
    )
    parser.add_argument(
        "--center-residuals",
        choices=["latent", "none", "both"],
        default="latent",
        help="headline mode: spaces whose ensembles are re-centred on the regression mean "
        "(SamplerSettings.center_residuals); the other setting is scored under details",
    )
    parser.add_argument(
        "--machine",
        default="2-core shared dev VM, no GPU; one core (taskset), torch 1 thread",
        help="where it ran, recorded in the JSON",
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    # One thread: on a shared 2-core machine two threads per process oversubscribe the cores.
    torch.set_num_threads(1)
    if args.write_data is not None:
        write_data(args.write_data)
        return 0
    if args.rolling is not None:
        rolling = run_rolling(args.rolling, args.out, args.machine, args.origins)
        print(json.dumps(rolling["median"], indent=2))
        return 0
    print(json.dumps(run_headline(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
