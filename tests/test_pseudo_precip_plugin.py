"""The example plugin package (examples/kmscale-pseudoprecip) installed as a real
distribution: found through its entry point, passes the conformance kit, and runs the
whole pipeline (pseudo-precipitation recipe -> regression -> LDM -> ensemble) selected by
its name in a config.

The package is built and installed with pip into a temporary directory (a copy of the
example, so no build files land in the repository) that is put on ``sys.path``:
importlib.metadata finds its entry points exactly as in a virtual environment.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml

from kmscale.autoencoders import available, get_autoencoder_class, load_autoencoder
from kmscale.autoencoders.registry import _REGISTRY
from kmscale.autoencoders.testing import ConformanceCase, check_autoencoder

ROOT = Path(__file__).resolve().parent.parent
NAME = "pseudo-precip-conv"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plugin")
    src = tmp / "src"
    shutil.copytree(ROOT / "examples" / "kmscale-pseudoprecip", src)
    site = tmp / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        importlib.invalidate_caches()
        yield NAME
    _REGISTRY.pop(NAME, None)
    sys.modules.pop("kmscale_pseudoprecip", None)
    sys.modules.pop("kmscale_pseudoprecip.encoder", None)


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plugin_is_discovered_and_conforms(plugin, tmp_path):
    assert plugin in available()
    cls = get_autoencoder_class(plugin)
    assert cls.__module__ == "kmscale_pseudoprecip.encoder"

    def factory():
        torch.manual_seed(0)
        model = cls(variables=["tp", "q850"], hidden_width=8)
        model.set_input_stats(
            {
                "tp": {"mean": 0.3, "std": 0.5, "transform": "log1p", "scale": 1.0},
                "q850": {"mean": 0.008, "std": 0.002, "transform": "none", "scale": 1.0},
            }
        )
        return model

    assert not check_autoencoder(ConformanceCase(plugin, factory), tmp_path).failures


def _write_data(folder: Path, n: int = 48, size: int = 16) -> dict[str, Path]:
    """tp (mm h-1) driven by a smooth humidity field q850, plus 4 x 4 block means."""
    rng = np.random.default_rng(0)
    from scipy import ndimage

    c = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), (0, 2, 2), mode="wrap")
    c = c / c.std()
    tp = (4.0 * np.maximum(c - 0.3, 0.0) ** 1.5).astype(np.float32)
    q850 = (0.008 + 0.002 * c).astype(np.float32)
    coords = {
        "time": pd.date_range("2024-07-01", periods=n, freq="h"),
        "lat": 17 + 0.25 * np.arange(size),
        "lon": 78 + 0.25 * np.arange(size),
    }
    dims = ("time", "lat", "lon")
    targets = xr.Dataset(
        {"tp": (dims, tp, {"units": "mm h-1"}), "q850": (dims, q850, {"units": "kg kg-1"})},
        coords=coords,
    )
    coarse = targets.coarsen(lat=4, lon=4).mean()
    coarse = coarse.assign_coords(lead_time=("time", np.zeros(n), {"units": "hours"}))
    for v in ("tp", "q850"):
        coarse[v].attrs = dict(targets[v].attrs)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"targets": folder / "targets.nc", "predictors": folder / "predictors.nc"}
    targets.to_netcdf(paths["targets"], engine="netcdf4")
    coarse.to_netcdf(paths["predictors"], engine="netcdf4")
    return paths


@pytest.mark.slow
def test_whole_pipeline_with_the_plugin_selected_by_name(plugin, tmp_path):
    from kmscale.data.readers import open_dataset
    from kmscale.data.store import open_store
    from kmscale.diffusion.bundle import ModelBundle
    from kmscale.diffusion.pipeline import DownscalingPipeline, SamplerSettings

    files = _write_data(tmp_path / "data")
    pp_cfg = tmp_path / "pp.yaml"
    pp_cfg.write_text(
        yaml.safe_dump(
            {
                "out_dir": str(tmp_path / "pp"),
                "model": {"name": plugin, "hidden_width": 8},
                "data": {
                    "source": str(files["targets"]),
                    "companions": ["q850"],
                    "train_period": ["2024-07-01T00", "2024-07-02T11"],
                    "val_period": ["2024-07-02T12", "2024-07-02T23"],
                },
                "train": {
                    "total_samples": 128,
                    "global_batch_size": 8,
                    "validate_every_samples": 64,
                },
            }
        )
    )
    assert _recipe("train_pseudo_precip").main(["--config", str(pp_cfg)]) == 0
    ae_dir = tmp_path / "pp" / "autoencoder"
    assert type(load_autoencoder(ae_dir, expect=plugin)).__name__ == "ConvPseudoPrecip"

    tiny = {
        "unet": {"block_out_channels": [8, 16], "norm_num_groups": 4, "layers_per_block": 1},
        "train": {
            "global_batch_size": 4,
            "total_samples": 8,
            "checkpoint_every_samples": 8,
            "log_every_samples": 8,
            "ema_decay": 0.9,
            "mixed_precision": "no",
        },
    }
    data = {
        "targets": str(files["targets"]),
        "predictors": str(files["predictors"]),
        "train_period": ["2024-07-01T00", "2024-07-02T11"],
        "val_period": ["2024-07-02T12", "2024-07-02T17"],
    }
    reg_cfg = tmp_path / "reg.yaml"
    reg_cfg.write_text(
        yaml.safe_dump(
            {"out_dir": str(tmp_path / "reg"), "autoencoder": str(ae_dir), "data": data, **tiny}
        )
    )
    assert _recipe("train_regression").main(["--config", str(reg_cfg)]) == 0
    ldm_cfg = tmp_path / "ldm.yaml"
    ldm_cfg.write_text(
        yaml.safe_dump(
            {
                "out_dir": str(tmp_path / "ldm"),
                "regression_bundle": str(tmp_path / "reg" / "bundle"),
                "data": data,
                "validation": {"members": 2, "steps": 2, "max_times": 2},
                **tiny,
            }
        )
    )
    assert _recipe("train_ldm").main(["--config", str(ldm_cfg)]) == 0

    bundle = ModelBundle.load(tmp_path / "ldm" / "bundle")
    assert type(bundle.autoencoder).__name__ == "ConvPseudoPrecip"
    coarse = open_dataset(files["predictors"]).isel(time=slice(40, 42))
    out = DownscalingPipeline(bundle).run(
        coarse, tmp_path / "ens.zarr", SamplerSettings(members=2, steps=2), progress=False
    )
    tp = open_store(out, kind="ensemble")["tp"].values
    assert tp.shape == (2, 2, 16, 16) and np.isfinite(tp).all() and (tp >= 0).all()
