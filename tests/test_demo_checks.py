"""The demo's skill checks: figures against brute force, pass/fail logic, the table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from kmscale.diffusion.demo_checks import DemoCriteria, demo_checks, format_checks

T, M, H, W = 6, 8, 8, 10


def _ds(data: dict[str, np.ndarray], member: bool) -> xr.Dataset:
    dims = ("time", "member", "lat", "lon") if member else ("time", "lat", "lon")
    coords = {
        "time": pd.date_range("2023-07-15", periods=T, freq="4h"),
        "lat": np.linspace(29.0, 29.07, H),
        "lon": np.linspace(100.0, 100.09, W),
    }
    if member:
        coords["member"] = np.arange(next(iter(data.values())).shape[1])
    units = {"t2m": "K", "tp": "mm h-1"}
    return xr.Dataset({k: (dims, v, {"units": units[k]}) for k, v in data.items()}, coords=coords)


def calibrated(seed: int = 0, spread: float = 1.0, rain_scale: float = 1.0):
    """Truth and members drawn from the same distribution around a regression mean."""
    rng = np.random.default_rng(seed)
    mean = 280 + rng.standard_normal((T, H, W))
    truth = mean + rng.standard_normal((T, H, W))
    members = mean[:, None] + spread * rng.standard_normal((T, M, H, W))
    rain_truth = np.maximum(rng.standard_normal((T, H, W)), 0) * 2
    rain_members = np.maximum(rng.standard_normal((T, M, H, W)), 0) * 2 * rain_scale
    rain_reg = np.full((T, H, W), 0.3)
    ens = _ds({"t2m": members, "tp": rain_members}, member=True)
    reg = _ds({"t2m": mean[:, None], "tp": rain_reg[:, None]}, member=True)  # a one-member store
    bil = _ds({"t2m": mean + 1.5, "tp": np.full((T, H, W), 1.5)}, member=False)
    return ens, reg, bil, _ds({"t2m": truth, "tp": rain_truth}, member=False)


def test_figures_match_brute_force():
    ens, reg, bil, truth = calibrated()
    out = demo_checks(ens, reg, bil, truth, ["t2m", "tp"])
    x, y = ens["t2m"].values, truth["t2m"].values
    w = np.cos(np.deg2rad(truth["lat"].values))[None, :, None] * np.ones((T, H, W))
    # fair CRPS: mean |x_i - y| - sum_{i,j} |x_i - x_j| / (2 M (M - 1))
    skill = np.abs(x - y[:, None]).mean(1)
    pair = np.abs(x[:, :, None] - x[:, None, :]).sum((1, 2)) / (2 * M * (M - 1))
    crps = np.sum((skill - pair) * w) / w.sum()
    v = out["t2m"]["values"]
    assert v["crps_fair"] == pytest.approx(crps, abs=1e-4)
    assert v["regression_mae"] == pytest.approx(
        np.sum(np.abs(reg["t2m"].values[:, 0] - y) * w) / w.sum(), abs=1e-4
    )
    assert v["bilinear_mae"] == pytest.approx(
        np.sum(np.abs(bil["t2m"].values - y) * w) / w.sum(), abs=1e-4
    )
    var = np.sum(x.var(1, ddof=1) * w) / w.sum()
    mse = np.sum((x.mean(1) - y) ** 2 * w) / w.sum()
    assert v["spread_skill"] == pytest.approx(np.sqrt((M + 1) / M * var / mse), abs=1e-4)
    tp = out["tp"]["values"]
    wet = np.mean(ens["tp"].values > 0.1) / np.mean(truth["tp"].values > 0.1)
    assert tp["wet_fraction_ratio"] == pytest.approx(wet, abs=1e-4)
    q = np.quantile(ens["tp"].values, 0.99) / np.quantile(truth["tp"].values, 0.99)
    assert tp["q99_ratio"] == pytest.approx(q, abs=1e-4)
    assert "wet_fraction_ratio" not in out["t2m"]["values"]


def test_calibrated_ensemble_passes():
    ens, reg, bil, truth = calibrated()
    out = demo_checks(ens, reg, bil, truth, ["t2m"])
    assert out["all_passed"] and out["failed"] == []
    assert [c["check"] for c in out["t2m"]["checks"]] == [
        "crps_fair < regression_mae",
        "regression_mae < bilinear_mae",
        "spread_skill in range",
    ]


def test_failures_are_named_with_value_and_limit():
    # members 4x too tight, rain four times too heavy
    ens, reg, bil, truth = calibrated(spread=0.25, rain_scale=4.0)
    out = demo_checks(ens, reg, bil, truth, ["t2m", "tp"], DemoCriteria())
    assert not out["all_passed"]
    failed = " | ".join(out["failed"])
    assert "t2m: spread_skill in range" in failed and "tp: q99_ratio in range" in failed
    ssr = out["t2m"]["values"]["spread_skill"]
    assert ssr < 0.7 and f"value {ssr:g}" in failed
    table = format_checks(out)
    assert "FAIL" in table and "demo check(s) failed" in table
    assert table.splitlines()[0].split() == ["variable", "check", "value", "limit", "result"]


def test_criteria_are_the_limits():
    ens, reg, bil, truth = calibrated(spread=0.25)
    loose = DemoCriteria(spread_skill=(0.1, 2.0))
    assert demo_checks(ens, reg, bil, truth, ["t2m"], loose)["t2m"]["checks"][2]["passed"]
    assert "all demo checks passed" in format_checks(
        demo_checks(calibrated()[0], *calibrated()[1:], ["t2m"])
    )
