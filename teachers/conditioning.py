"""Cached conditioning: each distinct text embedded once per text encoder, reused across clips, models and calls.

An eval samples every model on the same prompts, and a few-step student's clip costs little more than its text
encoding and decode; re-encoding every prompt for every model, seed and batch is work done again for the same
numbers. `CondCache.encode(teacher, prompts, negative)` gives what `teacher.encode(prompts, negative)` gives (the
contract's `Cond`), built from per-text embeddings (`Teacher.embed`) held in two layers:

    memory   a dict in this process: a text seen before in this call is not embedded again
    disk     one safetensors file per text under a folder (optional): later calls read it back

An entry is keyed by the encoder's identity (`Family.encoder_hash`: the text encoder's and tokenizer's files, not
the DiT's, so a student export that kept its teacher's encoder shares the teacher's entries), the text, the
maximum sequence length, the embeddings' dtype and the device type. It holds the embedding trimmed of its zero
padding rows (the contract keeps them exactly zero) and is re-padded on use, so a cached `Cond` is the uncached one
bit for bit where the encoder gives a text the same rows whatever else is in its batch (the tiny CPU teachers do;
a GPU's batched kernels may differ in the last bit between batch sizes, as the uncached path already does between
two batchings of the same prompts). Files are written atomically (a temporary file renamed into place); one that
does not verify (unreadable, another text or encoder in its metadata, a wrong shape or dtype) is named in one
warning, dropped and embedded again, never trusted and never a dead end. A text's prompt warnings (cut or unknown
words) come when it is embedded; an entry read back from disk was checked when it was written.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch

from distill.core.disk import writing
from distill.core.dist import rank_world
from distill.teachers.base import Cond, Teacher, prompt_list

SCHEMA = "distill.cond/1"
EMBED_BATCH = 32  # texts per encoder forward when several are missing (bounds a large encoder's activations)


class CondCache:
    """Text embeddings by encoder and text. `folder` None: the memory layer only."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = None if folder is None else Path(folder).expanduser()
        self._memory: dict[str, torch.Tensor] = {}  # key -> trimmed [n, D] on the device it was made on
        self._encoders: dict[tuple[str, str], str] = {}  # (family, folder) -> encoder hash
        self.stats = {"embedded": 0, "memory": 0, "disk": 0, "dropped": 0}  # texts, by where they came from

    # --- the contract's encode, cached ----------------------------------------------------------------------------
    def encode(self, teacher: Teacher, prompts: list[str], negative: str | list[str] | None = "") -> Cond:
        """`teacher.encode(prompts, negative)`, each distinct text embedded at most once per encoder."""
        prompts = prompt_list(prompts)
        negatives = None if negative is None else [negative] * len(prompts) if isinstance(negative, str) \
            else list(negative)
        if negatives is not None and len(negatives) != len(prompts):
            raise ValueError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts; give one, or one "
                             f"per prompt")
        rows = self.embeddings(teacher, prompts + (negatives or []))
        pos = torch.stack(rows[:len(prompts)])
        return Cond(pos, None if negatives is None else torch.stack(rows[len(prompts):]))

    def embeddings(self, teacher: Teacher, texts: list[str]) -> list[torch.Tensor]:
        """[L, D] embeddings of `texts` (L the teacher's max sequence length, zero-padded), one per text, in order."""
        encoder = self.encoder_id(teacher)
        keys = [self.key(encoder, teacher, text) for text in texts]
        found: dict[str, torch.Tensor] = {}
        missing: dict[str, str] = {}  # key -> text, first occurrence order
        for key, text in zip(keys, texts):
            if key in found or key in missing:
                continue
            if key in self._memory:
                found[key] = self._memory[key]
                self.stats["memory"] += 1
            elif (entry := self._read(key, text, encoder, teacher)) is not None:
                found[key] = self._memory[key] = entry
                self.stats["disk"] += 1
            else:
                missing[key] = text
        if missing:
            items = list(missing.items())
            for start in range(0, len(items), EMBED_BATCH):
                chunk = items[start:start + EMBED_BATCH]
                embeds = teacher.embed([text for _, text in chunk])
                for (key, text), row in zip(chunk, embeds):
                    entry = trim(row)
                    found[key] = self._memory[key] = entry
                    self.stats["embedded"] += 1
                    self._write(key, text, encoder, entry)
        length = teacher.max_sequence_length
        return [pad(found[key], length).to(teacher.device) for key in keys]

    # --- keys -----------------------------------------------------------------------------------------------------
    def encoder_id(self, teacher: Teacher) -> str:
        where = (teacher.family.name, str(Path(teacher.folder).resolve()))
        if where not in self._encoders:
            self._encoders[where] = teacher.family.encoder_hash(Path(teacher.folder))
        return self._encoders[where]

    @staticmethod
    def key(encoder: str, teacher: Teacher, text: str) -> str:
        parts = [encoder, text, teacher.max_sequence_length, str(teacher.dtype), teacher.device.type]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]

    # --- the disk layer -------------------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def _read(self, key: str, text: str, encoder: str, teacher: Teacher) -> torch.Tensor | None:
        """The entry of `key` if its file verifies, else None (a bad file named in a warning and removed)."""
        if self.folder is None:
            return None
        path = self.path(key)
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                tensor = f.get_tensor("embeds") if "embeds" in f.keys() else None
        except Exception as err:  # safetensors raises its own SafetensorError, OSError, ValueError
            problem = f"is unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        else:
            problem = self._problem(meta, tensor, text, encoder, teacher)
        if problem is None:
            return tensor.to(teacher.device)
        self.stats["dropped"] += 1
        if rank_world()[0] == 0:
            warnings.warn(f"conditioning cache entry {str(path)!r} {problem}; dropping it and embedding the text "
                          f"again", stacklevel=4)
        path.unlink(missing_ok=True)
        return None

    @staticmethod
    def _problem(meta: dict, tensor: torch.Tensor | None, text: str, encoder: str, teacher: Teacher) -> str | None:
        if tensor is None:
            return "holds no 'embeds' tensor"
        if meta.get("schema") != SCHEMA:
            return f"has schema {meta.get('schema')!r}, not {SCHEMA!r}"
        if meta.get("encoder") != encoder or meta.get("text") != text:
            return (f"belongs to text {meta.get('text')!r} of encoder {meta.get('encoder')!r}, not {text!r} of "
                    f"{encoder!r}")
        if tensor.dtype != teacher.dtype or tensor.dim() != 2 or tensor.shape[0] > teacher.max_sequence_length:
            return (f"holds {tensor.dtype} {tuple(tensor.shape)}, not {teacher.dtype} [<= "
                    f"{teacher.max_sequence_length}, D]")
        return None

    def _write(self, key: str, text: str, encoder: str, entry: torch.Tensor) -> None:
        if self.folder is None:
            return
        from safetensors.torch import save_file

        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: ranks may write the same entry
        self.folder.mkdir(parents=True, exist_ok=True)
        with writing(tmp, "the conditioning cache entry", entry.numel() * entry.element_size() + 4096):
            save_file({"embeds": entry.detach().cpu().contiguous()}, str(tmp),
                      metadata={"schema": SCHEMA, "encoder": encoder, "text": text})
        os.replace(tmp, path)


def trim(embedding: torch.Tensor) -> torch.Tensor:
    """[L, D] -> [n, D]: the trailing padding rows (exactly zero by the contract) dropped."""
    nonzero = embedding.abs().sum(-1) > 0
    length = int(nonzero.nonzero().max()) + 1 if nonzero.any() else 0
    return embedding[:length].contiguous()


def pad(embedding: torch.Tensor, length: int) -> torch.Tensor:
    """[n, D] -> [length, D], zero rows appended as the pipelines pad them."""
    if embedding.shape[0] == length:
        return embedding
    return torch.cat([embedding, embedding.new_zeros(length - embedding.shape[0], embedding.shape[1])])
