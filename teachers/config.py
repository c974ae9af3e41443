"""A teacher's config: where its weights are and the settings it samples with by default."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from distill.core.config import CONFIG_DIR, Strict, load, validate
from distill.teachers.samplers import check_grid


class SamplerConfig(Strict):
    name: Literal["euler", "unipc", "consistency"] = "unipc"
    steps: int = Field(50, ge=1, le=1000)
    guidance: float = Field(5.0, ge=0.0)
    # the low-noise expert's guidance in a two-expert family (the stock pipelines' guidance_scale_2); None: `guidance`
    guidance_2: float | None = Field(None, ge=0.0)
    shift: float = Field(3.0, gt=0.0)
    # the consistency sampler's noise levels (a student export records its own); None: the legacy "euler" grid
    grid: str | tuple[float, ...] | None = None

    @field_validator("grid")
    @classmethod
    def _grid(cls, v, info):
        return None if v is None else check_grid(v, info.data.get("steps"))


class VideoConfig(Strict):
    frames: int = Field(81, ge=1)
    height: int = Field(480, ge=16)
    width: int = Field(832, ge=16)
    fps: int = Field(16, ge=1)


class TeacherConfig(Strict):
    """A teacher and the settings it samples with by default (its published defaults for real checkpoints)."""

    name: str
    source: str  # a local folder, a hub id (online only) or builtin:NAME
    family: str | None = None  # a registered family (distill.teachers.registry); None: the folder's pipeline class says
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


def load_teacher_config(ref: str, overrides: list[str] = ()) -> TeacherConfig:
    """A teacher by config file (`configs/teachers/x.yaml`), by config name (`tiny-wan`), or by bare source
    (`builtin:tiny-wan`, a folder, a hub id), whose defaults then come from the checkpoint itself."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml"):
        return load(TeacherConfig, path, overrides)
    named = CONFIG_DIR / "teachers" / f"{ref}.yaml"
    if named.is_file():
        return load(TeacherConfig, named, overrides)
    from distill.teachers.resolve import checkpoint_defaults

    data = {"name": ref, "source": ref, **checkpoint_defaults(ref)}
    return validate(TeacherConfig, data, f"teacher {ref!r}", overrides)


def open_config(cfg: TeacherConfig):
    """(family, folder) of a teacher config, checked by its family without loading weights; TeacherNotFound names
    what is wrong (an unregistered family names the registered ones)."""
    from distill.teachers.resolve import open_teacher

    return open_teacher(cfg.source, cfg.revision, cfg.family)


def load_teacher(cfg: TeacherConfig, device: str | None = None):
    """The loaded teacher of a config (distill.teachers.base.Teacher), on `device` (None: the config's)."""
    from distill.teachers.base import DTYPES, pick_device

    family, folder = open_config(cfg)
    return family.load(folder, DTYPES[cfg.dtype], pick_device(device or cfg.device), cfg.max_sequence_length,
                       cfg.sampler.guidance_2)
