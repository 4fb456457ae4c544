"""The regression U-Net: the deterministic latent mean ẑ = F(cond, c_noise=0, emb).

A :class:`~kmscale.diffusion.networks.ConditionalUNet` whose input is the
conditioning stack alone (predictors on the latent grid, static channels) and whose
output is the normalized latent of the target; it is trained with the mean squared
error, so it estimates E[z | cond]. The residual diffusion model then generates
``r = residual.make(z, ẑ)`` (CorrDiff's regression + residual split, in the
autoencoder's latent space as in LDM_res).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from kmscale.diffusion.networks import ConditionalUNet, CrossAttentionUNet, UNetSettings
from kmscale.errors import CheckpointError


def build_unet(
    in_channels: int,
    out_channels: int,
    embedding_dim: int | None,
    settings: UNetSettings,
    cross_attention_cond: int | None = None,
):
    """A backbone with channel counts from the data and width from ``settings``.

    By default a :class:`ConditionalUNet` (conditioning by concatenation). With
    ``cross_attention_cond`` (the number of trailing conditioning channels) a
    :class:`~kmscale.diffusion.networks.CrossAttentionUNet`, which also attends to the
    conditioning as tokens (diffusers ``UNet2DConditionModel``); it keeps the
    concatenation path, and ``attention_levels``/``mid_attention``/``attention_head_dim``
    do not apply to it.
    """
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
