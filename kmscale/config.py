"""Typed recipe configuration: one dataclass per recipe, YAML plus dotted overrides.

Each recipe declares a (possibly nested) dataclass whose field defaults are the only
place its defaults live. Users give a YAML file and/or ``key.sub=value`` overrides on
the command line; :func:`load_config` merges them in that order, checks every key
against the dataclass (an unknown key is an error, not silently ignored) and converts
values to the annotated types. Values derived from data (channel counts, grid shape,
variable lists) are not typed by users: recipes fill them in after loading the data
and record them in the resolved config saved to the run directory.

Example::

    @dataclass
    class Optim:
        lr: float = 1e-4

    @dataclass
    class TrainConfig:
        out_dir: str = "runs/ldm"
        optim: Optim = field(default_factory=Optim)

    cfg = load_config(TrainConfig, "configs/ldm.yaml", ["optim.lr=3e-4"])
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kmscale.errors import ConfigError

T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type ``tp`` (raising ConfigError)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last: Exception | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as err:
                last = err
        raise ConfigError(f"config key {key!r}: expected {tp}, found {value!r}") from last
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"config key {key!r}: expected a mapping for {tp.__name__}, found {value!r}"
            )
        return _build(tp, value, prefix=key + ".")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str):
            value = (
                yaml.safe_load(value)
                if value.strip().startswith("[")
                else [v for v in value.split(",") if v]
            )
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, found {value!r}")
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r}: expected a mapping, found {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "yes", "1", "on"}:
            return True
        if isinstance(value, str) and value.lower() in {"false", "no", "0", "off"}:
            return False
        raise ConfigError(f"config key {key!r}: expected true/false, found {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected {tp.__name__}, found {value!r}")
        try:
            number = float(value) if tp is float else int(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(
                f"config key {key!r}: expected {tp.__name__}, found {value!r}"
            ) from err
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"config key {key!r}: expected an integer, found {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key {key!r}: expected a string, found {value!r}")
        return str(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r}: expected one of {list(args)}, found {value!r}")
        return value
    return value


def _build(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]} for {cls.__name__}; "
            f"expected some of {sorted(prefix + n for n in names)}"
        )
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> dict:
    """Turn ``["a.b=1", "c=[1,2]"]`` into a nested dict (values parsed as YAML scalars)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, extra: Mapping) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from an optional YAML file and dotted overrides (later wins)."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path}: expected a YAML file, found nothing there")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(
                f"config file {path}: expected a mapping at top level, found "
                f"{type(loaded).__name__}"
            )
        values = dict(loaded)
    values = _merge(values, parse_overrides(overrides))
    return _build(cls, values)


def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build ``cls`` from nested plain data (e.g. a config recorded by ``to_dict``)."""
    return _build(cls, values)


def to_dict(cfg: Any) -> dict:
    """The config as plain JSON/YAML-friendly data."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config (YAML) next to a run's outputs."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(dump_yaml(cfg))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The standard recipe flags: ``--config``, ``--dry-run`` and free dotted overrides."""
    parser.add_argument("--config", type=Path, default=None, help="YAML config file")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides applied after the YAML file, e.g. optim.lr=3e-4",
    )


def parse_recipe_config(
    cls: type[T], description: str | None, argv: Sequence[str] | None = None
) -> T | None:
    """A recipe's command line (:func:`add_config_arguments`) resolved into its config
    ``cls``; with ``--dry-run`` the resolved config is printed and None returned."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = load_config(cls, args.config, args.overrides)
    if args.dry_run:
        print(dump_yaml(cfg))
        return None
    return cfg
