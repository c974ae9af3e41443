"""Naming a teacher: a local folder, a hub id (online only), or `builtin:NAME` for checkpoints shipped here."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
DEFAULTS_FILE = "distill_teacher.json"  # sampler and video defaults a shipped checkpoint carries with it
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*/*"]


class TeacherNotFound(ValueError):
    """A teacher name that does not lead to a usable Wan checkpoint folder."""


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
                end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError) as err:
                problem = f"its header is not valid safetensors metadata ({err})"
            else:
                if 8 + length + end > size:
                    problem = f"it has {size} bytes but its tensors need {8 + length + end}"
    if problem:
        raise IncompleteWeights(f"weights file {str(path)!r} is incomplete or corrupt: {problem}; download or "
                                f"copy it again")


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
                f"is offline (HF_HUB_OFFLINE=1). Accepted offline: a local Wan checkpoint folder, or one of "
                f"{['builtin:' + n for n in builtin_names()]}."
            ) from None
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_PATTERNS))


def check_wan_folder(folder: Path, name: str) -> Path:
    index = folder / "model_index.json"
    if not index.is_file():
        raise TeacherNotFound(
            f"teacher {name!r}: {str(folder)!r} is not a diffusers checkpoint folder (no model_index.json); "
            f"expected a Wan text-to-video folder (WanPipeline) with transformer/, vae/, text_encoder/, tokenizer/"
        )
    try:
        cls = json.loads(index.read_text()).get("_class_name")
    except json.JSONDecodeError as err:
        raise TeacherNotFound(f"teacher {name!r}: {index} is not valid JSON ({err})") from None
    if cls != "WanPipeline":
        raise TeacherNotFound(
            f"teacher {name!r}: {index} names pipeline class {cls!r}; accepted: 'WanPipeline' "
            f"(Wan 2.1 / 2.2 text-to-video)"
        )
    missing = [sub for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler") if not (folder / sub).is_dir()]
    if missing:
        raise TeacherNotFound(f"teacher {name!r}: {str(folder)!r} lacks the component folders {missing}")
    return folder


def resolve(source: str, revision: str | None = None) -> Path:
    """The local folder of a Wan checkpoint named by `source`, checked to be one."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        folder = BUILTIN_DIR / name
        if name not in builtin_names():
            raise TeacherNotFound(
                f"no built-in teacher {source!r}; built-in teachers: {['builtin:' + n for n in builtin_names()]} "
                f"(re-make tiny-wan with `make teacher`)"
            )
        return check_wan_folder(folder, source)
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TeacherNotFound(f"teacher {source!r} is a file; expected a Wan checkpoint folder")
        return check_wan_folder(path, source)
    if _HUB_ID.match(source) and not source.startswith((".", "/")):
        return check_wan_folder(_from_hub(source, revision), source)
    raise TeacherNotFound(
        f"teacher {source!r}: no such folder. Accepted: a local Wan checkpoint folder, a hub id such as "
        f"'Wan-AI/Wan2.1-T2V-1.3B-Diffusers' (online), or one of {['builtin:' + n for n in builtin_names()]}"
    )


def checkpoint_defaults(source: str) -> dict:
    """Sampler and video defaults stored in a checkpoint folder (shipped teachers carry them), else {}."""
    folder = resolve(source)
    path = folder / DEFAULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def has_two_experts(folder: Path) -> bool:
    """Whether a Wan folder holds two expert DiTs (Wan 2.2 A14B: `transformer` and `transformer_2`)."""
    second = json.loads((Path(folder) / "model_index.json").read_text()).get("transformer_2")
    return isinstance(second, list) and bool(second) and second[0] is not None


def transformer_folder(path: str | Path) -> Path | None:
    """The DiT's folder inside a Wan pipeline folder, or `path` itself when it is a transformer folder; None when
    it is neither (no config.json there)."""
    path = Path(path)
    for candidate in (path / "transformer", path):
        if (candidate / "config.json").is_file():
            return candidate
    return None
