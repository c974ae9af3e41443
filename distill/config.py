"""Config as data: YAML files validated into typed objects, with `key=value` overrides from the command line.

Every error names the file and the dotted key: an unknown key, a wrong type or a value out of range is refused
before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplerConfig(Strict):
    name: Literal["euler", "unipc", "consistency"] = "unipc"
    steps: int = Field(50, ge=1, le=1000)
    guidance: float = Field(5.0, ge=0.0)
    shift: float = Field(3.0, gt=0.0)


class VideoConfig(Strict):
    frames: int = Field(81, ge=1)
    height: int = Field(480, ge=16)
    width: int = Field(832, ge=16)
    fps: int = Field(16, ge=1)


class TeacherConfig(Strict):
    """A teacher and the settings it samples with by default (its published defaults for real checkpoints)."""

    name: str
    source: str  # a local folder, a hub id (online only) or builtin:NAME
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    sampler: SamplerConfig = SamplerConfig()
    video: VideoConfig = VideoConfig()
    negative_prompt: str = ""
    max_sequence_length: int = Field(512, ge=1)

    @field_validator("source")
    @classmethod
    def _source_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a folder, a hub id or builtin:NAME")
        return v


M = TypeVar("M", bound=BaseModel)


def _set_dotted(tree: dict, dotted: str, value, origin: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: cannot set {dotted!r}: {k!r} is a {type(child).__name__}, not a section")
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


def _format_errors(err: ValidationError, origin: str, overridden: set[str]) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        where = "command-line override" if key in overridden else origin
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key {key!r}")
        elif e["type"] == "missing":
            lines.append(f"{where}: missing required key {key!r}")
        else:
            lines.append(f"{where}: key {key!r}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate(model: type[M], data: dict, origin: str, overrides: list[str] = ()) -> M:
    pairs = parse_overrides(list(overrides))
    for key, value in pairs:
        _set_dotted(data, key, value, origin)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin, {k for k, _ in pairs})) from None


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not a {type(data).__name__}")
    return data


def load(model: type[M], path: str | Path, overrides: list[str] = ()) -> M:
    """Load a YAML file into `model`, applying `key=value` overrides; errors name the file and the key."""
    return validate(model, load_yaml(path), str(path), overrides)


def load_teacher_config(ref: str, overrides: list[str] = ()) -> TeacherConfig:
    """A teacher by config file (`configs/teachers/x.yaml`), by config name (`tiny-wan`), or by bare source
    (`builtin:tiny-wan`, a folder, a hub id), whose defaults then come from the checkpoint itself."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml"):
        return load(TeacherConfig, path, overrides)
    named = CONFIG_DIR / "teachers" / f"{ref}.yaml"
    if named.is_file():
        return load(TeacherConfig, named, overrides)
    from teachers.resolve import checkpoint_defaults

    data = {"name": ref, "source": ref, **checkpoint_defaults(ref)}
    return validate(TeacherConfig, data, f"teacher {ref!r}", overrides)
