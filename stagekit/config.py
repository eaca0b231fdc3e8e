"""YAML configs read into typed dataclasses, with dotted `key=value` overrides from the command line.

Everything is checked before any heavy work starts: an unknown key, a value of the wrong type or an
impossible value is a one-line `ConfigError` naming the dotted key (nanoGPT's configurator habit).
A `${VAR}` in a string is expanded for the run and kept as written in every saved config
(stagekit/variables.py, `to_dict`).

Each key carries its own help and resume rule as field metadata (`key(...)`); `describe_keys` reads them
for `--help`, `resumable_keys` for what `--resume` may change, and `python -m pipeline.config_docs` writes
docs/configuration.md from the same place. A section renames a key with a `renamed` class attribute, so
an old config gets a one-line error naming the new key and an old checkpoint's record is read under it.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import yaml

from stagekit.errors import ConfigError
from stagekit.variables import as_written, expand, portable

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
# Configs name data as ${BERT_DATA_DIR}/...; by default that is the shared data folder beside the checkout.
os.environ.setdefault("BERT_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data"))


HELP, RESUMABLE = "help", "resumable"


def key(default: Any = dataclasses.MISSING, help: str = "", *, resumable: bool = False, factory: Any = None) -> Any:
    """A config field with its help text and resume rule: `resumable` keys may change on `--resume`, and the
    change applies from the resumed step on; any other change is refused (stagekit/resume.py)."""
    metadata = {HELP: help, RESUMABLE: resumable}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """One config key as `--help` and docs/configuration.md show it."""

    dotted: str
    type: str
    default: Any
    help: str
    resumable: bool


def _field_metadata(cls: type, name: str) -> dict[str, Any]:
    """A field's metadata, inherited from the nearest base class that documents it (a section that only
    changes a default, e.g. pretraining's learning rate, keeps the shared key's help)."""
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass):
            for f in dataclasses.fields(klass):
                if f.name == name and f.metadata.get(HELP):
                    return dict(f.metadata)
    return {}


def _section_classes(tp: Any) -> list[type]:
    """The dataclass(es) a field's type holds: a section, a list of sections, or a tagged union of them."""
    if dataclasses.is_dataclass(tp):
        return [tp]
    return [c for arg in get_args(tp) for c in _section_classes(arg)]


def _default_of(f: dataclasses.Field, instance: Any) -> Any:
    """The field's default: read from the section's default instance when it has one (a section's default can
    differ from its class's, e.g. postprocess.selection_source), lists of sections as plain mappings."""
    if instance is not None:
        value = getattr(instance, f.name)
    elif f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return None
    if isinstance(value, list):
        return [to_dict(v) if dataclasses.is_dataclass(v) else v for v in value]
    return to_dict(value) if dataclasses.is_dataclass(value) else value


def describe_keys(schema: type, prefix: str = "", resumable: bool = False, instance: Any = None) -> Iterator[KeyInfo]:
    """Every leaf key of `schema`, dotted, with type, default, help and whether `--resume` may change it.
    A section whose class sets `resumable_section = True` (e.g. `impl`, speed only) is resumable whole; a
    tagged union (`model.architecture`) lists each option's keys once, the default option's first."""
    hints = typing.get_type_hints(schema)
    resumable = resumable or getattr(schema, "resumable_section", False)
    if instance is None and all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(schema)
    ):  # type: ignore[misc]
        instance = schema()
    seen: set[str] = set()
    for f in dataclasses.fields(schema):
        meta = _field_metadata(schema, f.name)
        tp = hints[f.name]
        sections = _section_classes(tp)
        is_list = get_origin(tp) in (list, tuple) or any(get_origin(a) in (list, tuple) for a in get_args(tp))
        if sections and not is_list:
            value = getattr(instance, f.name, None) if instance is not None else None
            for section in sections:
                default = value if isinstance(value, section) else None
                inner = resumable or meta.get(RESUMABLE, False)
                for info in describe_keys(section, f"{prefix}{f.name}.", inner, default):
                    if info.dotted not in seen:
                        seen.add(info.dotted)
                        yield info
            continue
        yield KeyInfo(
            dotted=f"{prefix}{f.name}",
            type=_doc_type(tp),
            default=_default_of(f, instance),
            help=meta.get(HELP, ""),
            resumable=resumable or bool(meta.get(RESUMABLE)),
        )


def _doc_type(tp: Any) -> str:
    """A type as a reader writes it: `auto | cpu | cuda`, `int | null`, `list[str]`."""
    if get_origin(tp) is Literal:
        return " | ".join(str(v) for v in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _doc_type(a) for a in get_args(tp))
    if get_origin(tp) in (list, tuple):
        return f"list[{_doc_type(get_args(tp)[0])}]" if get_args(tp) else "list"
    return _type_name(tp)


def format_default(value: Any) -> str:
    """A default as it would be written in YAML (`null`, `true`, `5.0e-04`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.1e}"
    if isinstance(value, list):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return str(value)


def resumable_keys(schema: type) -> tuple[str, ...]:
    """The dotted keys `--resume` may change (stagekit/resume.py `check_resume_settings`)."""
    return tuple(info.dotted for info in describe_keys(schema) if info.resumable)


def renamed_keys(schema: type, prefix: str = "") -> dict[str, str]:
    """{old dotted key: new dotted key} over every section's `renamed` attribute."""
    out = {f"{prefix}{old}": f"{prefix}{new}" for old, new in getattr(schema, "renamed", {}).items()}
    for f in dataclasses.fields(schema):
        for section in _section_classes(typing.get_type_hints(schema)[f.name]):
            out |= renamed_keys(section, f"{prefix}{f.name}.")
    return out


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
        return _coerce_union(value, tp, key)
    if origin is Literal:
        if value is None and "none" in get_args(tp):  # `key=none` on the command line arrives as None
            return "none"
        if value not in get_args(tp):
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (list, tuple):
        return _coerce_list(value, tp, key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and getattr(tp, "shorthand", None):  # a plain string sets that one key
            value = {tp.shorthand: value}
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping of settings, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is Any:
        return value
    if tp in _SCALARS:
        return _SCALARS[tp](value, key)
    raise ConfigError(f"config key '{key}': unsupported type {_type_name(tp)}")


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """`value` as the first option of the union `tp` it converts to: a section by its tag field, None, or the
    options in order; a one-line ConfigError when none takes it."""
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


def _coerce_list(value: Any, tp: Any, key: str) -> list[Any]:
    """A list (or, from the command line, YAML text of one) with each item converted to the item type."""
    if isinstance(value, str):  # a CLI override: parse it as YAML, e.g. [a, b]
        try:
            value = safe_load_unique(value, f"config key '{key}'")
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"config key '{key}': {value!r} is not valid YAML ({problem})") from None
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
    (item_tp, *_) = get_args(tp) or (Any,)
    return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")


def _to_int(value: Any, key: str) -> int:
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


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # PyYAML reads 3e-4 as a string; accept it as the number it means
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"config key '{key}': expected a number, got {value!r}")


def _to_str(value: Any, key: str) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    return expand(str(value))


# A scalar key's converter, by its annotated type: each raises a one-line ConfigError for a value it refuses.
_SCALARS: dict[Any, Callable[[Any, str], Any]] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


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
    renamed: dict[str, str] = getattr(cls, "renamed", {})
    removed: dict[str, str] = getattr(cls, "removed", {})
    for key in data:
        if key in removed:
            raise ConfigError(f"config key '{prefix}{key}' {removed[key]}")
        if key in renamed and key not in names:  # a key that became a section's keeps its name
            raise ConfigError(
                f"config key '{prefix}{key}' is now called '{prefix}{renamed[key]}' (one name for it in both stages): "
                "rename it in your config or override"
            )
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
            raise ConfigError(
                f"config key '{dotted}': '{part}' is given as a plain value; write it as a section to set one of its "
                f"keys, e.g. {part}: {{path: {child}, ...}}"
            )
        node = child
    node[leaf] = value


_MERGE = "tag:yaml.org,2002:merge"


def _duplicate_key(node: yaml.Node, path: str, seen: set[int]) -> str | None:
    """The first key given twice in one mapping under `node`, as "key 'a.b' is given twice (lines 3 and 7)",
    else None. A mapping's own keys are checked before those nested in its values; `<<` merge keys are not keys."""
    if id(node) in seen:  # an alias met again (or a recursive one)
        return None
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        children = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                continue
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(id(key_node))
            line = key_node.start_mark.line + 1
            dotted = f"{path}.{name}" if path else name
            if name in lines:
                return f"key '{dotted}' is given twice (lines {lines[name]} and {line})"
            lines[name] = line
            children.append((value_node, dotted))
    elif isinstance(node, yaml.SequenceNode):
        children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
    else:
        return None
    return next((found for child, at in children if (found := _duplicate_key(child, at, seen))), None)


def safe_load_unique(text: str, where: str) -> Any:
    """`yaml.safe_load(text)` that refuses a key given twice in one mapping, at any depth: PyYAML keeps the last
    one silently, so a second `train:` section replaced the whole first one with defaults.

    Raises ConfigError "<where>: key 'train.learning_rate' is given twice (lines 3 and 9); keep one", and
    yaml.YAMLError for text that is not YAML, as `yaml.safe_load` does.
    """
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None and (duplicate := _duplicate_key(node, "", set())):
        raise ConfigError(f"{where}: {duplicate}; keep one")
    return yaml.safe_load(text)


def parse_overrides(overrides: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.learning_rate=3.0e-4)")
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
            data = safe_load_unique(path.read_text(encoding="utf-8"), f"config file {path}") or {}
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


def to_dict(config: Any, *, expanded: bool = False) -> dict[str, Any]:
    """The config as plain data: strings as written (`${VAR}` kept: what runs save and compare), or with
    `expanded` as the run uses them."""
    data = dataclasses.asdict(config)
    return data if expanded else as_written(data)


def save_config(config: Any, path: str | Path, run_dir: str | Path | None = None) -> None:
    """Write the config as YAML that `load_config` reads back; `${VAR}`s stay as written (`to_dict`). With
    `run_dir` (a file that may leave this machine), absolute paths are named by stagekit/variables.py `portable`."""
    data = to_dict(config)
    if run_dir is not None:
        data = portable(data, run_dir)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


@dataclasses.dataclass
class RunConfig:
    """What every stage's config starts with: where its run folder lives."""

    renamed: ClassVar[dict[str, str]] = {}
    # {dotted key: value} a checkpoint written before the key existed was trained with (`check_resume_settings`)
    implied_by_old_checkpoints: ClassVar[dict[str, Any]] = {}
    run_name: str = key("run", "the run's folder name under output_dir (checkpoints, model, logs)")
    output_dir: str = key("outputs", "the folder the run folder <output_dir>/<run_name>/ lives in", resumable=True)

    def check(self) -> None:
        require(bool(self.run_name.strip()) and "/" not in self.run_name, "run_name", "must be a plain folder name")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name
