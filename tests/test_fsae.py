"""Field-space autoencoder (fsae), the face CNN-VAE baseline, and their recipe path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from kmscale.autoencoders import get_autoencoder_class, load_autoencoder
from kmscale.autoencoders.field_attention import (
    FieldSpaceBlock,
    SpherePosition,
    neighbourhoods,
    position_features,
    window_offsets,
)
from kmscale.autoencoders.fsae import residual_features
from kmscale.errors import ConfigError, SchemaError
from kmscale.sphere import HealpixGrid, coarsen, refine, regrid_to_healpix, write_healpix_store

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "train_autoencoder.py"
STATS = {"t2m": {"mean": 280.0, "std": 10.0, "transform": "none", "scale": 1.0}}


def fsae(**kw):
    cfg = dict(variables=["t2m"], input_stats=STATS, nside=4, levels=1, dim=16, heads=2)
    return get_autoencoder_class("fsae")(**{**cfg, **kw})


def test_residual_features_sum_to_input():
    x = torch.randn(2, 3, 12 * 16)
    f = residual_features(x, 2, torch.tensor([0, 1]))
    assert f.shape == (2, 3, 192, 5)
    torch.testing.assert_close(f[0, ..., :3].sum(-1), x[0])  # coarse + residuals = x
    torch.testing.assert_close(f[1, ..., :3].sum(-1), refine(coarsen(x[1], 1), 1))  # finest masked
    assert f[1, ..., 4].eq(1).all() and f[0, ..., 3:].eq(0).all()


def test_window_offsets_are_local_and_antisymmetric():
    off = window_offsets(8, 16)
    assert off.shape == (768 // 16, 16, 16, 2)
    torch.testing.assert_close(off, -off.transpose(1, 2))
    assert off.abs().max() < 6  # a 4 x 4 window spans about 4 cells


def test_neighbourhoods_are_symmetric_and_local():
    index, valid, off = neighbourhoods(8)
    assert index.shape == (768, 9) and (index[:, 0] == torch.arange(768)).all()
    assert (~valid).sum() == 24  # 8 corners where 3 faces meet: 3 cells there have 7 neighbours
    pairs = {(int(i), int(j)) for i, row in enumerate(index) for j in row[1:]}
    assert all((j, i) in pairs for i, j in pairs if i != j)  # j neighbours i <=> i neighbours j
    d = off[valid].norm(dim=-1)
    assert d[off[valid].abs().sum(-1) > 0].min() > 0.5 and d.max() < 2.0  # in cell sizes


def test_position_features_are_a_function_of_place_at_every_level():
    f4, f8 = position_features(4, 2), position_features(8, 2)
    assert f4.shape == (192, 15) and f8.shape == (768, 15)
    torch.testing.assert_close(f4[:, :3].norm(dim=1), torch.ones(192))  # unit vectors
    torch.testing.assert_close(f4[:, 3:9], torch.sin(f4[:, :3].repeat(1, 2) * _freqs(2)))
    assert SpherePosition(8, frequencies=2)(8).shape == (768, 8)


def _freqs(frequencies: int) -> torch.Tensor:
    return (torch.pi * 2.0 ** torch.arange(frequencies)).repeat_interleave(3)


@pytest.mark.parametrize("cell_attention", ["neighbours", "windows"])
def test_field_space_block_equivariant_to_variable_order(cell_attention):
    torch.manual_seed(0)
    block = FieldSpaceBlock(16, 2, nside=4, window=16, cell_attention=cell_attention).eval()
    x = torch.randn(2, 3, 192, 16)
    y = block(x)
    assert y.shape == x.shape
    torch.testing.assert_close(block(x[:, [2, 0, 1]]), y[:, [2, 0, 1]], rtol=1e-4, atol=1e-5)


def test_neighbour_attention_crosses_face_edges_and_stays_local():
    """Perturbing one cell changes exactly the cells whose neighbourhood holds it, across
    the face edge; window attention would keep the change inside the cell's window."""
    torch.manual_seed(0)
    block = FieldSpaceBlock(16, 2, nside=4, window=16).eval()
    x = torch.randn(1, 1, 192, 16)
    cell = 15  # the last cell of face 0, on its edge
    x2 = x.clone()
    x2[0, 0, cell] += 1.0
    changed = set((block(x2) - block(x)).abs().sum(-1)[0, 0].nonzero()[:, 0].tolist())
    index, _, _ = neighbourhoods(4)
    assert changed == {i for i in range(192) if cell in index[i].tolist()}
    assert any(i // 16 != 0 for i in changed)  # reached another face
    with pytest.raises(ConfigError, match="cell_attention"):
        FieldSpaceBlock(16, 2, nside=4, window=16, cell_attention="global")


@pytest.mark.parametrize("name", ["fsae", "face_vae"])
@pytest.mark.parametrize("levels", [1, 2])
def test_contract_shapes_save_load(name, levels, tmp_path):
    torch.manual_seed(0)
    cls = get_autoencoder_class(name)
    extra = dict(dim=16, heads=2) if name == "fsae" else dict(channels=8)
    m = cls(
        variables=["t2m", "u10"],
        input_stats={**STATS, "u10": STATS["t2m"]},
        nside=4,
        levels=levels,
        latent_channels=2,
        **extra,
    ).eval()
    x = 280 + torch.randn(3, 2, 192)
    z = m.encode(x)
    assert z.shape == (3, 2, 192 // 4**levels) == (3, m.latent_channels, *m.latent_shape((192,)))
    assert m.decode(z).shape == x.shape
    assert m.compression_factor == 2 * 4**levels / 2
    out = m(m.normalize_input(x))
    x_hat, post = out.sample, out.latent_dist
    assert x_hat.shape == x.shape and torch.isfinite(post.kl()).all()
    m.save_pretrained(tmp_path / name)
    again = load_autoencoder(tmp_path / name)
    torch.testing.assert_close(again.decode(again.encode(x)), m.decode(m.encode(x)))
    assert again.fingerprint() == m.fingerprint()


def test_errors_name_expected_and_found():
    m = fsae()
    with pytest.raises(SchemaError, match="192 cells.*found 48 cells"):
        m.encode(torch.zeros(1, 1, 48))
    with pytest.raises(SchemaError, match="expected a tensor"):
        m.encode(torch.zeros(1, 2, 192))
    with pytest.raises(SchemaError, match="coarser input"):
        m.super_resolve(torch.zeros(1, 1, 12))
    with pytest.raises(ConfigError, match="levels"):
        fsae(levels=3)
    with pytest.raises(ConfigError, match="power of 4"):
        fsae(window=8)
    with pytest.raises(SchemaError, match="power of two"):
        fsae(nside=6)


def test_super_resolve_shape_and_masking_matters():
    torch.manual_seed(0)
    m = fsae(levels=2, max_masked_levels=2).eval()
    coarse = 280 + torch.randn(2, 1, 48)
    fine = m.super_resolve(coarse)
    assert fine.shape == (2, 1, 192)
    assert m.super_resolve(280 + torch.randn(2, 1, 12)).shape == (2, 1, 192)
    # the masked path differs from encoding the piecewise-constant refinement as a full field
    assert not torch.allclose(fine, m.decode(m.encode(refine(coarse, 1))))


def test_fsae_learns_a_smooth_field_quickly():
    torch.manual_seed(0)
    g = HealpixGrid(4)
    base = torch.as_tensor(np.cos(np.radians(g.lat)) * 20 + 270, dtype=torch.float32)
    x = base + torch.randn(16, 1, 1) * 2 + torch.randn(16, 1, 192) * 0.1
    m = fsae(levels=1, latent_channels=2)
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    xs = m.normalize_input(x)
    first = None
    for _ in range(60):
        loss = (m(xs).sample - xs).pow(2).mean()
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def _recipe():
    spec = importlib.util.spec_from_file_location("train_autoencoder", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def healpix_targets(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    lat, lon = np.linspace(-90, 90, 19), np.arange(36) * 10.0
    t = 280 + 20 * np.cos(np.radians(lat))[None, :, None] + rng.normal(size=(24, 19, 36))
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t.astype(np.float32), {"units": "K"})},
        coords={"time": pd.date_range("1990-01-01", periods=24, freq="YS"), "lat": lat, "lon": lon},
    )
    return write_healpix_store(regrid_to_healpix(ds, 4, "conservative"), tmp_path / "hp.zarr")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fsae", "face_vae"])
def test_recipe_trains_healpix_model(name, healpix_targets, tmp_path):
    out = tmp_path / "run"
    options = "{levels: 1, dim: 16, heads: 2}" if name == "fsae" else "{levels: 1, channels: 8}"
    argv = [
        f"out_dir={out}",
        f"data.targets={healpix_targets}",
        "data.variables=[t2m]",
        "data.train_period=[1990,2007]",
        "data.val_period=[2008,2013]",
        f"model.name={name}",
        "model.latent_channels=2",
        f"model.options={options}",
        "loss.kl_weight=0",
        "stage1.total_samples=16",
        "stage2.total_samples=0",
        "train.global_batch_size=8",
        "train.checkpoint_every_samples=16",
        "train.log_every_samples=8",
    ]
    assert _recipe().main(argv) == 0
    model = load_autoencoder(out / "autoencoder")
    assert model.registry_name == name and model.config.nside == 4
    assert len(model.config.latent_std) == 2
    bad = [
        *argv[:5],
        f"model.name={name}",
        "model.latent_channels=2",
        "model.options={nside: 8, levels: 1}",
        f"out_dir={tmp_path / 'bad'}",
    ]
    with pytest.raises(SchemaError, match="nside 4"):
        _recipe().main(bad)


def test_super_resolve_store_cli(tmp_path):
    from kmscale.cli import main

    torch.manual_seed(0)
    m = fsae(levels=1)
    m.save_pretrained(tmp_path / "ae")
    g = HealpixGrid(2)
    coarse = xr.Dataset(
        {
            "t2m": (
                ("time", "cell"),
                280 + np.random.default_rng(0).normal(size=(3, g.npix)).astype(np.float32),
                {"units": "K"},
            )
        },
        coords={"time": pd.date_range("2000", periods=3, freq="YS"), "cell": np.arange(g.npix)},
        attrs=g.attrs(),
    )
    src = write_healpix_store(coarse, tmp_path / "coarse.zarr")
    assert (
        main(
            [
                "super-resolve",
                "--autoencoder",
                str(tmp_path / "ae"),
                "--input",
                str(src),
                "--out",
                str(tmp_path / "fine.zarr"),
            ]
        )
        == 0
    )
    fine = xr.open_zarr(tmp_path / "fine.zarr", consolidated=False)
    assert fine.t2m.shape == (3, 192) and fine.attrs["super_resolved_from_nside"] == 2
    nan = coarse.copy(deep=True)
    nan.t2m[0, 0] = np.nan
    bad = write_healpix_store(nan, tmp_path / "nan.zarr")
    assert (
        main(
            [
                "super-resolve",
                "--autoencoder",
                str(tmp_path / "ae"),
                "--input",
                str(bad),
                "--out",
                str(tmp_path / "x.zarr"),
            ]
        )
        == 1
    )
    assert not (tmp_path / "x.zarr").exists()


def test_face_denoiser_runs_edm_on_healpix_latents():
    from kmscale.diffusion.edm import EDMLoss, EDMPrecond
    from kmscale.diffusion.face_net import FaceDenoiser
    from kmscale.diffusion.samplers import edm_sampler

    torch.manual_seed(0)
    net = EDMPrecond(FaceDenoiser(2, 1, 8, 1), sigma_data=1.0)
    y, c = torch.randn(3, 1, 48, 1), torch.randn(3, 1, 48, 1)
    assert EDMLoss(sigma_data=1.0)(net, y, c).shape == y.shape
    assert edm_sampler(net, torch.randn(3, 1, 48, 1), cond=c, num_steps=3).shape == y.shape


def _conformance_cases():
    from kmscale.autoencoders.testing import ConformanceCase

    def build(name, **kw):
        def factory():
            torch.manual_seed(0)
            return get_autoencoder_class(name)(
                variables=["t2m"], input_stats=STATS, nside=4, levels=1, latent_channels=2, **kw
            )

        return factory

    return [
        ConformanceCase("fsae", build("fsae", dim=16, heads=2), spatial_shape=(192,)),
        ConformanceCase("face_vae", build("face_vae", channels=8), spatial_shape=(192,)),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("case", _conformance_cases(), ids=str)
def test_healpix_autoencoders_conform(case, tmp_path):
    from kmscale.autoencoders.testing import check_autoencoder

    check_autoencoder(case, tmp_path)
