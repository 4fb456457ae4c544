"""Name -> Autoencoder class registry, with third-party plugins via entry points.

Built-in classes register with ``@register("name")``
(:mod:`kmscale.autoencoders.registration`, re-exported here). A third-party package adds its
own by declaring, in its ``pyproject.toml``::

    [project.entry-points."kmscale.autoencoders"]
    my-pseudo-precip = "my_package.module:MyEncoder"

and :func:`get_autoencoder_class` finds it by that name, without kmscale changing.
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

from kmscale.autoencoders import builtin
from kmscale.autoencoders.base import Autoencoder
from kmscale.autoencoders.registration import REGISTRY as _REGISTRY
from kmscale.autoencoders.registration import check_class, register
from kmscale.errors import CheckpointError

__all__ = ["available", "get_autoencoder_class", "load_autoencoder", "register"]

ENTRY_POINT_GROUP = "kmscale.autoencoders"


def _plugins() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Names of all registered and plugged-in autoencoders."""
    builtin.load()
    return sorted(set(_REGISTRY) | set(_plugins()))


def get_autoencoder_class(name: str) -> type:
    """The class registered (or plugged in) under ``name``."""
    builtin.load()
    if name in _REGISTRY:
        return _REGISTRY[name]
    plugins = _plugins()
    if name in plugins:
        cls = plugins[name].load()
        if not (isinstance(cls, type) and issubclass(cls, Autoencoder)):
            raise TypeError(
                f"entry point {name!r} in group {ENTRY_POINT_GROUP!r}: expected an Autoencoder "
                f"subclass, found {cls!r}"
            )
        # A plugin missing part of the contract fails here, by name, not deep in a pipeline.
        check_class(cls)
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls
    raise KeyError(f"unknown autoencoder {name!r}: expected one of {available()}")


def _class_by_config_name(class_name: str) -> type | None:
    builtin.load()
    for cls in _REGISTRY.values():
        if cls.__name__ == class_name:
            return cls
    for ep in _plugins().values():
        cls = ep.load()
        if getattr(cls, "__name__", None) == class_name:
            return cls
    return None


def load_autoencoder(path: str | Path, expect: str | None = None):
    """Load a ``save_pretrained`` directory, checking its architecture.

    Args:
        path: directory holding config.json and the safetensors weights.
        expect: registry name the caller requires (e.g. the bundle's), or None.
    Raises:
        CheckpointError: missing/corrupt files, unknown class, or another architecture.
    """
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(
            f"{path}: expected an autoencoder directory with config.json, found none"
        )
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_file}: expected JSON, found a corrupt file ({err})") from err
    class_name = cfg.get("_class_name")
    cls = _class_by_config_name(class_name) if class_name else None
    if cls is None:
        raise CheckpointError(
            f"{cfg_file}: expected an autoencoder class among {available()}, found {class_name!r}"
        )
    if expect is not None and cls.registry_name != expect:
        raise CheckpointError(
            f"{path}: expected a {expect!r} autoencoder, found a {cls.registry_name!r} checkpoint"
        )
    try:
        return cls.from_pretrained(path)
    except (OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: could not load the {class_name} weights: {err}") from err
