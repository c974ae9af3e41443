"""Training data: prompts (from a file or the toy world), clean latents x0 for each example, text embeddings, and a
deterministic, resumable order over them.

The order is a pure function of (seed, position): example number p of the run (counted over all ranks) is
`perm(seed, p // N)[p % N]`, so a resumed run needs only the step it stopped at to continue with the same batches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from distill import toyworld
from distill.core.config import ConfigError
from distill.core.text import read_lines
from distill.teachers.config import TeacherConfig
from distill.train_config import DataConfig
from distill.videos import VideoSource
from distill.core.dist import gather_dict, rank_world
from distill.teachers.base import Teacher


# --- prompts ----------------------------------------------------------------------------------------------------
def load_prompts(source: str, column: str = "prompt") -> list[str]:
    """Prompts from a .txt file (one per line), a .jsonl / .parquet file or a saved `datasets` folder."""
    import datasets

    path = Path(source)
    if not path.exists():
        raise ConfigError(f"data.source: {source!r} does not exist (give 'toyworld', a .txt, .jsonl or .parquet file, "
                          f"or a folder written by datasets.Dataset.save_to_disk)")
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as err:
            raise ConfigError(f"data.source: {source!r} is not a saved datasets folder ({err})") from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise ConfigError(f"data.source: {source!r} holds splits {list(ds)} and none is 'train'")
            ds = ds["train"]
    elif path.suffix == ".txt":
        prompts = read_lines(path, "data.source:")
        ds = datasets.Dataset.from_dict({column: prompts})
    elif path.suffix in (".jsonl", ".json"):
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
    elif path.suffix == ".parquet":
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    else:
        raise ConfigError(f"data.source: {source!r} has suffix {path.suffix!r}; use .txt, .jsonl, .parquet or a "
                          f"saved datasets folder")
    if column not in ds.column_names:
        raise ConfigError(f"data.source: {source!r} has no column {column!r} (data.prompt_column); it has "
                          f"{ds.column_names}")
    prompts = [str(p).strip() for p in ds[column]]
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ConfigError(f"data.source: {source!r}: rows {empty[:10]} have an empty {column!r}")
    if not prompts:
        raise ConfigError(f"data.source: {source!r} holds no prompts")
    return prompts


def cheap_size(cfg: DataConfig) -> int | None:
    """The number of examples, where it is known without loading anything heavy (the toy world's `size`, the lines
    of a .txt or .jsonl file); None otherwise (TrainData checks once it has the prompts)."""
    if cfg.source == "toyworld":
        return cfg.size
    path = Path(cfg.source)
    if cfg.latents != "real" and path.is_file() and path.suffix in (".txt", ".jsonl"):
        return len(read_lines(path, "data.source:"))
    return None


def check_batch_fits(cfg: DataConfig, examples: int, replicas: int) -> None:
    """One step's examples (data.batch_size per replica) must be distinct: a batch larger than the dataset would
    repeat examples inside a single step and train on a silently different objective, so it is refused."""
    per_step = cfg.batch_size * replicas
    if per_step > examples:
        where = f"data.size={examples} (toy world)" if cfg.source == "toyworld" else \
            f"data.source {cfg.source!r} holds {examples}"
        spread = f" per rank x {replicas} data-parallel replicas = {per_step}" if replicas > 1 else ""
        raise ConfigError(f"data.batch_size={cfg.batch_size}{spread} examples per step, but {where}: every step "
                          f"would repeat examples; lower data.batch_size, use fewer GPUs, or add data")


# --- helpers for sharded precomputation ---------------------------------------------------------------------------
def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _cached(path: Path, make) -> dict[str, torch.Tensor]:
    """`make()` on every rank (each computing its share), saved by rank 0 to `path`; later runs read the file."""
    if path.is_file():
        return load_file(path)
    tensors = make()
    rank, world = rank_world()
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, tmp)
        tmp.replace(path)
    if world > 1:
        dist.barrier()
    return tensors


# --- the dataset --------------------------------------------------------------------------------------------------
@dataclass
class Batch:
    index: torch.Tensor  # [B] example numbers
    prompts: list[str]
    x0: torch.Tensor  # [B, C, T, H, W] normalised clean latents


class TrainData:
    """Examples (prompt, x0) with cached text embeddings; `batch(position, n)` is deterministic."""

    def __init__(self, cfg: DataConfig, teacher: Teacher, teacher_cfg: TeacherConfig, checkpoint_id: str,
                 cache_dir: Path, progress: bool = True, shard: tuple[int, int] | None = None):
        self.cfg, self.teacher, self.teacher_cfg, self.checkpoint_id = cfg, teacher, teacher_cfg, checkpoint_id
        # (index, count) of this rank's share of the precomputed latents: one per rank, or one per sequence-parallel
        # group, whose ranks then compute the same clips together
        self.shard = shard
        self.video = teacher_cfg.video
        self.cache_dir = Path(cache_dir)
        self.progress = progress
        if cfg.source == "toyworld":
            # Captions are cheap; the clips are rendered only if their latents are not cached yet.
            self.prompts = [a.caption() for a, _ in toyworld.sample_examples(cfg.split, cfg.size, cfg.seed)]
        elif cfg.latents == "real":  # a folder of videos with captions, or a saved dataset with a video column
            v = self.video
            self._videos = VideoSource(cfg.source, cfg.prompt_column, v.frames, v.height, v.width)
            self.prompts = self._videos.prompts
        else:
            self.prompts = load_prompts(cfg.source, cfg.prompt_column)
        # before any clip is encoded or sampled: a batch the data cannot fill is refused by name (the replicas are
        # known here only when shards are given; preflight checked the whole step for the sources it can count)
        check_batch_fits(cfg, len(self.prompts), self.shard[1] if self.shard else 1)
        self.x0 = self._latents()
        self.embeds: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.prompts)

    # x0 ---------------------------------------------------------------------------------------------------------
    def _latents(self) -> torch.Tensor:
        cfg, v, t, tc = self.cfg, self.video, self.teacher, self.teacher_cfg
        rank, world = rank_world()
        index, count = self.shard or (rank, world)
        mine = list(range(index, len(self.prompts), count))
        step = 16
        if cfg.latents == "real":
            key = _key("real", cfg.source, cfg.split if cfg.source == "toyworld" else self.prompts, cfg.size, cfg.seed,
                       v.frames, v.height, v.width, self.checkpoint_id)

            def make():
                if cfg.source == "toyworld":
                    toy = toyworld.dataset(cfg.split, cfg.size, cfg.seed, v.frames, v.height, v.width)
                    clips_of = lambda idx: toy[idx]["video"]  # noqa: E731
                else:
                    clips_of = lambda idx: np.stack([self._videos.clip(i) for i in idx])  # noqa: E731
                out = {}
                for s in tqdm(range(0, len(mine), step), desc="encoding clips", disable=not self.progress or rank):
                    idx = mine[s:s + step]
                    clips = torch.from_numpy(clips_of(idx))
                    for i, z in zip(idx, t.encode_video(clips).cpu()):
                        out[str(i)] = z.contiguous()
                return gather_dict(out)
        else:
            sampler = tc.sampler
            key = _key("teacher", self.prompts, cfg.seed, v.frames, v.height, v.width, self.checkpoint_id,
                       sampler.model_dump(), tc.negative_prompt)

            def make():
                out = {}
                for s in tqdm(range(0, len(mine), step), desc="teacher samples for x0",
                              disable=not self.progress or rank):
                    idx = mine[s:s + step]
                    z = t.sample([self.prompts[i] for i in idx], steps=sampler.steps,
                                         guidance=sampler.guidance, shift=sampler.shift,
                                         seed=[cfg.seed * 1_000_003 + i for i in idx], sampler=sampler.name,
                                         negative=tc.negative_prompt, frames=v.frames, height=v.height,
                                         width=v.width)
                    for i, zi in zip(idx, z.cpu()):
                        out[str(i)] = zi.contiguous()
                return gather_dict(out)
        tensors = _cached(self.cache_dir / f"x0-{key}.safetensors", make)
        return torch.stack([tensors[str(i)] for i in range(len(self.prompts))])

    # text ---------------------------------------------------------------------------------------------------------
    def cache_text(self, extra_prompts: list[str] = ()) -> None:
        """Embed every distinct prompt once (trimmed to its real length) and the negative prompt."""
        t = self.teacher
        unique = sorted(set(self.prompts) | set(extra_prompts) | {self.teacher_cfg.negative_prompt})
        rank, world = rank_world()
        key = _key("text", unique, self.checkpoint_id, t.max_sequence_length)

        def make():
            out = {}
            mine = unique[rank::world]
            for s in tqdm(range(0, len(mine), 64), desc="text embeddings", disable=not self.progress or rank):
                chunk = mine[s:s + 64]
                emb = t.embed(chunk).cpu()
                for p, e in zip(chunk, emb):
                    out[_key(p)] = trim(e)
            return gather_dict(out)

        tensors = _cached(self.cache_dir / f"text-{key}.safetensors", make)
        self.embeds = {p: tensors[_key(p)] for p in unique}

    def embed(self, prompts: list[str]) -> torch.Tensor:
        """[B, L, D] embeddings, zero-padded to the teacher's max length exactly as its pipeline pads them."""
        if not self.embeds:
            return self.teacher.embed(prompts)
        length = self.teacher.max_sequence_length
        out = []
        for p in prompts:
            e = self.embeds[p]
            out.append(torch.cat([e, e.new_zeros(length - e.shape[0], e.shape[1])]))
        return torch.stack(out)

    # order --------------------------------------------------------------------------------------------------------
    def indices(self, position: int, n: int) -> torch.Tensor:
        """Example numbers for run positions [position, position + n)."""
        size = len(self)
        out = []
        for p in range(position, position + n):
            epoch, offset = divmod(p, size)
            out.append(_permutation(self.cfg.seed, epoch, size)[offset])
        return torch.tensor(out)

    def batch(self, position: int, n: int) -> Batch:
        idx = self.indices(position, n)
        return Batch(idx, [self.prompts[i] for i in idx.tolist()], self.x0[idx])


_PERM_CACHE: dict[tuple[int, int, int], list[int]] = {}


def _permutation(seed: int, epoch: int, size: int) -> list[int]:
    key = (seed, epoch, size)
    if key not in _PERM_CACHE:
        if len(_PERM_CACHE) > 4:
            _PERM_CACHE.clear()
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        _PERM_CACHE[key] = torch.randperm(size, generator=g).tolist()
    return _PERM_CACHE[key]


def trim(embedding: torch.Tensor) -> torch.Tensor:
    """Drop the zero padding rows the pipeline's prompt encoding appends (kept rows are the prompt's real tokens)."""
    nonzero = embedding.abs().sum(-1) > 0
    length = int(nonzero.nonzero().max()) + 1 if nonzero.any() else 0
    return embedding[:length].contiguous()
