"""Rolling-origin evaluation: the splits (kmscale.data.rolling), the spread calibration fitted
on validation (kmscale.diffusion.calibration), the ERA5 UK benchmark's recipe configs and its
per-origin machinery (choice on validation, median over blocks, one tiny origin end to end)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from kmscale.data.rolling import rolling_origins
from kmscale.diffusion.calibration import SpreadCalibration, spread_skill_ratio
from kmscale.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "recipes" / "configs" / "benchmarks"
sys.path.insert(0, str(Path(__file__).parent))


def bench():
    path = ROOT / "benchmarks" / "downscaling_era5_uk.py"
    spec = importlib.util.spec_from_file_location("downscaling_era5_uk", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- splits -------------------------------------------------------------------------------
def test_rolling_origins_march_blocks():
    origins = rolling_origins("2019-03-01", ["2019-03-13", "2019-03-17", "2019-03-21"], 4, 4)
    first = origins[0]
    assert first.origin == "2019-03-13"
    assert first.train == ["2019-03-01T00", "2019-03-08T23"]
    assert first.validation == ["2019-03-09T00", "2019-03-12T23"]
    assert first.test == ["2019-03-13T00", "2019-03-16T23"]
    assert origins[2].train == ["2019-03-01T00", "2019-03-16T23"]
    assert origins[2].test == ["2019-03-21T00", "2019-03-24T23"]
    for o in origins:  # contiguous, ordered, no hour shared between the three periods
        hour = np.timedelta64(1, "h")
        assert np.datetime64(o.train[1]) + hour == np.datetime64(o.validation[0])
        assert np.datetime64(o.validation[1]) + hour == np.datetime64(o.test[0])
        assert set(o.as_dict()) == {"origin", "train", "validation", "test"}


@pytest.mark.parametrize(
    ("starts", "test_days", "val_days", "message"),
    [
        (["2019-03-13", "2019-03-15"], 4, 4, "apart"),  # overlapping test blocks
        (["2019-03-17", "2019-03-13"], 4, 4, "ascending"),
        (["2019-03-04"], 4, 4, "training days"),  # validation block reaches before the data
        (["2019-03-13T06"], 4, 4, "whole day"),
        (["13 March"], 4, 4, "date"),
        (["2019-03-13"], 0, 4, ">= 1"),
        ([], 4, 4, "at least one"),
    ],
)
def test_rolling_origins_errors(starts, test_days, val_days, message):
    with pytest.raises(ConfigError, match=message):
        rolling_origins("2019-03-01", starts, test_days, val_days)


# ---- spread calibration -----------------------------------------------------------------------
def test_spread_skill_ratio_matches_brute_force(rng):
    ens, truth = rng.standard_normal((5, 3, 4, 6)), rng.standard_normal((3, 4, 6))
    m = ens.shape[0]
    var = np.mean(
        [np.var(ens[:, i, j, k], ddof=1) for i in range(3) for j in range(4) for k in range(6)]
    )
    rmse = np.sqrt(np.mean((ens.mean(0) - truth) ** 2))
    assert spread_skill_ratio(ens, truth) == pytest.approx(np.sqrt((m + 1) / m * var) / rmse)


def test_calibration_fitted_on_validation_gives_ratio_one_and_keeps_the_mean(rng):
    truth = rng.standard_normal((40, 8, 8))
    ens = truth + rng.standard_normal((1, 40, 8, 8)) + 0.6 * rng.standard_normal((6, 40, 8, 8))
    cal = SpreadCalibration.fit(ens, truth)  # an under-dispersed ensemble: alpha > 1
    assert cal.alpha > 1
    out = cal.apply(ens.astype(np.float32))
    assert out.dtype == np.float32 and out.shape == ens.shape
    assert spread_skill_ratio(out, truth) == pytest.approx(1.0, rel=1e-4)
    np.testing.assert_allclose(out.mean(0), ens.mean(0), atol=1e-5)
    # applied unchanged to new times: the factor, not a refit
    new = rng.standard_normal((6, 10, 8, 8))
    mean = new.mean(0)
    np.testing.assert_allclose(cal.apply(new), mean + cal.alpha * (new - mean))


def test_calibration_limits_and_errors(rng):
    truth = rng.standard_normal((4, 5))
    ens = np.repeat(truth[None] + 1.0, 3, axis=0)  # no spread at all: alpha clipped at alpha_max
    assert SpreadCalibration.fit(ens, truth, alpha_max=2.0).alpha == 2.0
    wide = truth + 100 * rng.standard_normal((3, 4, 5))
    assert SpreadCalibration.fit(wide, truth).alpha == 0.5
    x = rng.standard_normal((3, 4, 5))
    np.testing.assert_allclose(SpreadCalibration().apply(x), x)  # alpha = 1 is the identity
    with pytest.raises(ConfigError, match="M >= 2"):
        SpreadCalibration.fit(x[:1], truth)
    with pytest.raises(ConfigError, match="found"):
        SpreadCalibration.fit(x, truth[:, :4])
    holed = x.copy()
    holed[1, 2, 3] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        SpreadCalibration.fit(holed, truth)
    with pytest.raises(ConfigError, match="alpha_min"):
        SpreadCalibration.fit(x, truth, alpha_min=1.5)


# ---- the benchmark's machinery ------------------------------------------------------------------
def test_choice_on_validation_keeps_the_lower_calibrated_crps(rng):
    b = bench()
    truth = rng.standard_normal((6, 8, 8))
    good = truth + 0.5 * rng.standard_normal((4, 6, 8, 8))
    bad = good + 1.0  # biased
    choice = b.choose_on_validation({False: bad, True: good}, truth)
    assert choice.center_residuals is True
    assert choice.alpha == choice.record["center_residuals=True"]["alpha"]
    assert set(choice.record["center_residuals=False"]) == {
        "alpha",
        "crps_fair_calibrated",
        "crps_fair_raw",
        "spread_skill_raw",
    }


def test_deterministic_scores_and_median_over_blocks(rng):
    b = bench()
    truth = rng.standard_normal((2, 4, 8))
    s = b.deterministic_scores(truth + 0.1, truth)
    assert s["crps_fair"] == s["mae"] == pytest.approx(0.1) and s["spread_skill"] == 0.0
    blocks = []
    for k in (1.0, 3.0, 2.0):
        one = {key: k for key in b.SCORE_KEYS} | {"power_ratio_smallest": [k, 10 * k]}
        blocks.append({"test_scores": {m: dict(one) for m in b.METHODS}})
    med = b.median_over_blocks(blocks)
    assert set(med) == set(b.METHODS)
    assert med["diffusion_latent"]["crps_fair"] == 2.0
    assert med["bilinear"]["power_ratio_smallest"] == [2.0, 20.0]


def test_blocks_of_one_config_merge_and_another_config_replaces_them():
    b = bench()
    cfg = {"origins": ["a", "b"]}
    earlier = {"resolved_config": cfg, "blocks": [{"origin": "b", "v": 1}, {"origin": "a", "v": 1}]}
    merged = b._merged(earlier, [{"origin": "a", "v": 2}], cfg)
    assert merged == [{"origin": "a", "v": 2}, {"origin": "b", "v": 1}]
    assert b._merged(earlier, [{"origin": "a", "v": 2}], {"origins": ["a"]}) == [
        {"origin": "a", "v": 2}
    ]
    assert b._merged(None, [{"origin": "a"}], cfg) == [{"origin": "a"}]


# ---- the committed recipe configs ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("recipe", "config"),
    [
        ("train_autoencoder", "era5_uk_vae"),
        ("train_regression", "era5_uk_regression_pixel"),
        ("train_regression", "era5_uk_regression_latent"),
        ("train_ldm", "era5_uk_ldm_pixel"),
        ("train_ldm", "era5_uk_ldm_latent"),
    ],
)
def test_recipes_accept_the_benchmark_configs(recipe, config, capsys):
    from kmscale_testdata import ERA5_UK_SPLITS

    assert _recipe(recipe).main(["--config", str(CONFIGS / f"{config}.yaml"), "--dry-run"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    train = ERA5_UK_SPLITS["train"]
    assert cfg["data"]["train_period"] == [f"{train[0]}T00", f"{train[1]}T23"]
    if recipe == "train_autoencoder":
        assert cfg["model"]["latent_channels"] == 8
        return
    val = ERA5_UK_SPLITS["val"]
    assert cfg["data"]["val_period"] == [f"{val[0]}T00", f"{val[1]}T23"]
    assert (
        cfg["unet"]["block_out_channels"] == [32, 64, 64] and cfg["unet"]["norm_num_groups"] == 16
    )
    assert cfg["train"]["lr"] == 1e-3 and cfg["train"]["ema_decay"] == 0.99
    if config == "era5_uk_ldm_latent":
        assert cfg["decoder_refinement"]["total_samples"] == 128_000


@pytest.mark.parametrize("name", ["era5_uk_rolling", "era5_uk_rolling_quick"])
def test_rolling_configs_load_and_name_the_stage_configs(name):
    from kmscale.config import load_config

    b = bench()
    rc = load_config(b.RollingConfig, CONFIGS / f"{name}.yaml")
    origins = rolling_origins(rc.first_day, rc.origins, rc.test_days, rc.val_days)
    assert len(origins) >= 3
    for stage in b.StageConfigs.__dataclass_fields__:
        extra = [f"out_dir=/tmp/x/{stage}"]
        cfg = b.stage_config(stage, rc.configs, getattr(rc.overrides, stage), extra)
        assert cfg.out_dir == f"/tmp/x/{stage}"
    assert rc.budget == ("reduced" if name.endswith("quick") else "full")


def test_written_data_is_what_the_recipes_read(real_data, tmp_path):
    from kmscale.diffusion.train import DataSettings, TrainingData

    bench().write_data(tmp_path)
    data = TrainingData.open(
        DataSettings(
            targets=str(tmp_path / "targets.zarr"),
            predictors=str(tmp_path / "predictors.zarr"),
            static=str(tmp_path / "static.zarr"),
        )
    )
    assert data.targets["t2m"].shape == (576, 32, 48)
    assert data.predictors["t2m"].shape == (576, 8, 12)
    assert set(data.static.data_vars) == {"orography", "land_sea_mask"}


# ---- one tiny origin end to end ----------------------------------------------------------------
TINY_UNET = {"block_out_channels": [8, 16], "norm_num_groups": 4, "layers_per_block": 1}
TINY_TRAIN = {
    "global_batch_size": 4,
    "checkpoint_every_samples": 8,
    "log_every_samples": 8,
    "mixed_precision": "no",
    "lr": 1e-3,
}


def _stage_yamls(tmp: Path) -> dict[str, str]:
    stages = {
        "vae": {
            "model": {"block_out_channels": [8, 8], "latent_channels": 2, "norm_num_groups": 4},
            "stage1": {"patch": [8, 8], "total_samples": 8},
            "stage2": {"patch": [16, 24], "total_samples": 8},
            "train": TINY_TRAIN,
        },
        "regression": {"unet": TINY_UNET, "train": {**TINY_TRAIN, "total_samples": 8}},
        "diffusion": {
            "unet": TINY_UNET,
            "train": {**TINY_TRAIN, "total_samples": 8},
            "validation": {"members": 2, "steps": 2, "max_times": 2},
        },
    }
    paths = {}
    for name in (
        "vae",
        "regression_pixel",
        "regression_latent",
        "diffusion_pixel",
        "diffusion_latent",
    ):
        paths[name] = str(tmp / f"{name}.yaml")
        Path(paths[name]).write_text(yaml.safe_dump(stages[name.split("_")[0]]))
    return paths


@pytest.mark.slow
def test_one_origin_end_to_end_on_synthetic_data(tmp_path):
    from _downscaling_data import synthetic

    from kmscale.diffusion.train import TrainingData

    b = bench()
    targets, coarse, static = synthetic(n=72)
    rc = b.RollingConfig(
        first_day="2019-03-01",
        origins=["2019-03-03"],
        test_days=1,
        val_days=1,
        eval_every_hours=6,
        members=2,
        steps=2,
        configs=b.StageConfigs(**_stage_yamls(tmp_path)),
    )
    origin = rolling_origins(rc.first_day, rc.origins, rc.test_days, rc.val_days)[0]
    block = b.run_origin(rc, origin, TrainingData(targets, coarse, static), tmp_path / "run")
    assert block["test"] == ["2019-03-03T00", "2019-03-03T23"]
    assert block["scored_times"] == {"validation": 4, "test": 4}
    for method in b.METHODS:
        assert set(b.SCORE_KEYS) <= set(block["test_scores"][method])
    for name in ("diffusion_pixel", "diffusion_latent"):
        choice = block["choices"][name]
        spread = block["diagnosis"][f"{name}_residual_spread"]
        assert spread["alpha"] == choice["spread_alpha"]
        # the calibration multiplies the test spread by alpha and leaves the mean alone
        assert spread["spread_skill_calibrated_test"] == pytest.approx(
            choice["spread_alpha"] * spread["spread_skill_raw_test"], rel=1e-4
        )
    assert {"autoencoder_rmse", "regression_latent_rmse_vs_bilinear"} <= set(block["diagnosis"])
    assert (
        len(list((tmp_path / "run").glob("*_test.zarr"))) == 4
    )  # each test block sampled once per bundle
    med = b.median_over_blocks([block])
    assert (
        med["diffusion_latent"]["crps_fair"]
        == block["test_scores"]["diffusion_latent"]["crps_fair"]
    )
