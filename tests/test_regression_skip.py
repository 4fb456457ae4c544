"""The regression backbone's linear skip: exact on linear data, zero U-Net at start, saved."""

import pytest
import torch

from kmscale.conditioning.dataset import DownscalingDataset
from kmscale.diffusion.networks import ConditionalUNet, UNetSettings
from kmscale.diffusion.regression import SkipGroup, build_unet, fit_linear_skip
from kmscale.errors import ConfigError

SMALL = UNetSettings(block_out_channels=[8, 8], norm_num_groups=4)


def _linear_data(n=6, cp=3, cs=2, cz=4, h=8, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, cp, h, w, generator=g)
    static = torch.randn(cs, h, w, generator=g)
    a = torch.randn(cz, cp + cs, generator=g)
    b = torch.randn(cz, generator=g)
    cond = torch.cat([pred, static.expand(n, -1, -1, -1)], dim=1)
    z = torch.einsum("zc,nchw->nzhw", a, cond) + b[:, None, None]
    return DownscalingDataset(pred, static, torch.zeros(n, 0), z), a, b


def test_fit_recovers_an_exact_linear_map_and_the_model_starts_there():
    ds, a, b = _linear_data()
    model = build_unet(5, 4, None, SMALL, linear_skip=True)
    fit = fit_linear_skip(model, ds, ridge=1e-10)
    assert fit["mse"] < 1e-10 and fit["rows"] == 6 * 8 * 12
    torch.testing.assert_close(model.skip.weight[:, :, 0, 0], a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.skip.bias, b, atol=1e-4, rtol=1e-4)
    cond = torch.stack([ds[i]["cond"] for i in range(2)])
    torch.testing.assert_close(model(cond, 0.0), ds.z[:2], atol=1e-4, rtol=1e-4)


def test_nan_pixels_are_left_out_of_the_fit():
    ds, a, _ = _linear_data()
    ds.z[0, :, :2, :3] = float("nan")
    model = build_unet(5, 4, None, SMALL, linear_skip=True)
    fit = fit_linear_skip(model, ds, ridge=1e-10)
    assert fit["rows"] == 6 * 8 * 12 - 6
    torch.testing.assert_close(model.skip.weight[:, :, 0, 0], a, atol=1e-4, rtol=1e-4)


def test_the_skip_is_saved_with_the_weights(tmp_path):
    ds, _, _ = _linear_data()
    model = build_unet(5, 4, None, SMALL, linear_skip=True)
    fit_linear_skip(model, ds)
    model.save_pretrained(tmp_path)
    back = ConditionalUNet.from_pretrained(tmp_path)
    x = torch.randn(1, 5, 8, 12)
    torch.testing.assert_close(back(x, 0.0), model(x, 0.0))


def test_a_model_without_the_skip_is_refused():
    ds, _, _ = _linear_data()
    with pytest.raises(ConfigError, match="linear_skip"):
        fit_linear_skip(build_unet(5, 4, None, SMALL), ds)


def test_blocked_cross_validation_keeps_a_group_to_its_own_inputs_when_the_rest_is_spurious():
    # z = x0 + e per example; x1 tracks e in the first two thirds of the period, -e after:
    # a relation of one regime only, which the time-blocked choice must not take.
    n, h, w = 9, 4, 4
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(n, 1, h, w, generator=g)
    e = torch.randn(n, 1, 1, 1, generator=g).expand(n, 1, h, w)
    sign = torch.tensor([1.0] * 6 + [-1.0] * 3).reshape(n, 1, 1, 1)
    pred = torch.cat([x0, sign * e], dim=1)
    z = torch.cat([x0 + e, 3 * x0], dim=1)
    ds = DownscalingDataset(pred, torch.zeros(0, h, w), torch.zeros(n, 0), z)
    model = build_unet(2, 2, None, SMALL, linear_skip=True)
    groups = [SkipGroup(slice(0, 1), [0]), SkipGroup(slice(1, 2), [0])]
    fit = fit_linear_skip(model, ds, groups)
    assert [c["inputs"] for c in fit["groups"]] == ["own", "own"]
    assert fit["groups"][0]["cv_mse"]["own"] < fit["groups"][0]["cv_mse"]["all"]
    assert torch.all(model.skip.weight[:, 1] == 0)  # the spurious input is left out


def test_a_terrain_modulated_skip_recovers_flow_times_slope_and_is_saved(tmp_path):
    """z = u (1 - 0.5 dh/dx²) + 0.3 v dh/dy: coefficients varying with the terrain slope
    are exact for the modulated skip and out of reach of the plain one; the terrain
    settings travel with the weights."""
    g = torch.Generator().manual_seed(1)
    n, h, w = 6, 10, 12
    pred = torch.randn(n, 2, h, w, generator=g)  # u, v
    yy, xx = torch.meshgrid(torch.arange(h) / h, torch.arange(w) / w, indexing="ij")
    oro = torch.sin(3 * xx) * torch.cos(2 * yy) + 0.5 * xx * yy
    static = oro[None]
    terrain = dict(skip_terrain_channel=2, skip_dynamic_channels=[0, 1])
    model = build_unet(3, 1, None, SMALL, linear_skip=True, **terrain)
    cond = torch.cat([pred[:1], static[None]], dim=1)
    m = model.skip.modulators(cond)[0]  # h, dx, dy, dx², dy², dxdy, |grad|
    z = pred[:, :1] * (1 - 0.5 * m[3]) + 0.3 * pred[:, 1:] * m[2]
    ds = DownscalingDataset(pred, static, torch.zeros(n, 0), z)
    assert fit_linear_skip(model, ds, ridge=1e-12)["mse"] < 1e-8
    plain = build_unet(3, 1, None, SMALL, linear_skip=True)
    assert fit_linear_skip(plain, ds, ridge=1e-12)["mse"] > 1e-4
    assert model.skip.expand([1, 2]) == [1, 2, *range(3 + 7, 3 + 14)]
    model.save_pretrained(tmp_path)
    back = ConditionalUNet.from_pretrained(tmp_path)
    assert back.config.skip_terrain_channel == 2
    x = torch.randn(1, 3, h, w)
    torch.testing.assert_close(back(x, 0.0), model(x, 0.0))


def test_skip_channels_outside_the_input_are_refused():
    with pytest.raises(ConfigError, match="skip channels"):
        build_unet(3, 1, None, SMALL, linear_skip=True, skip_terrain_channel=5)


def test_an_input_that_is_zero_everywhere_gets_weight_zero():
    ds, a, _ = _linear_data()
    ds.static[0] = 0.0  # a constant static field, standardized
    model = build_unet(5, 4, None, SMALL, linear_skip=True)
    fit_linear_skip(model, ds)
    assert torch.all(model.skip.weight[:, 3] == 0)
