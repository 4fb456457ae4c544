"""Training and scoring of pseudo-precipitation encoders (``recipes/train_pseudo_precip.py``).

    fields (time, y, x): tp in mm h-1 + companions   ──►  input statistics (training hours)
    Trainer: whole fields, loss = L_tp + w_c L_c + w_q L_q  ──►  out_dir/{best,final}
    best EMA weights + PP normalization (training hours)    ──►  out_dir/autoencoder

Losses on the pixels of a batch (Radhakrishnan et al. 2024, sect. 2: reconstruction plus a
quantile loss that makes PP normally distributed):

    L_tp = mean_p [ wet_p (t̂_p - t_p)^2 + dry_p max(t̂_p - t_0 + m, 0)^2 ]   standardized tp;
           t_0 = the standardized value of 0 mm h-1 (censored: any t̂ <= t_0 decodes to 0
           exactly); the margin m keeps dry pixels clear of t_0, where a loss without it
           parks them a hair above, i.e. at tiny positive amounts instead of zero
    L_c  = mean_p,c (ĉ_p - c_p)^2                                         companions
    L_q  = mean_k (Q̂_PP(tau_k) - Phi^-1(tau_k))^2,  tau_k = (k - 1/2) / K,  k = 1..K

Q̂ is the empirical quantile of the batch's PP values (``torch.quantile``, differentiable
through the sort). Any autoencoder class trains here, selected by its registry or
entry-point name (``model.name``), if its ``forward(x)`` returns ``(pp, x_hat_std, x_std)``,
it takes ``hidden_width``/``hidden_layers``/``precip_variable`` and it has
``precip_index`` and ``dry_level()`` (as :class:`~kmscale.autoencoders.pseudo_precip.
PseudoPrecipMLP` and the example plugin in examples/kmscale-pseudoprecip do); a class with
a ``pp_range`` config entry also gets the training PP range (``set_pp_range``).

Scores (:func:`pp_scores`, physical units, wet = tp >= ``wet_threshold``):
wet_fraction_error = |f_wet(decoded) - f_wet(tp)| / f_wet(tp); rmse_rel = RMSE(decoded tp,
tp) / std(tp); marginal = mean, std and 1/99 % quantiles of the normalized PP, with their
distances to N(0, 1)'s (0, 1, -2.326, 2.326).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from kmscale.autoencoders.train import select_period, stack_fields
from kmscale.data import moisture
from kmscale.data import transforms as vt
from kmscale.errors import ConfigError, MissingValueError, SchemaError
from kmscale.training import Trainer, TrainingSettings

log = logging.getLogger(__name__)

DERIVED = ("vimd", "rain_edge_distance")  # companions computed here when the file lacks them
Z99 = 2.3263478740408408  # Phi^-1(0.99)


@dataclass
class PPDataConfig:
    # NetCDF/zarr with tp (and u, v, q, sp for vimd, or the companions); environment
    # variables in it are expanded (e.g. ${KMSCALE_DATA}/era5_.../file.nc)
    source: str = ""
    companions: list[str] = field(default_factory=lambda: ["vimd"])  # fields blended with tp
    tp_units: str = ""  # units of tp in the file; empty: its 'units' attribute
    tp_period: str = "1h"  # accumulation period of tp when its units are an amount (m, mm)
    train_period: list[str] = field(default_factory=list)  # [first, last] inclusive
    val_period: list[str] = field(default_factory=list)  # held-out [first, last]; empty: none
    wet_threshold: float = 0.01  # mm h-1: wet for the scores and rain_edge_distance
    tp_scale: float = 0.1  # mm h-1: tp enters as log1p(tp / tp_scale) (resolves drizzle)
    edge_max_km: float = 300.0  # rain_edge_distance is clipped to +- this
    # > 0: rain_edge_distance in space-time over consecutive hours, an hour counting as this
    # many km (moisture.rain_edge_distance): dry hours are no longer one constant
    edge_km_per_hour: float = 0.0


@dataclass
class PPModelConfig:
    name: str = "pseudo_precip"  # registry or entry-point name of the encoder class
    hidden_width: int = 32
    hidden_layers: int = 2
    # The decoder's domain (set_pp_range, for classes that have one): the training PP range
    # widened by this many PP standard deviations each side. Held-out hours rain harder than
    # the fit hours (2020-01-01: 1.2 vs 0.5 mm h-1 at most, PP 0.6 std beyond the range),
    # while diffusion members far beyond it would decode to unbounded rain.
    range_margin: float = 1.0


@dataclass
class PPLossConfig:
    n_quantiles: int = 64  # K levels tau_k = (k - 1/2) / K of the quantile loss
    quantile_weight: float = 1.0  # w_q
    companion_weight: float = 0.1  # w_c
    dry_margin: float = 0.1  # m: dry pixels are pushed this far (standardized) below t_0


@dataclass
class PseudoPrecipConfig:
    out_dir: str = "runs/pseudo_precip"
    data: PPDataConfig = field(default_factory=PPDataConfig)
    model: PPModelConfig = field(default_factory=PPModelConfig)
    loss: PPLossConfig = field(default_factory=PPLossConfig)
    train: TrainingSettings = field(
        default_factory=lambda: TrainingSettings(
            total_samples=4_000,
            global_batch_size=8,
            lr=3e-3,
            ema_decay=0.99,
            checkpoint_every_samples=2_000,
            log_every_samples=400,
        )
    )


# ---- data ---------------------------------------------------------------------------
def _open(path: str) -> xr.Dataset:
    if not path:
        raise ConfigError("data.source: expected a path to a NetCDF or zarr dataset, found nothing")
    p = Path(os.path.expandvars(path)).expanduser()
    if not p.exists():
        raise ConfigError(f"data.source: expected a dataset at {p}, found nothing")
    engine = "zarr" if p.suffix == ".zarr" or p.is_dir() else "h5netcdf"
    return xr.open_dataset(p, engine=engine)


def companion_fields(
    ds: xr.Dataset,
    tp: xr.DataArray,
    names: list[str],
    d: PPDataConfig,
) -> dict[str, xr.DataArray]:
    """The companions, each on tp's grid and times: read from ``ds`` or derived."""
    ydim, xdim = tp.dims[-2:]
    out = {}
    for name in names:
        if name in ds and name != "tp":
            comp = ds[name]
        elif name == "vimd":
            comp = moisture.vimd(ds)
        elif name == "rain_edge_distance":
            spacing = moisture.grid_spacing_km(ds[ydim].values, ds[xdim].values)
            if d.edge_km_per_hour > 0:
                _check_hourly(tp)
            comp = tp.copy(
                data=moisture.rain_edge_distance(
                    tp.values,
                    threshold=d.wet_threshold,
                    spacing_km=spacing,
                    max_km=d.edge_max_km,
                    km_per_step=d.edge_km_per_hour,
                )
            )
        else:
            raise SchemaError(
                f"companion {name!r}: expected a variable of {d.source} or one of {DERIVED}, "
                f"found variables {sorted(ds.data_vars)}"
            )
        comp = comp.transpose(*tp.dims)
        moisture.check_companion(tp, comp, name=name)
        if bool(comp.isnull().any()):
            raise MissingValueError(f"companion {name!r}: expected finite values, found NaN")
        out[name] = comp.astype(np.float32)
    return out


def _check_hourly(tp: xr.DataArray) -> None:
    """A space-time distance needs tp (time, y, x) at consecutive hours."""
    if tp.ndim != 3 or tp.dims[0] != "time":
        raise SchemaError(f"data.edge_km_per_hour: expected tp (time, y, x), found dims {tp.dims}")
    steps = np.diff(tp["time"].values).astype("timedelta64[s]").astype(np.int64)
    if len(steps) and not (steps == 3600).all():
        raise SchemaError(
            f"data.edge_km_per_hour: expected tp at consecutive hours, found steps of "
            f"{sorted(set((steps / 3600).tolist()))} h"
        )


def load_fields(d: PPDataConfig) -> xr.Dataset:
    """Dataset (time, y, x) of ``tp`` (mm h-1) and the companions."""
    ds = _open(d.source)
    if "valid_time" in ds.dims and "time" not in ds.dims:
        ds = ds.rename(valid_time="time")
    if "tp" not in ds:
        raise SchemaError(
            f"{d.source}: expected a precipitation variable 'tp', found {sorted(ds.data_vars)}"
        )
    units = d.tp_units or ds["tp"].attrs.get("units")
    if not units:
        raise ConfigError(
            f"{d.source}: expected units of tp (attribute or data.tp_units), found none"
        )
    tp = moisture.tp_to_mm_per_hour(ds["tp"].load().astype(np.float64), units, d.tp_period)
    moisture.check_tp(tp, where=f"{d.source}: tp")
    tp = tp.astype(np.float32).assign_attrs(units="mm h-1")
    comps = companion_fields(ds, tp, list(d.companions), d)
    return xr.Dataset({"tp": tp, **comps})


def add_companions(
    ds: xr.Dataset,
    companions: Sequence[str] = ("rain_edge_distance",),
    data: PPDataConfig | None = None,
) -> xr.Dataset:
    """``ds`` (time, lat, lon) with ``tp`` in mm h-1, plus the companion fields a PP encoder
    reads (``vimd`` / ``rain_edge_distance`` computed, others taken from ``ds``): the
    targets to give ``encode``, :func:`train_pseudo_precip` (``fields``) or the regression
    and LDM recipes (in memory, ``TrainingData``) when the autoencoder is a PP encoder.
    ``data`` supplies ``wet_threshold`` and ``edge_max_km`` (defaults: PPDataConfig's)."""
    if "tp" not in ds:
        raise SchemaError(f"add_companions: expected a variable 'tp', found {sorted(ds.data_vars)}")
    moisture.check_tp(ds["tp"].values, where="add_companions: tp")
    comps = companion_fields(ds, ds["tp"], list(companions), data or PPDataConfig())
    return ds.assign(comps)


def fit_input_stats(
    x: torch.Tensor, variables: list[str], precip_variable: str, tp_scale: float
) -> dict:
    """Transform (log1p(tp / tp_scale) for precipitation) + mean/std per variable over x
    (T, C, H, W)."""
    stats = {}
    for c, name in enumerate(variables):
        transform = "log1p" if name == precip_variable else "none"
        scale = tp_scale if name == precip_variable else 1.0
        y = vt.forward(x[:, c].double(), transform, scale)
        y = y[torch.isfinite(y)]
        std = float(y.std())
        stats[name] = {
            "mean": float(y.mean()),
            "std": std if std > 0 else 1.0,
            "transform": transform,
            "scale": scale,
        }
    return stats


# ---- loss and scores ----------------------------------------------------------------
def normal_quantiles(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau_k, Phi^-1(tau_k)) for tau_k = (k - 1/2) / n, k = 1..n."""
    if n < 2:
        raise ConfigError(f"loss.n_quantiles: expected at least 2, found {n}")
    tau = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return tau.float(), torch.special.ndtri(tau).float()


class PPLoss:
    """L_tp + w_c L_c + w_q L_q (module docstring) on physical fields (B, C, H, W)."""

    def __init__(self, cfg: PPLossConfig, precip_index: int, dry_level: float):
        self.cfg = cfg
        self.i = precip_index
        self.dry_level = dry_level
        self.tau, self.target = normal_quantiles(cfg.n_quantiles)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        pp, y, xs = model(x)
        valid = torch.isfinite(x).all(dim=1)  # (B, H, W)
        tp_hat, tp = y[:, self.i][valid], xs[:, self.i][valid]
        dry = x[:, self.i][valid] == 0
        l_tp = torch.where(
            dry, torch.relu(tp_hat - self.dry_level + self.cfg.dry_margin) ** 2, (tp_hat - tp) ** 2
        ).mean()
        comp = [c for c in range(x.shape[1]) if c != self.i]
        l_c = ((y[:, comp] - xs[:, comp]) ** 2).movedim(1, -1)[valid].mean()
        q = torch.quantile(pp[:, 0][valid], self.tau.to(pp.device))
        l_q = ((q - self.target.to(pp.device)) ** 2).mean()
        return l_tp + self.cfg.companion_weight * l_c + self.cfg.quantile_weight * l_q


def marginal(pp: torch.Tensor, weights: torch.Tensor | None = None) -> dict:
    """Mean, std, 1/99 % quantiles of PP values (N,) (weighted when ``weights`` (N,) are
    given) and the largest distance of the four from N(0, 1)'s (0, 1, -2.326, 2.326)."""
    pp = pp.double()
    w = torch.ones_like(pp) if weights is None else weights.double()
    w = w / w.sum()
    mean = float((w * pp).sum())
    std = float(torch.sqrt((w * (pp - mean) ** 2).sum() * len(pp) / (len(pp) - 1)))
    order = torch.argsort(pp)
    cdf = torch.cumsum(w[order], 0) - 0.5 * w[order]  # the weighted Hazen plotting positions
    q01, q99 = (float(np.interp(p, cdf.numpy(), pp[order].numpy())) for p in (0.01, 0.99))
    return {
        "mean": mean,
        "std": std,
        "q01": q01,
        "q99": q99,
        "max_abs_error": max(abs(mean), abs(std - 1), abs(q01 + Z99), abs(q99 - Z99)),
    }


def rain_matched_marginal(pp: torch.Tensor, tp: torch.Tensor, rain_fraction: float) -> dict:
    """PP's marginal with raining (tp > 0) and dry pixels reweighted to the fraction
    ``rain_fraction`` of raining pixels (the training hours'): the encoder's own part of
    the marginal error on held-out hours, without the part that their different amount of
    rain forces on any encoder whose decoder has a fixed dry threshold (see
    :func:`rain_shift_bound`)."""
    rain = tp > 0
    f = float(rain.double().mean())
    if not 0 < f < 1:
        return marginal(pp)
    w = torch.where(rain, rain_fraction / f, (1 - rain_fraction) / (1 - f))
    return marginal(pp, w)


def rain_shift_bound(rain_fraction_fit: float, rain_fraction_eval: float) -> float:
    """The quantile error forced by a change of the raining fraction r (tp > 0): a decoder
    returns exact zeros below a fixed PP_0, so an encoder whose PP is N(0, 1) on the fit
    hours has PP_0 = Phi^-1(1 - r_fit), and on hours with r_eval its quantile at level
    1 - r_eval is PP_0 instead of Phi^-1(1 - r_eval): |Phi^-1(1 - r_fit) - Phi^-1(1 - r_eval)|."""
    q = torch.special.ndtri(torch.tensor([1 - rain_fraction_fit, 1 - rain_fraction_eval]))
    return float((q[0] - q[1]).abs())


@torch.no_grad()
def pp_scores(
    model, x: torch.Tensor, wet_threshold: float, batch: int = 64, rain_fraction: float = 0.0
) -> dict:
    """Scores of ``model`` on physical fields x (T, C, H, W) (module docstring); with the
    raining fraction of the fit hours ``rain_fraction`` > 0 also ``marginal_rain_matched``
    (:func:`rain_matched_marginal`) and ``rain_shift_bound`` (:func:`rain_shift_bound`)."""
    model.eval()
    z = torch.cat([model.encode(x[s : s + batch]) for s in range(0, len(x), batch)])
    tp_hat = torch.cat(
        [model.decode(z[s : s + batch])[:, model.precip_index] for s in range(0, len(z), batch)]
    )
    tp = x[:, model.precip_index]
    ok = torch.isfinite(tp)
    t, th, pp = tp[ok].double(), tp_hat[ok].double(), z[:, 0][ok].double()
    f_true = float((t >= wet_threshold).double().mean())
    f_hat = float((th >= wet_threshold).double().mean())
    wfe = abs(f_hat - f_true) / f_true if f_true > 0 else float("nan")
    rmse_rel = float(torch.sqrt(((th - t) ** 2).mean()) / t.std())
    out = {
        "wet_fraction_error": wfe,
        "rmse_rel": rmse_rel,
        "marginal": marginal(pp),
        "wet_fraction": f_true,
        "rain_fraction": float((t > 0).double().mean()),
        "exact_zero_fraction": float((th == 0).double().mean()),
    }
    if rain_fraction > 0:
        out["marginal_rain_matched"] = rain_matched_marginal(pp, t, rain_fraction)
        out["rain_shift_bound"] = rain_shift_bound(rain_fraction, out["rain_fraction"])
    return out


def selection_score(scores: dict) -> float:
    """What validation minimizes: the mean of each target's error over its bound (wet
    fraction 2 %, RMSE 5 % of std, marginal 0.05). A mean, not the worst: on held-out
    hours wetter or drier than the training hours the marginal is off by the change in
    weather whatever the network, and must not hide the reconstruction's progress."""
    return (
        scores["wet_fraction_error"] / 0.02
        + scores["rmse_rel"] / 0.05
        + scores["marginal"]["max_abs_error"] / 0.05
    ) / 3


# ---- the recipe ---------------------------------------------------------------------
class _Fields(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def build_model(cfg: PPModelConfig, variables: list[str], stats: dict):
    """The encoder class named ``cfg.name`` (registry or plugin), with input statistics."""
    from kmscale.autoencoders import get_autoencoder_class

    try:
        cls = get_autoencoder_class(cfg.name)
    except KeyError as err:
        raise ConfigError(f"model.name: {err.args[0]}") from err
    model = cls(
        variables=variables,
        hidden_width=cfg.hidden_width,
        hidden_layers=cfg.hidden_layers,
        precip_variable="tp",
    )
    if model.latent_channels != 1 or model.downsample_factor != 1:
        raise ConfigError(
            f"model.name={cfg.name!r}: expected a per-pixel encoder (1 latent channel, downsample "
            f"factor 1), found {model.latent_channels} channels at {model.downsample_factor}x"
        )
    model.set_input_stats(stats)
    return model


def _atomic_save(model, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def train_pseudo_precip(cfg: PseudoPrecipConfig, fields: xr.Dataset | None = None):
    """Train the encoder of ``cfg``; returns (model with PP normalization, validation scores
    or None). Writes ``out_dir/autoencoder`` (``load_autoencoder``) and ``scores.json``."""
    import json

    from kmscale.autoencoders import load_autoencoder
    from kmscale.config import to_dict

    fields = load_fields(cfg.data) if fields is None else fields
    variables = ["tp", *cfg.data.companions]
    train_f = select_period(fields, cfg.data.train_period, "data.train_period")
    x_tr = torch.from_numpy(stack_fields(train_f, variables))
    x_va = (
        torch.from_numpy(
            stack_fields(select_period(fields, cfg.data.val_period, "data.val_period"), variables)
        )
        if cfg.data.val_period
        else None
    )
    torch.manual_seed(cfg.train.seed)
    model = build_model(
        cfg.model, variables, fit_input_stats(x_tr, variables, "tp", cfg.data.tp_scale)
    )
    loss = PPLoss(cfg.loss, model.precip_index, model.dry_level())
    score_on = x_va if x_va is not None else None
    validate = None
    if score_on is not None:

        def validate(m):
            s = pp_scores(m, score_on, cfg.data.wet_threshold)
            return {
                "score": selection_score(s),
                "wet_fraction_error": s["wet_fraction_error"],
                "rmse_rel": s["rmse_rel"],
                "marginal_error": s["marginal"]["max_abs_error"],
            }

    out = Path(cfg.out_dir)
    trainer = Trainer(
        model,
        loss,
        _Fields(x_tr),
        out,
        cfg.train,
        validate_fn=validate,
        best_metric="score" if validate else None,
        run_config=to_dict(cfg),
    )
    trainer.fit()
    best = out / ("best" if validate is not None and (out / "best").is_dir() else "final")
    model = load_autoencoder(best, expect=cfg.model.name).eval()
    with torch.no_grad():
        model.register_to_config(latent_mean=None, latent_std=None)
        pp = torch.cat([model.encode(x_tr[s : s + 64]) for s in range(0, len(x_tr), 64)])
        pp = pp[torch.isfinite(pp)]
    model.set_latent_stats([float(pp.mean())], [float(pp.std())])
    if "pp_range" in model.config:  # the decoder's domain, for classes that clamp to it
        margin = cfg.model.range_margin * float(pp.std())
        model.set_pp_range(float(pp.min()) - margin, float(pp.max()) + margin)
    _atomic_save(model, out / "autoencoder")
    scores = pp_scores(model, x_va, cfg.data.wet_threshold) if x_va is not None else None
    if scores is not None:
        (out / "scores.json").write_text(json.dumps(scores, indent=2))
        log.info("validation: %s", scores)
    if scores is not None and not math.isfinite(scores["rmse_rel"]):
        raise FloatingPointError(
            f"pseudo_precip validation: expected finite scores, found {scores}"
        )
    return model, scores
