"""Third-party autoencoders are discovered through the ``kmscale.autoencoders`` entry points.

A tiny dummy distribution (a ``.dist-info`` directory with ``entry_points.txt`` plus its
module) is written to ``tmp_path`` and put on ``sys.path``: importlib.metadata finds it
exactly as it finds a pip-installed package, with no installation.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from kmscale.autoencoders import available, get_autoencoder_class, load_autoencoder
from kmscale.autoencoders.registration import REGISTRY as _REGISTRY

PLUGIN_MODULE = textwrap.dedent(
    '''
    """A pseudo-precipitation encoder: two input variables, one latent field at 2x."""
    import torch
    from diffusers.configuration_utils import register_to_config

    from kmscale.autoencoders.base import Autoencoder


    class PseudoPrecipEncoder(Autoencoder):
        @register_to_config
        def __init__(self, variables=("tp", "q850"), input_stats=None, latent_mean=None,
                     latent_std=None):
            super().__init__()
            self.mix = torch.nn.Conv2d(len(variables), 1, kernel_size=2, stride=2)
            self.unmix = torch.nn.ConvTranspose2d(1, len(variables), kernel_size=2, stride=2)

        @property
        def downsample_factor(self):
            return 2

        @property
        def latent_channels(self):
            return 1

        def _encode_normalized(self, x):
            return self.mix(x)

        def _decode_normalized(self, z):
            return self.unmix(z)
    '''
)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "kmscale_dummy_plugin.py").write_text(PLUGIN_MODULE)
    info = tmp_path / "kmscale_dummy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: kmscale-dummy-plugin\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[kmscale.autoencoders]\npseudo-precip = kmscale_dummy_plugin:PseudoPrecipEncoder\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "pseudo-precip"
    _REGISTRY.pop("pseudo-precip", None)


def test_plugin_discovered_and_usable(plugin, tmp_path):
    assert plugin in available()
    cls = get_autoencoder_class(plugin)
    assert cls.__name__ == "PseudoPrecipEncoder" and cls.registry_name == plugin
    model = cls(variables=["tp", "q850"])
    x = torch.rand(2, 2, 8, 12)
    z = model.encode(x)
    assert z.shape == (2, 1, 4, 6) and model.decode(z).shape == x.shape
    model.save_pretrained(tmp_path / "saved")
    loaded = load_autoencoder(tmp_path / "saved", expect=plugin)
    assert loaded.fingerprint() == model.fingerprint()


def test_unknown_name_lists_available(plugin):
    with pytest.raises(KeyError, match="pseudo-precip"):
        get_autoencoder_class("no-such-model")
