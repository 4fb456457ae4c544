"""The built-in autoencoder modules, imported by name when the registry is first asked.

Importing a module runs its ``@register`` decorators. The modules are named here as
strings and imported with :mod:`importlib` (as :mod:`kmscale.cli` finds its subcommand
modules), so that a built-in which loads other autoencoders (``grouped``) can use the
registry without an import cycle. Add a line here for each new built-in implementation.
"""

from __future__ import annotations

import importlib

MODULES = (
    "kmscale.autoencoders.face_vae",
    "kmscale.autoencoders.fsae",
    "kmscale.autoencoders.grouped",
    "kmscale.autoencoders.hyperprior",
    "kmscale.autoencoders.identity",
    "kmscale.autoencoders.pseudo_precip",
    "kmscale.autoencoders.vae",
)


def load() -> None:
    """Import every built-in module (once; later calls cost a dict lookup each)."""
    for name in MODULES:
        importlib.import_module(name)
