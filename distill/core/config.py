"""Config as data: YAML files validated into typed objects, with `key=value` overrides from the command line.

The primitives every layer shares (the strict base model, the error type and its formatting, YAML loading and
overrides); the configs themselves live with what they configure.

Every error names the file and the dotted key: an unknown key, a wrong type or a value out of range is refused
before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


def _set_dotted(tree: dict, dotted: str, value) -> None:
    """Set an override's value; the override, not the file, is at fault when it cannot be set."""
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        if node.get(k) is None:  # absent, or `key: null` (an optional section left out): set a key in it
            node[k] = {}
        child = node[k]
        if not isinstance(child, dict):
            raise ConfigError(f"command-line override: cannot set {dotted!r}: {k!r} is a {type(child).__name__}, "
                              f"not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, object]]:
    """`a.b=c` strings into (dotted key, YAML-parsed value) pairs."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value (for example sampler.steps=4)")
        parsed.append((key.strip(), yaml.safe_load(raw) if raw.strip() else raw))
    return parsed


def _config_path(loc: tuple, data) -> list[str]:
    """The key path of an error location as the user wrote it: a tagged union's tag (the `name` of the section,
    which pydantic puts into the location) is dropped."""
    path, node = [], data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("name") == part:
            continue  # pydantic's tag for a union told apart by `name` (e.g. recipe.<name>.key)
        path.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    return path


def format_validation_errors(err: ValidationError, origin: str, overridden: set[str] = frozenset(),
                             data: dict | None = None) -> str:
    """One line per problem, each naming where it came from (the file, or the command-line override) and the key."""
    lines = []
    for e in err.errors():
        key = ".".join(_config_path(e["loc"], data)) or "(top level)"
        where = "command-line override" if key in overridden else origin
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key {key!r}")
        elif e["type"] == "missing":
            lines.append(f"{where}: missing required key {key!r}")
        elif not e["loc"]:  # a check across sections: its message names the keys; the input is the whole config
            lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{where}: key {key!r}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def apply_overrides(data: dict, overrides: list[str]) -> set[str]:
    """Set each `key=value` override into `data`; returns the dotted keys overridden."""
    pairs = parse_overrides(list(overrides))
    for key, value in pairs:
        _set_dotted(data, key, value)
    return {k for k, _ in pairs}


def validate(model: type[M], data: dict, origin: str, overrides: list[str] = (),
             overridden: set[str] = frozenset()) -> M:
    """`data` with `overrides` applied, as a `model`; `overridden`: keys set by overrides applied before."""
    overridden = set(overridden) | apply_overrides(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_errors(err, origin, overridden, data)) from None


class _UniqueKeys(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last one without a word,
    so a block pasted at the end of a config would silently override the one above."""


def _mapping_without_repeats(loader: _UniqueKeys, node: yaml.MappingNode, deep: bool = False) -> dict:
    lines: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in lines:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {lines[key]} and {line}); keep one",
                    key_node.start_mark)
            lines[key] = line
        except TypeError:  # an unhashable key: left to PyYAML's own error
            pass
    return loader.construct_mapping(node, deep)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def parse_yaml(text: str):
    """YAML text as data (the safe loader), refusing repeated keys; yaml.YAMLError on bad text."""
    return yaml.load(text, Loader=_UniqueKeys)


def yaml_error_line(err: yaml.YAMLError) -> str:
    """A YAML parse error on one line: where (line, column) and what, without PyYAML's multi-line excerpt."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = "; ".join(filter(None, (getattr(err, "context", None), getattr(err, "problem", None)))) or str(err)
    return where + " ".join(what.split())


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = parse_yaml(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte offset {err.start}); save it as "
                          f"UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_error_line(err)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not a {type(data).__name__}")
    return data


def load(model: type[M], path: str | Path, overrides: list[str] = ()) -> M:
    """Load a YAML file into `model`, applying `key=value` overrides; errors name the file and the key."""
    return validate(model, load_yaml(path), str(path), overrides)
