"""The regression U-Net: the deterministic latent mean ẑ = F(cond, c_noise=0, emb).

A :class:`~kmscale.diffusion.networks.ConditionalUNet` whose input is the
conditioning stack alone (predictors on the latent grid, static channels) and whose
output is the normalized latent of the target; it is trained with the mean squared
error, so it estimates E[z | cond]. With ``linear_skip`` (the default of the regression
recipe) the backbone is ``U(cond) + A cond + b``: A and b are first fitted by least squares
(:func:`fit_linear_skip`), so that training starts from a linear downscaling of the
interpolated predictors and static fields, and the U-Net learns what that misses. The
residual diffusion model then generates ``r = residual.make(z, ẑ)`` (CorrDiff's
regression + residual split, in the autoencoder's latent space as in LDM_res).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from kmscale.diffusion.networks import ConditionalUNet, CrossAttentionUNet, UNetSettings
from kmscale.errors import CheckpointError, ConfigError, MissingValueError


def build_unet(
    in_channels: int,
    out_channels: int,
    embedding_dim: int | None,
    settings: UNetSettings,
    cross_attention_cond: int | None = None,
    linear_skip: bool = False,
    skip_terrain_channel: int | None = None,
    skip_dynamic_channels: Sequence[int] | None = None,
):
    """A backbone with channel counts from the data and width from ``settings``.

    By default a :class:`ConditionalUNet` (conditioning by concatenation). With
    ``cross_attention_cond`` (the number of trailing conditioning channels) a
    :class:`~kmscale.diffusion.networks.CrossAttentionUNet`, which also attends to the
    conditioning as tokens (diffusers ``UNet2DConditionModel``); it keeps the
    concatenation path, and ``attention_levels``/``mid_attention``/``attention_head_dim``
    do not apply to it. ``linear_skip``, ``skip_terrain_channel``,
    ``skip_dynamic_channels``: see :class:`ConditionalUNet` (concatenation backbone only).
    """
    if cross_attention_cond and linear_skip:
        raise ConfigError("build_unet: linear_skip applies to the ConditionalUNet backbone only")
    if cross_attention_cond:
        return CrossAttentionUNet(
            in_channels=int(in_channels),
            out_channels=int(out_channels),
            cond_channels=int(cross_attention_cond),
            block_out_channels=list(settings.block_out_channels),
            layers_per_block=settings.layers_per_block,
            norm_num_groups=settings.norm_num_groups,
            embedding_dim=embedding_dim,
            dropout=settings.dropout,
        )
    return ConditionalUNet(
        in_channels=int(in_channels),
        out_channels=int(out_channels),
        embedding_dim=embedding_dim,
        linear_skip=linear_skip,
        skip_terrain_channel=skip_terrain_channel,
        skip_dynamic_channels=None
        if skip_dynamic_channels is None
        else list(skip_dynamic_channels),
        **asdict(settings),
    )


def load_backbone(path: str | Path) -> ConditionalUNet | CrossAttentionUNet:
    """``from_pretrained`` of whichever backbone class saved ``path`` (its config names it)."""
    name = json.loads((Path(path) / "config.json").read_text()).get("_class_name")
    cls = {"ConditionalUNet": ConditionalUNet, "CrossAttentionUNet": CrossAttentionUNet}.get(name)
    if cls is None:
        raise CheckpointError(
            f"{path}: expected a ConditionalUNet or CrossAttentionUNet, found {name!r}"
        )
    return cls.from_pretrained(path)


@dataclass
class SkipGroup:
    """Output channels of one latent group and the inputs its skip may use instead of all.

    ``own`` lists the conditioning channels of the group's own variables (their
    interpolated predictors) and the static channels: a per-variable linear downscaling.
    """

    out: slice
    own: list[int]


def _moments(x: torch.Tensor, y: torch.Tensor, block: torch.Tensor) -> list[tuple]:
    """Per block of rows: (XₐᵀXₐ, XₐᵀY, ΣY² per output, row count), Xₐ = [X, 1].

    Every fit and every held-out error below is computed from these sums, so the rows are
    read once however many folds and input sets are compared."""
    xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    out = []
    for k in torch.unique(block):
        rows = block == k
        xk, yk = xa[rows], y[rows]
        out.append((xk.T @ xk, xk.T @ yk, (yk**2).sum(0), int(rows.sum())))
    return out


def _ridge(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """W of ``(XᵀX + ridge · diag(XᵀX)) W = Xᵀ Y``: the penalty of each input scaled by its
    own second moment, so that it does not depend on the inputs' units (terrain products
    are much smaller than the standardized predictors)."""
    diag = gram.diagonal()
    # an input that is zero everywhere (a constant static field once standardized) gets a
    # tiny penalty instead of none, so that the system stays solvable and its weight 0
    floor = 1e-9 * float(diag.mean())
    return torch.linalg.solve(gram + torch.diag(ridge * diag.clamp(min=floor)), cross)


def _blocked_cv(moments: list[tuple], cols: list[int], out: slice, ridge: float) -> float:
    """Mean squared error over the blocks, each predicted by a fit on the others:
    ``Σ (Xₐw - y)² = wᵀGw - 2 wᵀc + Σy²`` from each held block's moments."""
    idx = [*cols, moments[0][0].shape[0] - 1]  # the chosen inputs and the bias column
    sub = [(g[idx][:, idx], c[idx, out], s2[out], n) for g, c, s2, n in moments]
    err = []
    for k, (g_k, c_k, s_k, n_k) in enumerate(sub):
        w = _ridge(
            sum(m[0] for j, m in enumerate(sub) if j != k),
            sum(m[1] for j, m in enumerate(sub) if j != k),
            ridge,
        )
        sse = (w * (g_k @ w)).sum(0) - 2 * (w * c_k).sum(0) + s_k
        err.append(float(sse.sum()) / (n_k * w.shape[1]))
    return float(np.mean(err))


@torch.no_grad()
def fit_linear_skip(
    model: ConditionalUNet,
    dataset: Dataset,
    groups: Sequence[SkipGroup] | None = None,
    ridge: float = 1e-4,
    max_rows: int = 2_000_000,
    folds: int = 3,
) -> dict:
    """Fit the backbone's per-pixel skip ``z ≈ A f(cond) + b`` by ridge least squares.

    ``f`` is the skip's features (:meth:`~kmscale.diffusion.networks.LinearSkip.features`:
    the conditioning, and with a terrain-modulated skip its predictors times the terrain
    modulators). Solves ``(XᵀX + ridge · diag(XᵀX)) W = Xᵀ Y`` in float64 over the pixels
    of up to ``max_rows`` rows (examples taken evenly over ``dataset``, so a long period
    costs no more); pixels with a NaN are left out. For each of
    ``groups``, the inputs are either every conditioning channel or the group's own
    (:class:`SkipGroup`), whichever has the lower error over ``folds`` contiguous blocks of
    the examples (time order: blocked cross-validation, so that relations between
    predictors that hold for one weather regime only are not chosen; ties go to the group's
    own inputs); the other entries of A stay zero.

    Args:
        model: a :class:`ConditionalUNet` built with ``linear_skip=True``.
        dataset: examples with "cond" (C_c, h, w) and "z" (C_z, h, w), in time order.
        groups: output channel groups; None: one group, every input.

    Returns:
        {"rows", "mse", "groups": [{"channels", "inputs": "all"|"own", "cv_mse"}]}.
    """
    if not isinstance(model, ConditionalUNet) or model.skip is None:
        raise ConfigError("fit_linear_skip: expected a ConditionalUNet with linear_skip=True")
    first = dataset[0]
    per_example = first["cond"].shape[-2] * first["cond"].shape[-1]
    n = len(dataset)
    pick = np.unique(np.linspace(0, n - 1, min(n, max(1, max_rows // per_example))).astype(int))
    xs, ys = [], []
    for i in pick:
        item = dataset[int(i)]
        feats = model.skip.features(item["cond"].double()[None])[0]
        xs.append(feats.flatten(1).T)  # (h w, features)
        ys.append(item["z"].double().flatten(1).T)  # (h w, C_z)
    x, y = torch.cat(xs), torch.cat(ys)
    block = torch.repeat_interleave(
        torch.as_tensor(np.arange(len(pick)) * min(folds, len(pick)) // len(pick)), per_example
    )
    ok = torch.isfinite(x).all(1) & torch.isfinite(y).all(1)
    if not ok.any():
        raise MissingValueError(
            "fit_linear_skip: expected finite conditioning and latents, found none"
        )
    x, y, block = x[ok], y[ok], block[ok]
    moments = _moments(x, y, block)
    gram, cross = sum(m[0] for m in moments), sum(m[1] for m in moments)
    every = list(range(x.shape[1]))
    groups = groups or [SkipGroup(slice(0, y.shape[1]), list(range(first["cond"].shape[0])))]
    weight = torch.zeros(y.shape[1], x.shape[1], dtype=x.dtype)
    bias = torch.zeros(y.shape[1], dtype=x.dtype)
    chosen = []
    for g in groups:
        options = {"all": every}
        own = sorted(set(model.skip.expand(g.own)))
        if own != every:
            options["own"] = own
        cv = {}
        if len(options) > 1 and len(moments) > 1:
            cv = {k: _blocked_cv(moments, cols, g.out, ridge) for k, cols in options.items()}
        # the smaller input set unless every input is clearly better (parsimony on ties:
        # within 1 %, or 1e-6 of the variance for fits that are exact either way)
        tie = 0.01 * cv["all"] + 1e-6 * float(y[:, g.out].var()) if cv else 0.0
        name = "own" if cv and cv["own"] - cv["all"] <= tie else "all"
        idx = [*options[name], x.shape[1]]  # with the bias column
        w = _ridge(gram[idx][:, idx], cross[idx, g.out], ridge)
        weight[g.out, options[name]] = w[:-1].T
        bias[g.out] = w[-1]
        chosen.append({"channels": [g.out.start, g.out.stop], "inputs": name, "cv_mse": cv})
    skip = model.skip
    skip.weight.copy_(weight.reshape(skip.weight.shape).to(skip.weight.dtype))
    skip.bias.copy_(bias.to(skip.bias.dtype))
    mse = float(((x @ weight.T + bias - y) ** 2).mean())
    return {"rows": int(ok.sum()), "mse": mse, "groups": chosen}


def regression_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean squared error of ẑ against the target latents z (normalized latent units²)."""
    # Called through forward() (c_noise = 0, as ``regress`` does) so that a
    # DistributedDataParallel wrapper sees the call and synchronizes gradients.
    z_hat = model(batch["cond"], 0.0, batch["emb"])
    return torch.nn.functional.mse_loss(z_hat.float(), batch["z"].float())


@torch.no_grad()
def predict_mean(
    model: ConditionalUNet, dataset: Dataset, batch_size: int = 32, progress: bool = True
) -> torch.Tensor:
    """ẑ for every example of ``dataset`` (dicts with "cond" and "emb").

    Returns:
        (N, C_z, h, w) float32 on the CPU.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="regression", disable=not progress, leave=False):
        # c_noise = 0: the regression use of a backbone (as ConditionalUNet.regress).
        out.append(model(batch["cond"].to(device), 0.0, batch["emb"].to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(out)
