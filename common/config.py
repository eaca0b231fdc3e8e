"""YAML configs read into typed dataclasses, with dotted `key=value` overrides from the command line.

Everything is checked before any heavy work starts: an unknown key, a value of the wrong type or an
impossible value is a one-line `ConfigError` naming the dotted key (nanoGPT's configurator habit).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from common.errors import ConfigError

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
# Configs name data as ${BERT_DATA_DIR}/...; by default that is the shared data folder beside the checkout.
os.environ.setdefault("BERT_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data"))


def require(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError for `key` unless `condition` holds; used by each section's `check()`."""
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to the annotated type `tp`, or raise a one-line ConfigError."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        tagged = _tagged_options(options)
        if tagged and isinstance(value, dict):  # sections told apart by their tag, e.g. model.architecture
            field_name, by_tag = tagged
            tag = value.get(field_name, next(iter(by_tag)))
            if tag not in by_tag:
                raise ConfigError(f"config key '{key}.{field_name}': {tag!r} is not one of {list(by_tag)}")
            return _build(by_tag[tag], value, prefix=f"{key}.")
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config key '{key}': {value!r} is not {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):  # a CLI override: parse it as YAML, e.g. [a, b]
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping of settings, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 3e-4 as a string; accept it as the number it means
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return os.path.expandvars(str(value))
    raise ConfigError(f"config key '{key}': unsupported type {_type_name(tp)}")


TAG_FIELDS = ("architecture",)


def _tagged_options(options: tuple[Any, ...]) -> tuple[str, dict[str, type]] | None:
    """For a union of dataclasses that each fix a tag field to one Literal value: (field, {value: class}).

    The first option is the default when the data name no tag.
    """
    classes = [o for o in options if o is not type(None)]
    if not classes or not all(dataclasses.is_dataclass(c) for c in classes):
        return None
    for name in TAG_FIELDS:
        tags = {}
        for cls in classes:
            hint = typing.get_type_hints(cls).get(name)
            if get_origin(hint) is not Literal or len(get_args(hint)) != 1:
                break
            tags[get_args(hint)[0]] = cls
        else:
            return name, tags
    return None


def _build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key in getattr(cls, "RETIRED", {}):  # a key a section no longer has, with where it went
            raise ConfigError(f"config key '{prefix}{key}' {cls.RETIRED[key]}")
        if key not in names:
            tags = [f"{prefix}{t}={getattr(cls, t, None) or data.get(t)}" for t in TAG_FIELDS if t in names]
            where = f"known for {tags[0]}" if tags else "known in this section"
            raise ConfigError(f"unknown config key '{prefix}{key}' ({where}: {', '.join(names)})")
    kwargs = {name: _coerce(data[name], hints[name], f"{prefix}{name}") for name in names if name in data}
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError as err:
            # Sections name their own keys; add the section path so the message names the dotted key.
            raise ConfigError(str(err).replace("config key '", f"config key '{prefix}", 1)) from None
    return obj


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{dotted}': '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=3.0e-4)")
        pairs.append((key.strip(), value))
    return pairs


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read `path` (YAML) into `schema`, apply `key=value` overrides, type-check and validate every key."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {path}{where} is not valid YAML: {getattr(err, 'problem', err)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings at the top level")
    for key, value in parse_overrides(overrides or []):
        # Overrides arrive as text; None/null is the only value parsed as YAML, the rest is coerced by type.
        _set_dotted(data, key, None if value.lower() in ("null", "none", "~") else value)
    return _build(schema, data)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")


@dataclasses.dataclass
class RunConfig:
    """What every stage's config starts with: where its run folder lives."""

    run_name: str = "run"
    output_dir: str = "outputs"  # the run lives in <output_dir>/<run_name>/

    def check(self) -> None:
        require(bool(self.run_name.strip()) and "/" not in self.run_name, "run_name", "must be a plain folder name")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name
