"""Naming a teacher: a local folder, a hub id (online only), or `builtin:NAME` for checkpoints shipped here."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
DEFAULT_TEACHER = "tiny-wan"  # the built-in teacher's config (configs/teachers/tiny-wan.yaml): commands' default
DEFAULT_BUILTIN = "builtin:tiny-wan"
DEFAULTS_FILE = "distill_teacher.json"  # sampler and video defaults a shipped checkpoint carries with it
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*/*"]


class TeacherNotFound(ValueError):
    """A teacher name that does not lead to a checkpoint folder a registered family can load."""


class IncompleteWeights(ValueError):
    """A weights file of a checkpoint folder that is cut short or corrupt (an interrupted download or copy)."""


def check_safetensors(path: Path) -> None:
    """A safetensors file whose header parses and whose tensors all lie inside the file. Reads the header only:
    an 8-byte little-endian length, then that many bytes of JSON naming each tensor's byte range."""
    size = path.stat().st_size
    problem = None
    with path.open("rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or 8 + length > size:
            problem = f"its header says {length} bytes of metadata but the file has {size} bytes"
        else:
            try:
                header = json.loads(f.read(length))
                tensors = {k: t for k, t in header.items() if k != "__metadata__"}
                end = max((t["data_offsets"][1] for t in tensors.values()), default=0)
                wrong = next((k for k, t in tensors.items() if _tensor_bytes(t) != t["data_offsets"][1] -
                              t["data_offsets"][0]), None)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
                problem = f"its header is not valid safetensors metadata ({err})"
            else:
                if 8 + length + end > size:
                    problem = f"it has {size} bytes but its tensors need {8 + length + end}"
                elif wrong is not None:
                    t = tensors[wrong]
                    problem = (f"tensor {wrong!r} ({t['dtype']} {t['shape']}) needs {_tensor_bytes(t)} bytes but its "
                               f"header gives it {t['data_offsets'][1] - t['data_offsets'][0]}")
    if problem:
        raise IncompleteWeights(f"weights file {str(path)!r} is incomplete or corrupt: {problem}; download or "
                                f"copy it again")


_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _tensor_bytes(entry: dict) -> int:
    """Bytes of one header entry's tensor (its dtype's width times its element count); a dtype safetensors does
    not list here is taken at its word."""
    width = _DTYPE_BYTES.get(entry["dtype"])
    if width is None:
        return entry["data_offsets"][1] - entry["data_offsets"][0]
    count = 1
    for dim in entry["shape"]:
        count *= int(dim)
    return width * count


def check_weight_files(folder: Path) -> None:
    """Every safetensors file of a checkpoint folder is whole (headers only; no weights are read)."""
    for path in sorted(Path(folder).rglob("*.safetensors")):
        if not any(part.startswith(".") for part in path.relative_to(folder).parts):
            check_safetensors(path)


def builtin_names() -> list[str]:
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "model_index.json").is_file())


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _from_hub(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # the local cache first, so an already-downloaded teacher works offline
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=_HUB_PATTERNS))
    except LocalEntryNotFoundError:
        if _offline():
            raise TeacherNotFound(
                f"teacher {repo_id!r} looks like a hub id, but it is not in the local Hugging Face cache and the hub "
                f"is offline (HF_HUB_OFFLINE=1). Accepted offline: a local pipeline folder, or one of "
                f"{['builtin:' + n for n in builtin_names()]}."
            ) from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_PATTERNS))
    except LocalEntryNotFoundError as err:  # what the hub client raises when it cannot connect
        cause = " ".join(str(err).splitlines()[0].removeprefix("Got: ").split())
        raise TeacherNotFound(
            f"teacher {repo_id!r} looks like a hub id, but it is not in the local Hugging Face cache and the hub "
            f"cannot be reached ({cause}); this machine looks offline. Download it where there is a network (or "
            f"set HF_HUB_OFFLINE=1 to fail at once), or give a local pipeline folder, or one of "
            f"{['builtin:' + n for n in builtin_names()]}."
        ) from None


def check_pipeline_folder(folder: Path, name: str, family: str | None = None):
    """The family serving a pipeline folder (detected from model_index.json, or the one a config names), after its
    checks; TeacherNotFound naming what is wrong."""
    from distill.teachers import registry
    from distill.teachers.base import FamilyError

    if not (folder / "model_index.json").is_file():
        raise TeacherNotFound(
            f"teacher {name!r}: {str(folder)!r} is not a diffusers pipeline folder (no model_index.json); expected "
            f"a checkpoint of one of the registered families {registry.names()}"
        )
    try:
        fam = registry.family(family) if family else registry.family_of(folder, name)
        fam.check_folder(folder, name)
    except FamilyError as err:
        raise TeacherNotFound(str(err)) from None
    return fam


def resolve_folder(source: str, revision: str | None = None) -> Path:
    """The local folder named by `source` (a folder, builtin:NAME, or a hub id), unchecked."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in builtin_names():
            raise TeacherNotFound(
                f"no built-in teacher {source!r}; built-in teachers: {['builtin:' + n for n in builtin_names()]} "
                f"(re-make tiny-wan with `make teacher`)"
            )
        return BUILTIN_DIR / name
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TeacherNotFound(f"teacher {source!r} is a file; expected a diffusers pipeline folder")
        return path
    if _HUB_ID.match(source) and not source.startswith((".", "/")):
        return _from_hub(source, revision)
    raise TeacherNotFound(
        f"teacher {source!r}: no such folder. Accepted: a local diffusers pipeline folder, a hub id such as "
        f"'Wan-AI/Wan2.1-T2V-1.3B-Diffusers' (online), or one of {['builtin:' + n for n in builtin_names()]}"
    )


def open_teacher(source: str, revision: str | None = None, family: str | None = None):
    """(family, folder) of the checkpoint named by `source`, checked by its family; no weights are read."""
    folder = resolve_folder(source, revision)
    return check_pipeline_folder(folder, source, family), folder


def resolve(source: str, revision: str | None = None, family: str | None = None) -> Path:
    """The local folder of a checkpoint named by `source`, checked by its family."""
    return open_teacher(source, revision, family)[1]


def checkpoint_defaults(source: str) -> dict:
    """Sampler and video defaults stored in a checkpoint folder (shipped teachers carry them), else {}."""
    folder = resolve(source)
    path = folder / DEFAULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
