"""The regression U-Net: the deterministic latent mean ẑ = F(cond, c_noise=0, emb).

A :class:`~kmscale.diffusion.networks.ConditionalUNet` whose input is the
conditioning stack alone (predictors on the latent grid, static channels) and whose
output is the normalized latent of the target; it is trained with the mean squared
error, so it estimates E[z | cond]. With ``linear_skip`` (the default of the regression
recipe) the backbone is ``U(cond) + A cond + b``: A and b are first fitted by least squares
(:func:`fit_linear_skip`), so that training starts from a linear downscaling of the
interpolated predictors and static fields, and the U-Net learns what that misses. The residual diffusion model then generates
``r = residual.make(z, ẑ)`` (CorrDiff's regression + residual split, in the
autoencoder's latent space as in LDM_res).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
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
):
    """A backbone with channel counts from the data and width from ``settings``.

    By default a :class:`ConditionalUNet` (conditioning by concatenation). With
    ``cross_attention_cond`` (the number of trailing conditioning channels) a
    :class:`~kmscale.diffusion.networks.CrossAttentionUNet`, which also attends to the
    conditioning as tokens (diffusers ``UNet2DConditionModel``); it keeps the
    concatenation path, and ``attention_levels``/``mid_attention``/``attention_head_dim``
    do not apply to it. ``linear_skip``: see :class:`ConditionalUNet` (concatenation
    backbone only).
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


@torch.no_grad()
def fit_linear_skip(
    model: ConditionalUNet, dataset: Dataset, ridge: float = 1e-4, max_rows: int = 2_000_000
) -> dict[str, float]:
    """Fit the backbone's per-pixel affine skip ``z ≈ A cond + b`` by ridge least squares.

    Solves ``(XᵀX + λ I) W = Xᵀ Y`` in float64 over the pixels of up to ``max_rows`` rows
    (examples taken evenly over ``dataset``, so a long period costs no more), with
    ``λ = ridge · mean(diag(XᵀX))``; pixels with a NaN are left out.

    Args:
        model: a :class:`ConditionalUNet` built with ``linear_skip=True``.
        dataset: examples with "cond" (C_c, h, w) and "z" (C_z, h, w).

    Returns:
        the fit's mean squared error (normalized latent units²) and its row count.
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
        xs.append(item["cond"].double().flatten(1).T)  # (h w, C_c)
        ys.append(item["z"].double().flatten(1).T)  # (h w, C_z)
    x, y = torch.cat(xs), torch.cat(ys)
    ok = torch.isfinite(x).all(1) & torch.isfinite(y).all(1)
    if not ok.any():
        raise MissingValueError(
            "fit_linear_skip: expected finite conditioning and latents, found none"
        )
    x = torch.cat([x[ok], torch.ones(int(ok.sum()), 1, dtype=x.dtype)], dim=1)
    y = y[ok]
    gram = x.T @ x
    lam = ridge * gram.diagonal().mean()
    w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), x.T @ y)
    skip = model.skip
    skip.weight.copy_(w[:-1].T.reshape(skip.weight.shape).to(skip.weight.dtype))
    skip.bias.copy_(w[-1].to(skip.bias.dtype))
    return {"mse": float(((x @ w - y) ** 2).mean()), "rows": int(ok.sum())}


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
