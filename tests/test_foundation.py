"""Contracts of the shared foundation: config loading, atomic stores, CLI entry."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kmscale.config import load_config, parse_overrides
from kmscale.data.store import StoreWriter, open_store, partial_path
from kmscale.errors import ConfigError, StoreError


@dataclass
class _Optim:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])


@dataclass
class _Cfg:
    out_dir: str = "runs/x"
    steps: int = 10
    ema: bool = True
    optim: _Optim = field(default_factory=_Optim)


def test_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 20\noptim:\n  lr: 0.001\n")
    cfg = load_config(_Cfg, path, ["optim.lr=3e-4", "ema=false", "optim.betas=[0.5,0.6]"])
    assert cfg.steps == 20 and cfg.optim.lr == pytest.approx(3e-4) and cfg.ema is False
    assert cfg.optim.betas == [0.5, 0.6]


@pytest.mark.parametrize(
    "override", ["optim.lrr=1", "steps=abc", "steps=1.5", "ema=maybe", "nosuch=1", "bare"]
)
def test_config_rejects_bad_keys_and_values(override):
    with pytest.raises(ConfigError):
        load_config(_Cfg, None, [override])


def test_parse_overrides_nested():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def _dataset(n=10):
    t = pd.date_range("2020-01-01", periods=n, freq="h")
    rng = np.random.default_rng(0)
    return xr.Dataset(
        {"t2m": (("time", "y", "x"), rng.random((n, 8, 6), dtype=np.float32), {"units": "K"})},
        coords={
            "time": t,
            "y": np.arange(8.0),
            "x": np.arange(6.0),
            "lat": (("y", "x"), rng.random((8, 6))),
        },
    )


def test_store_resume_and_atomic_finalize(tmp_path):
    full = _dataset()
    path = tmp_path / "s.zarr"
    writer = StoreWriter(path, full.chunk({"time": 3}), kind="targets", fingerprint="a", chunk=3)
    writer.write(0, full.isel(time=writer.chunk_slice(0)))
    # interrupted: nothing at the final name, the partial store refuses to open
    assert not path.exists() and partial_path(path).exists()
    with pytest.raises(StoreError, match="resume"):
        open_store(path)
    with pytest.raises(StoreError, match="another run"):
        StoreWriter(path, full, kind="targets", fingerprint="other", chunk=3)
    resumed = StoreWriter(path, full, kind="targets", fingerprint="a", chunk=3)
    assert resumed.pending() == [1, 2, 3]
    with pytest.raises(StoreError, match="missing"):
        resumed.finalize()
    for i in resumed.pending():
        resumed.write(i, full.isel(time=resumed.chunk_slice(i)))
    resumed.finalize()
    ds = open_store(path, kind="targets", fingerprint="a")
    xr.testing.assert_allclose(ds.load(), full)
    with pytest.raises(StoreError, match="expected a 'latents' store"):
        open_store(path, kind="latents")
    with pytest.raises(StoreError, match="expected no store"):
        StoreWriter(path, full, kind="targets", fingerprint="a", chunk=3)


def test_cli_help_runs(capsys):
    from kmscale.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "kmscale" in capsys.readouterr().out
