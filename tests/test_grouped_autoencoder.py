"""Grouped autoencoders: one per variable group, one concatenated latent downstream."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from kmscale.autoencoders import get_autoencoder_class, load_autoencoder
from kmscale.autoencoders.grouped import GroupedAutoencoder, check_groups, group_dir
from kmscale.errors import BundleError, CheckpointError, SchemaError

STATS = {
    "t2m": {"mean": 280.0, "std": 5.0, "transform": "none", "scale": 1.0},
    "u10": {"mean": 0.0, "std": 3.0, "transform": "none", "scale": 1.0},
    "v10": {"mean": 0.0, "std": 3.0, "transform": "none", "scale": 1.0},
    "tp": {"mean": 0.3, "std": 0.5, "transform": "log1p", "scale": 1.0},
}
VARS = ["t2m", "u10", "v10", "tp"]


def part(kind: str, variables: list[str], widths=(8, 8), channels: int = 2):
    stats = {v: STATS[v] for v in variables}
    if kind == "identity":
        return get_autoencoder_class("identity")(variables=variables, input_stats=stats)
    torch.manual_seed(len(variables) + len(widths))
    return get_autoencoder_class("vae")(
        variables=variables,
        input_stats=stats,
        block_out_channels=widths,
        latent_channels=channels,
        norm_num_groups=8,
    )


def grouped() -> GroupedAutoencoder:
    """t2m in pixel space (factor 1), wind at 4x (3 channels), tp at 2x (2 channels)."""
    return GroupedAutoencoder(
        [part("identity", ["t2m"]), part("vae", ["u10", "v10"], (8, 8, 8), 3), part("vae", ["tp"])],
        VARS,
    )


def fields(t: int = 3, h: int = 16, w: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(t, 4, h, w, generator=g)
    x[:, 0] = 280 + 5 * x[:, 0]
    x[:, 3] = torch.relu(x[:, 3])
    return x


def test_layout_and_concatenated_latent():
    ae = grouped()
    assert ae.variables == tuple(VARS) and ae.groups == [["t2m"], ["u10", "v10"], ["tp"]]
    assert ae.downsample_factor == 4
    # c_g k_g^2: t2m 1 x 4^2, wind 3 x 1, tp 2 x 2^2
    assert ae.group_channels() == [16, 3, 8] and ae.latent_channels == 27
    x = fields()
    z = ae.encode(x)
    assert z.shape == (3, 27, 4, 6)
    # the concatenation is each part's own (normalized) latent, folded to the common grid
    with torch.no_grad():
        z_wind = ae.parts[1].encode(x[:, 1:3])
        z_tp = ae.parts[2].encode(x[:, 3:4])
    torch.testing.assert_close(z[:, 16:19], z_wind)
    torch.testing.assert_close(ae.unfold(z[:, 19:27], 2), z_tp)
    # the identity group is the standardized field, space-to-depth: every pixel kept
    torch.testing.assert_close(ae.unfold(z[:, :16], 0)[:, 0], (x[:, 0] - 280.0) / 5.0)


def test_decode_per_group_in_variable_order():
    ae = grouped()
    x = fields()
    with torch.no_grad():
        z = ae.encode(x)
        y = ae.decode(z)
        assert y.shape == x.shape
        torch.testing.assert_close(y[:, 0], x[:, 0], rtol=0, atol=1e-4)  # identity group: exact
        torch.testing.assert_close(y[:, 1:3], ae.parts[1].decode(ae.parts[1].encode(x[:, 1:3])))
        torch.testing.assert_close(
            ae.decode_group(z, 2), ae.parts[2].decode(ae.parts[2].encode(x[:, 3:4]))
        )
    # another variable order than the parts': decoding follows ``variables``
    ae2 = GroupedAutoencoder(list(ae.parts), ["tp", "v10", "t2m", "u10"])
    with torch.no_grad():
        y2 = ae2.decode(ae2.encode(x[:, [3, 2, 0, 1]]))
    torch.testing.assert_close(y2, y[:, [3, 2, 0, 1]])


@pytest.mark.parametrize(
    "groups, message",
    [
        ([["t2m"], ["u10", "v10"], ["tp", "u10"]], "['u10'] are in more than one group"),
        ([["t2m"], ["u10", "v10"]], "['tp'] are in no group"),
        ([["t2m", "u10", "v10", "tp", "q2m"]], "['q2m'] are not among"),
    ],
)
def test_check_groups_names_the_variables(groups, message):
    with pytest.raises(SchemaError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_groups(VARS, groups)


def test_construction_refuses_overlap_and_missing():
    with pytest.raises(SchemaError, match=r"\['t2m'\] are in more than one group"):
        GroupedAutoencoder([part("identity", ["t2m"]), part("identity", ["t2m", "tp"])])
    with pytest.raises(SchemaError, match=r"\['v10'\] are in no group"):
        GroupedAutoencoder(
            [part("identity", ["t2m"]), part("identity", ["u10"])], ["t2m", "u10", "v10"]
        )


def test_save_load_round_trip(tmp_path):
    ae = grouped()
    ae.save_pretrained(tmp_path / "ae")
    cfg = json.loads((tmp_path / "ae" / "config.json").read_text())
    assert cfg["_class_name"] == "GroupedAutoencoder" and cfg["groups"] == ae.groups
    loaded = load_autoencoder(tmp_path / "ae")
    assert isinstance(loaded, GroupedAutoencoder)
    assert loaded.fingerprint() == ae.fingerprint()
    assert loaded.encoder_fingerprint() == ae.encoder_fingerprint()
    x = fields()
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(loaded.encode(x)), ae.decode(ae.encode(x)))
    # each group is an ordinary autoencoder directory, loadable alone
    alone = load_autoencoder(tmp_path / "ae" / group_dir(1, ["u10", "v10"]))
    assert alone.variables == ("u10", "v10") and alone.fingerprint() == ae.parts[1].fingerprint()
    # a part's weights are part of the identity
    with torch.no_grad():
        next(loaded.parts[1].parameters()).add_(1.0)
    assert loaded.fingerprint() != ae.fingerprint()


def test_load_refuses_bad_groups(tmp_path):
    grouped().save_pretrained(tmp_path / "ae")
    cfg_file = tmp_path / "ae" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "variables": VARS + ["q2m"]}))
    with pytest.raises(CheckpointError, match=r"\['q2m'\] are in no group"):
        load_autoencoder(tmp_path / "ae")
    cfg_file.write_text(json.dumps({**cfg, "groups": [["t2m"], ["u10", "v10"], ["tp", "t2m"]]}))
    with pytest.raises(CheckpointError, match=r"\['t2m'\] are in more than one group"):
        load_autoencoder(tmp_path / "ae")
    # a part holding other variables than its group says so
    cfg_file.write_text(json.dumps(cfg))
    shutil.rmtree(tmp_path / "ae" / group_dir(0, ["t2m"]))
    part("identity", ["u10"]).save_pretrained(tmp_path / "ae" / group_dir(0, ["t2m"]))
    with pytest.raises(CheckpointError, match=r"expected an autoencoder for variables \['t2m'\]"):
        load_autoencoder(tmp_path / "ae")


def test_latent_store_round_trip_and_group_decode(tmp_path):
    from kmscale.autoencoders.latent_store import decode_store, encode_to_store, open_latents

    ae = GroupedAutoencoder(
        [part("identity", ["t2m"]), part("identity", ["u10", "v10"]), part("identity", ["tp"])],
        VARS,
    )
    x = fields(t=4).numpy()
    ds = xr.Dataset(
        {v: (("time", "lat", "lon"), x[:, c], {"units": "1"}) for c, v in enumerate(VARS)},
        coords={
            "time": pd.date_range("2023-07-01", periods=4, freq="h"),
            "lat": np.linspace(29, 29.15, 16),
            "lon": np.linspace(100, 100.23, 24),
        },
    )
    store = encode_to_store(ae, ds, tmp_path / "lat.zarr", chunk=2, progress=False)
    lat = open_latents(store, ae)
    assert json.loads(lat.attrs["groups"])[1]["variables"] == ["u10", "v10"]
    assert lat["latent"].shape == (4, 4, 16, 24)
    out = decode_store(store, ae, tmp_path / "dec.zarr", progress=False)
    dec = xr.open_zarr(out, consolidated=False)
    for c, v in enumerate(VARS):
        np.testing.assert_allclose(dec[v].values, x[:, c], atol=0.02 * (5 if v == "t2m" else 1))
    # decoding some variables decodes only the groups holding them
    part_out = decode_store(store, ae, tmp_path / "wind.zarr", variables=["v10"], progress=False)
    assert sorted(xr.open_zarr(part_out, consolidated=False).data_vars) == ["u10", "v10"]


def test_bundle_with_grouped_autoencoder(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _downscaling_data import synthetic

    from kmscale.conditioning.dataset import ConditioningSpec
    from kmscale.diffusion.bundle import EDMSettings, ModelBundle, grid_dataset
    from kmscale.diffusion.regression import UNetSettings, build_unet

    targets, coarse, static = synthetic(n=4)
    lat, lon = targets.lat.values, targets.lon.values
    ae = GroupedAutoencoder([part("identity", ["t2m"])], ["t2m"])
    spec = ConditioningSpec.from_data(coarse, static, lat, lon, factor=1)
    unet = build_unet(
        spec.cond_channels,
        1,
        spec.emb_dim,
        UNetSettings(block_out_channels=[8, 16], norm_num_groups=4),
    )
    bundle = ModelBundle(
        ae,
        unet,
        None,
        spec,
        grid_dataset(lat, lon, static, spec.static_variables),
        EDMSettings(residual_scale=[1.0]),
    )
    bundle.save(tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["autoencoder"]["groups"][0]["variables"] == ["t2m"]
    assert isinstance(ModelBundle.load(tmp_path / "b").autoencoder, GroupedAutoencoder)
    cfg_file = tmp_path / "b" / "autoencoder" / "config.json"
    cfg_file.write_text(
        json.dumps({**json.loads(cfg_file.read_text()), "variables": ["t2m", "tp"]})
    )
    with pytest.raises(BundleError, match=r"\['tp'\] are in no group"):
        ModelBundle.load(tmp_path / "b")


def _dataset(x: np.ndarray) -> xr.Dataset:
    """(T, 4, 16, 24) fields of VARS as an hourly dataset on a small lat-lon window."""
    return xr.Dataset(
        {v: (("time", "lat", "lon"), x[:, c]) for c, v in enumerate(VARS)},
        coords={
            "time": pd.date_range("2023-07-01", periods=len(x), freq="h"),
            "lat": np.linspace(29, 29.15, 16),
            "lon": np.linspace(100, 100.23, 24),
        },
    )


def test_train_groups(tmp_path):
    """Two groups trained by the one VAE loop (a few samples each), assembled and reloadable."""
    from kmscale.autoencoders.train import GroupConfig, ModelConfig, train_autoencoder, vae_config

    x = fields(t=6).numpy()
    ds = _dataset(x)
    groups = [
        GroupConfig(
            ["t2m", "tp"],
            ModelConfig(block_out_channels=[8, 8], latent_channels=2, norm_num_groups=8),
            budget_factor=0.5,
        ),
        GroupConfig(["u10", "v10"], ModelConfig(name="identity")),
    ]
    cfg = vae_config(tmp_path / "run", [16, 24], [8], 1, 8, batch=4, groups=groups, group_factor=4)
    model = train_autoencoder(cfg, ds)
    assert model.groups == [["t2m", "tp"], ["u10", "v10"]] and model.variables == tuple(VARS)
    # the 2x VAE group folded by 2 (2 x 4 channels), the pixel-space wind by 4 (2 x 16)
    assert model.group_channels() == [8, 32] and model.downsample_factor == 4
    with torch.no_grad():
        wind = model.decode_group(model.encode(torch.from_numpy(x)), 1)
    torch.testing.assert_close(wind, torch.from_numpy(x[:, 1:3]), rtol=0, atol=1e-4)
    loaded = load_autoencoder(tmp_path / "run" / "autoencoder")
    assert loaded.fingerprint() == model.fingerprint()
    assert (tmp_path / "run" / "0_t2m_tp" / "stage1" / "final" / "config.json").is_file()
    assert (tmp_path / "run" / "1_u10_v10" / "autoencoder" / "config.json").is_file()


def test_transform_scales_reach_every_group(tmp_path):
    """``transform_scales`` set the value transform of the fitted statistics (tp: log1p(tp / s))."""
    from kmscale.autoencoders.train import GroupConfig, ModelConfig, train_autoencoder, vae_config

    ds = _dataset(np.abs(fields(t=4).numpy()))
    groups = [
        GroupConfig(["t2m", "u10", "v10"], ModelConfig(name="identity")),
        GroupConfig(["tp"], ModelConfig(name="identity")),
    ]
    cfg = vae_config(
        tmp_path / "run",
        [16, 24],
        [8],
        1,
        4,
        groups=groups,
        group_factor=1,
        transform_scales={"tp": 0.1},
    )
    tp = train_autoencoder(cfg, ds).parts[1].config.input_stats["tp"]
    assert tp["transform"] == "log1p" and tp["scale"] == 0.1
    assert tp["mean"] == pytest.approx(float(np.log1p(ds.tp.values.astype("float64") / 0.1).mean()))


def test_groups_recipe_config_resolves():
    from pathlib import Path

    from kmscale.autoencoders.train import AutoencoderConfig
    from kmscale.config import load_config

    path = (
        Path(__file__).resolve().parent.parent / "recipes" / "configs" / "autoencoder_groups.yaml"
    )
    cfg = load_config(AutoencoderConfig, str(path), [])
    assert [g.variables for g in cfg.groups] == [["t2m"], ["u10", "v10"], ["tp"]]
    assert cfg.groups[2].model.name == "identity" and cfg.group_factor == 4
    check_groups(cfg.data.variables, [g.variables for g in cfg.groups])


def test_haar_fold_is_orthonormal_and_separates_block_means_from_detail(tmp_path):
    """Folded groups are stored in the 2-D Haar basis: channel 0 of a pixel group folded
    4 x 4 is 4 x the block mean of its standardized field, a constant block has no detail,
    squared norms are kept, decode(encode(x)) is x; the basis is part of the saved config
    and of the fingerprint."""
    ae = grouped()  # t2m (identity) folded 4 x 4, tp (2x VAE) folded 2 x 2
    assert ae.config.fold_basis == "haar"
    x = fields()
    z = ae.encode(x)
    t2m = (x[:, 0] - 280.0) / 5.0
    block_mean = t2m.reshape(3, 4, 4, 6, 4).mean((2, 4))
    torch.testing.assert_close(z[:, 0], 4 * block_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z[:, :16].pow(2).sum(), t2m.pow(2).sum(), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(ae.decode(z)[:, 0], x[:, 0], atol=1e-4, rtol=1e-5)
    flat = torch.full((1, 4, 16, 24), 280.0)
    flat[:, 1:3], flat[:, 3] = 0.0, 0.5
    assert ae.encode(flat)[:, 1:16].abs().max() < 1e-5
    raw = GroupedAutoencoder(list(ae.parts), VARS, fold_basis="pixels")
    torch.testing.assert_close(raw.encode(x)[:, :16].pow(2).sum(), z[:, :16].pow(2).sum())
    assert raw.fingerprint() != ae.fingerprint()
    raw.save_pretrained(tmp_path / "raw")
    loaded = GroupedAutoencoder.from_pretrained(tmp_path / "raw")
    assert loaded.config.fold_basis == "pixels" and loaded.fingerprint() == raw.fingerprint()
    torch.testing.assert_close(loaded.encode(x), raw.encode(x))
    cfg = json.loads((tmp_path / "raw" / "config.json").read_text())
    del cfg["fold_basis"]
    (tmp_path / "raw" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="fold_basis"):
        GroupedAutoencoder.from_pretrained(tmp_path / "raw")
