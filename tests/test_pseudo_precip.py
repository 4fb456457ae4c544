"""Pseudo-precipitation: the encoder's contract, its training recipe, the companions
(VIMD against a brute-force integral, the rain-edge distance), units and bad input."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from kmscale.autoencoders import get_autoencoder_class, load_autoencoder
from kmscale.autoencoders.pseudo_precip_train import PPLoss, PPLossConfig, normal_quantiles
from kmscale.data import moisture
from kmscale.errors import (
    AlignmentError,
    ConfigError,
    GridError,
    MissingValueError,
    SchemaError,
    UnitsError,
)

sys.path.insert(0, str(Path(__file__).parent))
from _pseudo_precip_data import synthetic_fields, train_small  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MOISTURE = "era5_moisture_budget_20200101/era5_moisture_budget_w-europe_2020-01-01_hourly.nc"


def _recipe():
    spec = importlib.util.spec_from_file_location("r", ROOT / "recipes" / "train_pseudo_precip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the encoder --------------------------------------------------------------------
def _model(**kw):
    model = get_autoencoder_class("pseudo_precip")(variables=["tp", "cmp"], hidden_width=8, **kw)
    model.set_input_stats(
        {
            "tp": {"mean": 0.5, "std": 0.6, "transform": "log1p", "scale": 0.1},
            "cmp": {"mean": 0.0, "std": 1.0, "transform": "none", "scale": 1.0},
        }
    )
    return model


def test_shapes_and_exact_zeros():
    model = _model()
    x = torch.rand(2, 2, 5, 7)
    z = model.encode(x)
    assert z.shape == (2, 1, 5, 7) and model.downsample_factor == 1
    with torch.no_grad():
        model.decoder[-1].bias.fill_(-50.0)  # every decoded pixel far below the dry level
    tp = model.decode(z)[:, 0]
    assert tp.shape == (2, 5, 7) and bool((tp == 0).all())


def test_per_pixel_network_is_local():
    model = _model()
    x = torch.rand(1, 2, 6, 6)
    z = model.encode(x)
    x2 = x.clone()
    x2[0, :, 0, 0] += 1.0
    changed = (model.encode(x2) != z)[0, 0]
    assert bool(changed[0, 0]) and int(changed.sum()) == 1


def test_bad_configuration_and_input():
    cls = get_autoencoder_class("pseudo_precip")
    with pytest.raises(ConfigError, match="'tp'.*\\['vimd'\\]"):
        cls(variables=["vimd"])
    with pytest.raises(ConfigError, match="companion"):
        cls(variables=["tp"])
    x = torch.rand(1, 2, 4, 4)
    x[0, 0, 1, 1] = -0.5
    with pytest.raises(SchemaError, match="tp >= 0, found 1 negative"):
        _model().encode(x)
    with pytest.raises(SchemaError, match="expected a tensor \\(batch, 2"):
        _model().encode(torch.rand(1, 3, 4, 4))


def test_quantile_loss_is_zero_for_normal_quantiles():
    tau, target = normal_quantiles(8)
    assert torch.allclose(tau, (torch.arange(8) + 0.5) / 8)
    assert float(target[0]) == pytest.approx(-1.5341, abs=1e-4)
    with pytest.raises(ConfigError):
        normal_quantiles(1)


def test_loss_censors_dry_pixels():
    """A dry pixel decoded anywhere below t_0 - m costs nothing; above it, it does."""

    class Fixed(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x):
            return torch.linspace(-2, 2, x[:, :1].numel()).reshape(x[:, :1].shape), self.out, x

    x = torch.zeros(1, 2, 1, 4)  # all dry, companion 0
    cfg = PPLossConfig(n_quantiles=4, quantile_weight=0.0, companion_weight=0.0, dry_margin=0.1)
    low = PPLoss(cfg, 0, dry_level=-1.0)(Fixed(torch.full((1, 2, 1, 4), -1.2)), x)
    high = PPLoss(cfg, 0, dry_level=-1.0)(Fixed(torch.full((1, 2, 1, 4), -0.5)), x)
    assert float(low) == 0.0 and float(high) == pytest.approx(0.6**2)


# ---- training -------------------------------------------------------------------------
def test_training_reaches_the_synthetic_targets(tmp_path):
    model, scores = train_small(tmp_path)
    assert scores["wet_fraction_error"] < 0.05 and scores["rmse_rel"] < 0.25
    assert scores["exact_zero_fraction"] > 0.3  # exact zeros where dry
    assert abs(scores["marginal"]["mean"]) < 0.5 and abs(scores["marginal"]["std"] - 1) < 0.3
    loaded = load_autoencoder(tmp_path / "pp" / "autoencoder", expect="pseudo_precip")
    assert loaded.fingerprint() == model.fingerprint() and loaded.config.latent_std is not None
    assert (
        json.loads((tmp_path / "pp" / "scores.json").read_text())["rmse_rel"] == scores["rmse_rel"]
    )


def test_recipe_dry_run_and_run_from_file(tmp_path, capsys):
    src = tmp_path / "fields.nc"
    synthetic_fields().to_netcdf(src, engine="h5netcdf")
    recipe = _recipe()
    args = [
        "--config",
        str(ROOT / "recipes/configs/pseudo_precip.yaml"),
        f"data.source={src}",
        "data.companions=[cmp]",
        f"out_dir={tmp_path / 'run'}",
        "data.train_period=[2024-01-01T00,2024-01-01T15]",
        "data.val_period=[2024-01-01T16,2024-01-01T23]",
        "train.total_samples=64",
        "model.hidden_width=8",
        "train.validate_every_samples=32",
    ]
    assert recipe.main([*args, "--dry-run"]) == 0
    assert "hidden_width: 8" in capsys.readouterr().out
    assert recipe.main(args) == 0
    assert (tmp_path / "run" / "autoencoder" / "config.json").is_file()
    assert (tmp_path / "run" / "checkpoints").is_dir()
    # Rerunning with a longer schedule resumes from the checkpoint, not from zero.
    assert recipe.main([*args, "train.total_samples=96"]) == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    seen = [json.loads(s)["samples_seen"] for s in lines if '"loss"' in s]
    assert seen == sorted(seen)


def test_recipe_errors(tmp_path):
    recipe = _recipe()
    with pytest.raises(ConfigError, match="data.source"):
        recipe.main([f"out_dir={tmp_path}"])
    src = tmp_path / "f.nc"
    ds = synthetic_fields()
    ds.to_netcdf(src, engine="h5netcdf")
    with pytest.raises(SchemaError, match="companion 'tcw'"):
        recipe.main([f"data.source={src}", "data.companions=[tcw]", f"out_dir={tmp_path / 'a'}"])
    with pytest.raises(ConfigError, match="unknown autoencoder|expected one of"):
        recipe.main(
            [
                f"data.source={src}",
                "data.companions=[cmp]",
                f"out_dir={tmp_path / 'b'}",
                "model.name=no-such-encoder",
            ]
        )


# ---- companions, units, bad input -----------------------------------------------------
def test_column_flux_matches_brute_force():
    rng = np.random.default_rng(0)
    p = np.array([100.0, 300.0, 500.0, 700.0, 850.0, 1000.0]) * 100
    q, u = rng.random((2, 6, 3, 4))
    sp = rng.uniform(60_000, 101_000, (3, 4))
    got = moisture.column_flux(q, u, p, sp)
    for j in range(3):
        for i in range(4):
            # Fine trapezoid on the piecewise-linear profile, held constant below the last level.
            pf = np.linspace(p[0], sp[j, i], 200_001)
            f = np.interp(pf, p, q[:, j, i] * u[:, j, i])
            want = np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(pf)) / moisture.G
            assert got[j, i] == pytest.approx(want, rel=2e-3)


def test_divergence_of_analytic_fields():
    lat = np.linspace(40, 50, 41)
    lon = np.linspace(0, 10, 41)
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    # F = (sin(lambda) , 0): div = cos(lambda) / (a cos phi).
    got = moisture.spherical_divergence(np.sin(lo), np.zeros_like(lo), lat, lon)
    want = np.cos(lo) / (moisture.EARTH_RADIUS_M * np.cos(la))
    assert np.allclose(got[:, 1:-1], want[:, 1:-1], rtol=1e-3)
    # F = (0, 1/cos phi): d(F_phi cos phi)/dphi = 0, so div = 0.
    div = moisture.spherical_divergence(np.zeros_like(la), 1 / np.cos(la), lat, lon)
    assert np.abs(div).max() < 1e-12


def test_rain_edge_distance():
    tp = np.zeros((1, 9, 9))
    tp[0, 3:6, 3:6] = 1.0
    d = moisture.rain_edge_distance(tp, spacing_km=25.0, max_km=60.0)[0]
    assert (d[tp[0] > 0] > 0).all() and (d[tp[0] == 0] < 0).all()
    assert d[4, 4] > d[3, 3] and d[0, 0] == -60.0 and d[4, 2] == pytest.approx(-12.5)
    assert (moisture.rain_edge_distance(np.zeros((2, 3, 3)), max_km=7.0) == -7.0).all()


@pytest.mark.parametrize(
    ("units", "period", "factor"),
    [
        ("m", "1h", 1000.0),
        ("mm", "3h", 1 / 3),
        ("kg m-2", "1d", 1 / 24),
        ("mm/h", None, 1.0),
        ("m s-1", None, 3.6e6),
        ("kg m-2 s-1", None, 3600.0),
        ("mm", "15min", 4.0),
    ],
)
def test_tp_units(units, period, factor):
    assert moisture.tp_to_mm_per_hour(np.array(2.0), units, period) == pytest.approx(2.0 * factor)


def test_tp_units_errors():
    with pytest.raises(UnitsError, match="accumulation period"):
        moisture.tp_to_mm_per_hour(np.array(1.0), "m")
    with pytest.raises(UnitsError, match="found 'K'"):
        moisture.tp_to_mm_per_hour(np.array(1.0), "K")
    with pytest.raises(UnitsError, match="'fortnight'"):
        moisture.tp_to_mm_per_hour(np.array(1.0), "mm", "fortnight")


def test_add_companions_for_a_pp_pipeline():
    from kmscale.autoencoders.pseudo_precip_train import add_companions

    ds = synthetic_fields(n_times=3, shape=(8, 8))[["tp"]]
    out = add_companions(ds)
    assert out["rain_edge_distance"].dims == ds["tp"].dims
    assert ((out["rain_edge_distance"] > 0) == (ds["tp"] > 0.01)).all()
    with pytest.raises(SchemaError, match="companion 'tcw'"):
        add_companions(ds, ["tcw"])


def test_bad_tp_and_companions():
    with pytest.raises(MissingValueError, match="1 NaN"):
        moisture.check_tp(np.array([0.0, np.nan]))
    moisture.check_tp(np.array([0.0, np.nan]), allow_nan=True)
    with pytest.raises(SchemaError, match="negative"):
        moisture.check_tp(np.array([0.0, -1e-3]))
    ds = synthetic_fields(n_times=4, shape=(4, 4))
    with pytest.raises(GridError, match="lat"):
        moisture.check_companion(ds.tp, ds.cmp.assign_coords(lat=ds.lat + 1.0))
    with pytest.raises(AlignmentError, match="time"):
        moisture.check_companion(ds.tp, ds.cmp.assign_coords(time=ds.time + np.timedelta64(1, "h")))
    with pytest.raises(GridError, match="dims/shape"):
        moisture.check_companion(ds.tp, ds.cmp.isel(lat=slice(0, 3)))


def test_vimd_on_real_data(real_data):
    ds = xr.open_dataset(real_data / MOISTURE, engine="h5netcdf")
    v = moisture.vimd(ds)
    assert v.shape == ds.tp.shape and v.attrs["units"] == "kg m-2 s-1"
    assert 1e-5 < float(v.std()) < 1e-3  # about 0.3 mm h-1 of divergence
    tp = moisture.tp_to_mm_per_hour(ds.tp, "m", "1h")
    # Moisture converges (VIMD < 0) where it rains: negative correlation.
    assert np.corrcoef(v.values.ravel(), tp.values.ravel())[0, 1] < -0.05
    with pytest.raises(SchemaError, match="missing \\['q'\\]"):
        moisture.vimd(ds.drop_vars("q"))


# ---- robustness of the decoder, space-time companion, marginal diagnostics ------------
def test_decoder_saturates_outside_the_training_range():
    model = _model()
    model.set_pp_range(-1.5, 2.0)
    inside = torch.tensor([-1.5, 0.3, 2.0]).reshape(1, 1, 1, 3)
    far = torch.tensor([-40.0, 0.3, 40.0]).reshape(1, 1, 1, 3)
    with torch.no_grad():
        assert torch.equal(model.decode(far), model.decode(inside))
    with pytest.raises(ConfigError, match="low < high"):
        model.set_pp_range(1.0, 1.0)


def test_trained_encoder_records_its_pp_range(tmp_path):
    model, _ = train_small(tmp_path)
    fields = synthetic_fields().isel(time=slice(0, 16))  # the fit hours of train_small
    x = torch.from_numpy(np.stack([fields[v].values for v in ("tp", "cmp")], 1))
    with torch.no_grad():
        pp = model._encode_normalized(model.normalize_input(x))
    low, high = model.config.pp_range  # widened by PPModelConfig.range_margin = 1 std
    assert low == pytest.approx(float(pp.min() - pp.std()), abs=0.05)
    assert high == pytest.approx(float(pp.max() + pp.std()), abs=0.05)


def _space_time_brute_force(tp, sampling, max_km):
    """Signed space-time distance by enumerating every pixel pair (pixel centres)."""
    wet = tp > 0
    pts = np.stack(
        np.meshgrid(
            *[np.arange(n) * s for n, s in zip(tp.shape, sampling, strict=True)], indexing="ij"
        ),
        -1,
    )
    out = np.empty(tp.shape)
    half = 0.5 * min(sampling)
    for idx in np.ndindex(tp.shape):
        other = pts[~wet] if wet[idx] else pts[wet]
        dist = np.sqrt(((other - pts[idx]) ** 2).sum(-1)).min()
        out[idx] = dist - half if wet[idx] else half - dist
    return np.clip(out, -max_km, max_km)


def test_space_time_rain_edge_distance_matches_brute_force():
    rng = np.random.default_rng(3)
    tp = np.where(rng.random((4, 5, 6)) > 0.8, 1.0, 0.0)
    tp[1] = 0.0  # a dry hour between rainy ones: no longer the constant -max_km
    sampling = (30.0, 25.0, 20.0)
    d = moisture.rain_edge_distance(tp, spacing_km=sampling[1:], max_km=80.0, km_per_step=30.0)
    np.testing.assert_allclose(d, _space_time_brute_force(tp, sampling, 80.0), rtol=1e-6)
    assert (d[1] > -80.0).any()
    with pytest.raises(SchemaError, match=r"\(time, y, x\)"):
        moisture.rain_edge_distance(tp[0], km_per_step=30.0)


def test_space_time_companion_needs_consecutive_hours():
    from kmscale.autoencoders.pseudo_precip_train import PPDataConfig, add_companions

    ds = synthetic_fields(n_times=4, shape=(6, 6))[["tp"]]
    out = add_companions(ds, data=PPDataConfig(edge_km_per_hour=30.0))
    assert out["rain_edge_distance"].shape == ds["tp"].shape
    with pytest.raises(SchemaError, match="consecutive hours"):
        add_companions(ds.isel(time=[0, 1, 3]), data=PPDataConfig(edge_km_per_hour=30.0))


def test_marginal_diagnostics():
    from kmscale.autoencoders.pseudo_precip_train import (
        marginal,
        rain_matched_marginal,
        rain_shift_bound,
    )

    n = 20_000  # exact normal quantiles, in random order
    pp = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n)
    pp = pp[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    m = marginal(pp)
    assert m["mean"] == pytest.approx(float(pp.mean()))
    assert m["std"] == pytest.approx(float(pp.std()))
    assert m["q99"] == pytest.approx(float(torch.quantile(pp, 0.99)), abs=1e-3)
    assert m["max_abs_error"] < 0.05
    # Doubling the weight of one half equals repeating it.
    w = torch.where(pp > 0, 2.0, 1.0).double()
    rep = torch.cat([pp, pp[pp > 0]])
    assert marginal(pp, w)["mean"] == pytest.approx(float(rep.mean()))
    # Held-out hours with twice the rain: reweighting to the fit's rain fraction undoes it.
    tp = (pp > 1.0).double()
    wetter = torch.cat([pp, pp[pp > 1.0]])
    tp_w = torch.cat([tp, tp[pp > 1.0]])
    fit = float((tp > 0).double().mean())
    assert marginal(wetter)["max_abs_error"] > 0.1
    assert rain_matched_marginal(wetter, tp_w, fit)["max_abs_error"] < 0.05
    assert rain_shift_bound(0.2, 0.2) == 0.0
    assert rain_shift_bound(0.128, 0.265) == pytest.approx(1.136 - 0.628, abs=0.01)
