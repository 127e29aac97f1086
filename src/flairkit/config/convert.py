"""Plain data <-> frozen config dataclasses, YAML reading and ``dotted.key=value`` overrides.

The one converter every config schema goes through: errors name the dotted path of the bad key
(``preprocess.inputs.SENTINEL2_TS.norm: ...``). Knows no schema itself.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from flairkit.modalities import Task


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build a (nested) frozen dataclass from plain data, checking every key and type.

    Raises:
        ConfigError: an unknown key, a missing required key or a wrong type, with its dotted path.
    """
    return _convert(cls, data, path)


def _convert(tp: Any, value: Any, path: str) -> Any:
    where = path or "<root>"
    origin = get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = set(value) - names
        if unknown:
            raise ConfigError(
                f"{_join(path, sorted(map(str, unknown))[0])}: unknown key; valid: {', '.join(sorted(names))}"
            )
        kwargs = {k: _convert(hints[k], v, _join(path, k)) for k, v in value.items()}
        try:
            return tp(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    if origin is typing.Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} matches no allowed type"
        )
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(
                f"{where}: {value!r} is not one of {', '.join(map(repr, get_args(tp)))}"
            )
        return value
    if origin in (tuple,):
        args = get_args(tp)
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(
            _convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin in (Mapping, dict, typing.Mapping) or tp is dict:
        key_tp, value_tp = get_args(tp) or (Any, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {
            _convert(key_tp, k, _join(path, str(k))): _convert(value_tp, v, _join(path, str(k)))
            for k, v in value.items()
        }
    if tp is Task:
        return parse_task(value, where)
    if isinstance(tp, type) and issubclass(tp, Enum):
        if isinstance(value, tp):
            return value
        try:
            return tp.parse(value) if hasattr(tp, "parse") else tp(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is Path and isinstance(value, str | Path):
        return Path(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def to_dict(obj: Any) -> Any:
    """Plain data (for YAML/JSON) from a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {to_dict(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    return obj


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``: a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file (``1e-4`` is a float, as in YAML 1.2).

    Raises:
        ConfigError: the file is missing or not valid YAML.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        return _parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc


def read_mapping(
    path: str | Path | None, overrides: list[str] | None = None
) -> tuple[dict[str, Any], Path]:
    """A config file's top-level mapping with overrides applied, and the folder relative paths
    are resolved against (the file's, or the working directory without a file).

    Raises:
        ConfigError: the file is missing, not YAML, not a mapping, or an override is bad.
    """
    raw = load_yaml(path) if path is not None else {}
    if not isinstance(raw or {}, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = apply_overrides(raw or {}, overrides or [])
    base = Path(path).parent if path is not None else Path.cwd()
    return dict(raw), base


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML, as ``load_yaml`` does).

    Raises:
        ConfigError: an override without ``=``, through a key that is not a section, or with
            a value that is not valid YAML; or overrides of data that is not a mapping.
    """
    out = copy.deepcopy(data) if data else {}
    if overrides and not isinstance(out, dict):
        raise ConfigError(f"overrides need a mapping at the top level, got {type(out).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.max_epochs=3")
        key, _, text = item.partition("=")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if node.get(part) is None:  # absent, or an empty section (``train:``)
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        try:
            node[parts[-1]] = _parse_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: invalid YAML value ({exc})") from exc
    return out


def parse_task(value: Any, where: str = "task") -> Task:
    """A task by enum name or official value, case-insensitive (``COSIA``, ``ALL_LABEL-LPIS``).

    Raises:
        ConfigError: no task has that name.
    """
    if isinstance(value, Task):
        return value
    key = str(value).strip().upper()
    for t in Task:
        if key in (t.name, t.value.upper()):
            return t
    valid = ", ".join(f"{t.name} ({t.value})" for t in Task)
    raise ConfigError(f"{where}: unknown task {value!r}; valid: {valid}")


def section(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A top-level section as a new dict; an absent or empty (``train:``) section is {}."""
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__}")
    return dict(value)


def resolve_path(base: Path, value: str | Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def merge_sections(base: Any, update: Any) -> Any:
    """Recursive dict merge: ``update`` wins; ``inputs`` of preprocess are replaced per modality."""
    if isinstance(base, dict) and isinstance(update, dict):
        out = dict(base)
        for key, value in update.items():
            out[key] = merge_sections(base.get(key), value) if key in base else value
        return out
    return update


def at_least(key: str, value: int, lowest: int) -> None:
    if value < lowest:
        raise ConfigError(f"{key}: must be at least {lowest}, got {value}")


def finite_at_least(key: str, value: float, lowest: float) -> None:
    if not (math.isfinite(value) and value >= lowest):
        raise ConfigError(f"{key}: must be a finite number >= {lowest:g}, got {value}")
