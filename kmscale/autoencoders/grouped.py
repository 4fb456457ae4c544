"""Several autoencoders, one per variable group, seen downstream as one.

The published HRCLDAS recipe trains one model per variable group (temperature, wind,
precipitation): each has its own latent channels and downsampling. The latent store,
the regression U-Net, the diffusion model and the sampler see one latent, the groups'
latents concatenated along channels; decoding splits it again and decodes per group::

    x (B, C, H, W) ──split by group──► x_g (B, C_g, H, W)
        │ part_g.encode (own input and latent statistics)
        ▼
    z_g (B, c_g, H/f_g, W/f_g) ──fold k_g = F / f_g──► (B, c_g k_g², H/F, W/F)
        │ concatenate the groups in order
        ▼
    z (B, Σ_g c_g k_g², H/F, W/F),   F = max_g f_g (the coarsest group's), or a set multiple

A group with a finer latent grid than the coarsest is folded into channels
(space-to-depth, ``einops.rearrange``): every latent value is kept, and the common
grid is the one the U-Nets run on. Decoding unfolds and calls each part's decoder.
With ``fold_basis="haar"`` (the default) each k x k block is stored in the orthonormal
2-D Haar basis instead of as its k² values: one channel holds the block mean (times k),
the others its differences at each scale. The transform is orthonormal, so squared errors
are the same in either basis, but per-channel statistics now separate the smooth part from
the pixel-scale detail: the diffusion model's per-channel residual scale makes its noise in
the detail channels as small as the residual's detail, where with raw sub-pixels every
sub-pixel gets the full residual scale independently (members with a pixel-scale
checkerboard).

On disk::

    autoencoder/
      config.json        variables (the bundle's order), the groups, the common factor F
      0_t2m/             each part's own save_pretrained directory (loadable alone)
      1_u10_v10/
      2_tp/

A group list that does not cover the variables, or in which a variable appears in two
groups, is refused (at construction and at load) with the variables named.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from einops import rearrange

from kmscale.autoencoders.base import Autoencoder
from kmscale.autoencoders.registration import register
from kmscale.autoencoders.registry import load_autoencoder
from kmscale.errors import CheckpointError, ConfigError, SchemaError

FOLD_BASES = ("haar", "pixels")


def haar_matrix(k: int) -> torch.Tensor:
    """The orthonormal k x k Haar matrix (k a power of two); row 0 is the mean row."""
    if k < 1 or k & (k - 1):
        raise ConfigError(f"haar fold: expected a power-of-two fold, found {k}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < k:
        n = h.shape[0]
        h = (
            torch.cat(
                [
                    torch.kron(h, torch.tensor([[1.0, 1.0]], dtype=torch.float64)),
                    torch.kron(
                        torch.eye(n, dtype=torch.float64),
                        torch.tensor([[1.0, -1.0]], dtype=torch.float64),
                    ),
                ]
            )
            / 2**0.5
        )
    return h


def check_groups(variables: Sequence[str], groups: Sequence[Sequence[str]]) -> None:
    """Raise SchemaError unless ``groups`` partition ``variables`` (each in exactly one group)."""
    seen: dict[str, int] = {}
    twice = []
    for i, group in enumerate(groups):
        if not group:
            raise SchemaError(f"autoencoder groups {[list(g) for g in groups]}: group {i} is empty")
        for v in group:
            if v in seen:
                twice.append(v)
            seen[v] = i
    missing = [v for v in variables if v not in seen]
    extra = [v for v in seen if v not in variables]
    problems = []
    if twice:
        problems.append(f"variables {sorted(set(twice))} are in more than one group")
    if missing:
        problems.append(f"variables {missing} are in no group")
    if extra:
        problems.append(f"variables {extra} are not among the bundle's variables {list(variables)}")
    if problems:
        raise SchemaError(
            f"autoencoder groups {[list(g) for g in groups]}: expected each of {list(variables)} "
            f"in exactly one group, found: {'; '.join(problems)}"
        )


def group_dir(index: int, variables: Sequence[str]) -> str:
    """The sub-directory of group ``index``, e.g. ``1_u10_v10``."""
    return f"{index}_{'_'.join(variables)}"


@register("grouped")
class GroupedAutoencoder(Autoencoder):
    """One autoencoder per variable group behind the :class:`Autoencoder` contract.

    Args:
        parts: the trained autoencoders, one per group, in latent-channel order.
        variables: the physical variables in channel order (default: the parts'
            variables in order); every variable in exactly one part.
        downsample_factor: F of the common latent grid, a multiple of every part's
            factor (default: the coarsest part's). A larger F folds every group, e.g.
            pixel-space (identity) groups with F = 2 give 4 channels per variable on a
            grid of half the resolution, which the U-Nets process four times faster.

    Example::

        ae = GroupedAutoencoder([vae_t2m, vae_wind, vae_tp], ["t2m", "u10", "v10", "tp"])
        z = ae.encode(x)       # x (B, 4, H, W) physical -> (B, Σ c_g k_g², H/F, W/F)
        x_hat = ae.decode(z)   # per group, back in the order of ``variables``
    """

    def __init__(
        self,
        parts: Sequence[Autoencoder],
        variables: Sequence[str] | None = None,
        downsample_factor: int | None = None,
        fold_basis: str = "haar",
    ):
        super().__init__()
        parts = list(parts)
        if fold_basis not in FOLD_BASES:
            raise ConfigError(
                f"grouped autoencoder: expected fold_basis in {FOLD_BASES}, found {fold_basis!r}"
            )
        if not parts:
            raise ConfigError("grouped autoencoder: expected at least one part, found none")
        groups = [list(p.variables) for p in parts]
        variables = list(variables) if variables is not None else [v for g in groups for v in g]
        check_groups(variables, groups)
        dims = {p.spatial_dims for p in parts}
        if dims != {2}:
            raise ConfigError(
                f"grouped autoencoder: expected parts on (H, W) grids, found spatial dims {dims}"
            )
        factor = int(downsample_factor or max(p.downsample_factor for p in parts))
        bad = [g for g, p in zip(groups, parts, strict=True) if factor % p.downsample_factor]
        if bad:
            raise ConfigError(
                "grouped autoencoder: expected part downsample factors dividing the common factor "
                f"{factor}, found groups {bad} with factors {[p.downsample_factor for p in parts]}"
            )
        self.parts = torch.nn.ModuleList(parts)
        stats = {v: s for p in parts for v, s in (p.config.input_stats or {}).items()}
        self.register_to_config(
            variables=variables,
            groups=groups,
            downsample_factor=factor,
            fold_basis=fold_basis,
            input_stats=stats or None,
            latent_mean=None,
            latent_std=None,
        )
        self._factor = factor
        self._index = [[variables.index(v) for v in g] for g in groups]
        self._basis = {
            k: haar_matrix(k).float()
            for k in {factor // p.downsample_factor for p in parts}
            if fold_basis == "haar" and k > 1
        }

    # ---- layout ----------------------------------------------------------------------
    @property
    def groups(self) -> list[list[str]]:
        return [list(g) for g in self.config.groups]

    @property
    def downsample_factor(self) -> int:
        return self._factor

    def fold(self, index: int) -> int:
        """k_g: latent pixels of group ``index`` per common latent pixel, along each axis."""
        return self._factor // self.parts[index].downsample_factor

    def group_channels(self) -> list[int]:
        """Channels of each group in the concatenated latent: c_g k_g²."""
        return [p.latent_channels * self.fold(i) ** 2 for i, p in enumerate(self.parts)]

    def group_slices(self) -> list[slice]:
        """Channel range of each group in the concatenated latent."""
        out, start = [], 0
        for c in self.group_channels():
            out.append(slice(start, start + c))
            start += c
        return out

    @property
    def latent_channels(self) -> int:
        return sum(self.group_channels())

    def layout(self) -> list[dict]:
        """Per group: variables, autoencoder class, factor, channels (what stores record)."""
        return [
            {
                "variables": g,
                "autoencoder": type(p).registry_name,
                "downsample_factor": p.downsample_factor,
                "latent_channels": p.latent_channels,
                "channels": [s.start, s.stop],
            }
            for g, p, s in zip(self.groups, self.parts, self.group_slices(), strict=True)
        ]

    # ---- the contract ------------------------------------------------------------------
    def _encode_normalized(self, x: torch.Tensor) -> torch.Tensor:
        zs = []
        for i, part in enumerate(self.parts):
            z = part._encode_normalized(x[:, self._index[i]])
            stats = part._latent_stats(z)
            if stats is not None:
                z = (z - stats[0]) / stats[1]
            k = self.fold(i)
            blocks = rearrange(z, "b c (h k1) (w k2) -> b c k1 k2 h w", k1=k, k2=k)
            if k in self._basis:  # B' = H B Hᵀ per block
                hk = self._basis[k].to(z)
                blocks = torch.einsum("ij,bcjlhw,ml->bcimhw", hk, blocks, hk)
            zs.append(rearrange(blocks, "b c k1 k2 h w -> b (c k1 k2) h w"))
        return torch.cat(zs, dim=1)

    def _decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        out = z.new_empty(
            (
                z.shape[0],
                len(self.variables),
                z.shape[-2] * self._factor,
                z.shape[-1] * self._factor,
            )
        )
        for i, (part, sl) in enumerate(zip(self.parts, self.group_slices(), strict=True)):
            out[:, self._index[i]] = part.decode_standardized(self.unfold(z[:, sl], i))
        return out

    def unfold(self, z_group: torch.Tensor, index: int) -> torch.Tensor:
        """Group ``index``'s channels (B, c_g k_g², h, w) -> its latent (B, c_g, h k_g, w k_g)."""
        k = self.fold(index)
        blocks = rearrange(z_group, "b (c k1 k2) h w -> b c k1 k2 h w", k1=k, k2=k)
        if k in self._basis:  # B = Hᵀ B' H
            hk = self._basis[k].to(z_group)
            blocks = torch.einsum("ji,bcjlhw,lm->bcimhw", hk, blocks, hk)
        return rearrange(blocks, "b c k1 k2 h w -> b c (h k1) (w k2)")

    def decode_group(self, z: torch.Tensor, index: int) -> torch.Tensor:
        """Physical fields (B, C_g, H, W) of group ``index`` alone from the concatenated latent."""
        part = self.parts[index]
        return part.decode(self.unfold(z[:, self.group_slices()[index]], index))

    def decoder_modules(self) -> list[torch.nn.Module]:
        return [m for p in self.parts for m in p.decoder_modules()]

    def train_decoder_only(self) -> None:
        """Freeze every parameter but the parts' decoders (the decoder refinement stage)."""
        self.requires_grad_(False)
        for m in self.decoder_modules():
            m.requires_grad_(True)

    def _fingerprint_config(self) -> dict:
        return {
            "variables": list(self.variables),
            "groups": self.groups,
            "downsample_factor": self._factor,
            "parts": [p._fingerprint_config() for p in self.parts],
            "fold_basis": self.config.fold_basis,
        }

    # ---- save / load ---------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, **kwargs) -> None:
        """Write config.json (variables, groups) and each part's own directory."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for i, (g, part) in enumerate(zip(self.groups, self.parts, strict=True)):
            part.save_pretrained(path / group_dir(i, g), **kwargs)
        self.save_config(path)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> GroupedAutoencoder:
        """Load a directory written by :meth:`save_pretrained`.

        Raises:
            SchemaError: the groups do not cover the variables, overlap, or a part holds
                other variables than its group.
            CheckpointError: a part is missing or corrupt.
        """
        path = Path(path)
        cfg = json.loads((path / cls.config_name).read_text())
        try:
            variables, groups = list(cfg["variables"]), [list(g) for g in cfg["groups"]]
            fold_basis = cfg["fold_basis"]
        except (KeyError, TypeError) as err:
            raise CheckpointError(
                f"{path}: expected 'variables', 'groups' and 'fold_basis' in config.json, "
                f"found {sorted(cfg)} ({err!r})"
            ) from err
        check_groups(variables, groups)
        parts = []
        for i, g in enumerate(groups):
            part = load_autoencoder(path / group_dir(i, g))
            if list(part.variables) != g:
                raise SchemaError(
                    f"{path / group_dir(i, g)}: expected an autoencoder for variables {g}, "
                    f"found one for {list(part.variables)}"
                )
            parts.append(part)
        return cls(parts, variables, cfg.get("downsample_factor"), fold_basis)
