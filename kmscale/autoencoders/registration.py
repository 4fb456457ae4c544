"""The ``@register("name")`` decorator and the table it fills.

A leaf module (it imports only the interface), so that the built-in implementations can
register themselves while :mod:`kmscale.autoencoders.registry`, which looks names up,
imports the built-ins without an import cycle.
"""

from __future__ import annotations

from kmscale.autoencoders.base import Autoencoder
from kmscale.errors import KmscaleError

REGISTRY: dict[str, type[Autoencoder]] = {}


def register(name: str):
    """Class decorator: register an :class:`Autoencoder` subclass under ``name``."""

    def wrap(cls):
        if not (isinstance(cls, type) and issubclass(cls, Autoencoder)):
            raise TypeError(f"@register({name!r}): expected an Autoencoder subclass, found {cls!r}")
        existing = REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(
                f"autoencoder name {name!r} is already taken by {existing.__qualname__}"
            )
        cls.registry_name = name
        REGISTRY[name] = cls
        return cls

    return wrap


class ConformanceError(KmscaleError, AssertionError):
    """An autoencoder breaks the contract (lists every failed check)."""


def check_class(cls: type) -> None:
    """Raise ConformanceError unless ``cls`` is an Autoencoder overriding the contract's
    abstract members (``downsample_factor``, ``latent_channels``, ``_encode_normalized``,
    ``_decode_normalized``)."""
    if not (isinstance(cls, type) and issubclass(cls, Autoencoder)):
        raise ConformanceError(f"expected an Autoencoder subclass, found {cls!r}")
    missing = [
        m
        for m in (
            "downsample_factor",
            "latent_channels",
            "_encode_normalized",
            "_decode_normalized",
        )
        if getattr(cls, m) is getattr(Autoencoder, m)
    ]
    if missing:
        raise ConformanceError(
            f"{cls.__module__}.{cls.__qualname__}: expected implementations of the Autoencoder "
            f"contract's {missing}, found the abstract base versions"
        )
