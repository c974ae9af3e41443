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
    ds = load_table(source, column)
    prompts = [str(p).strip() for p in ds[column]]
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ConfigError(f"data.source: {source!r}: rows {empty[:10]} have an empty {column!r}")
    if not prompts:
        raise ConfigError(f"data.source: {source!r} holds no prompts")
    return prompts


def load_table(source: str, column: str = "prompt", key: str = "data.prompt_column"):
    """A prompt source as a `datasets.Dataset` that has `column` (`key`: the config key that named it)."""
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
        raise ConfigError(f"data.source: {source!r} has no column {column!r} ({key}); it has {ds.column_names}")
    return ds


# --- conditioning images --------------------------------------------------------------------------------------------
def image_source(cfg: DataConfig, image_input: str) -> str | None:
    """Where a run's conditioning images come from, for a teacher whose `image_input` is "none", "optional" or
    "required": "column" (data.image_column), "first_frame" (each real clip's first frame, for a teacher that takes
    an image), or None (text only)."""
    if cfg.image_column is not None:
        return "column"
    if image_input != "none" and cfg.latents == "real":
        return "first_frame"
    return None


def check_image_data(cfg: DataConfig, image_input: str, teacher: str, validation_prompts: list[str] = ()) -> None:
    """Refuse, from the config alone, data that cannot condition this teacher (ConfigError naming the key)."""
    column, source = cfg.image_column, cfg.source
    if column is not None:
        if image_input == "none":
            raise ConfigError(f"data.image_column: {column!r}, but teacher {teacher!r} is a text-to-video "
                              f"checkpoint; it takes no image (remove data.image_column)")
        if cfg.latents == "real":
            raise ConfigError(f"data.image_column: {column!r} is read from a prompt source (data.latents: teacher); "
                              f"with real clips (data.latents: real) each clip's first frame conditions it (remove "
                              f"data.image_column)")
        if source == "toyworld" or Path(source).suffix == ".txt":
            raise ConfigError(f"data.image_column: {column!r}, but data.source {source!r} has no columns; give a "
                              f".jsonl, .parquet or saved datasets folder with a {column!r} column")
    if image_input == "required" and image_source(cfg, image_input) is None:
        raise ConfigError(f"teacher {teacher!r} is an image-to-video checkpoint and data.source {source!r} gives no "
                          f"image: use real clips (data.latents: real, each clip's first frame conditions it) or "
                          f"set data.image_column")
    if image_source(cfg, image_input) is not None and validation_prompts:
        raise ConfigError("train.validation_prompts: an image-conditioned run validates on its first training "
                          "examples with their images; remove train.validation_prompts")


def load_images(source: str, column: str) -> list:
    """The RGB PIL image of every row of a prompt source's `column` (file paths relative to the source's folder, or
    images); a missing, empty or unreadable one is refused naming the source, the row and the column."""
    from distill.teachers.base import load_image

    path = Path(source)
    base = path if path.is_dir() else path.parent
    images = []
    for row, value in enumerate(load_table(source, column, "data.image_column")[column]):
        what = f"data.source {source!r} row {row} column {column!r}:"
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ConfigError(f"{what} no image")
        if isinstance(value, str):
            value = base / value.strip()
        try:
            images.append(load_image(value, f"{what} image"))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return images


def image_digest(image) -> str:
    """The identity of an image's pixels (an RGB PIL image or a uint8 [H, W, 3] array), whatever file held it."""
    pixels = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    return hashlib.sha256(str(pixels.shape).encode() + pixels.tobytes()).hexdigest()[:32]


def as_pil(image):
    from PIL import Image

    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))


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
    # each example's encoded conditioning image (`Cond.image_latents`, `Cond.image_embeds`); None: text only
    image_latents: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None


def own(row: torch.Tensor) -> torch.Tensor:
    """A contiguous copy with its own storage: a row of a batch is a view, and gathering it across ranks (a pickle)
    or saving it would carry the whole batch (the image-to-video compare's ranks reached 12 GB that way)."""
    return row.clone(memory_format=torch.contiguous_format)


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
        # the conditioning images: read (and a bad one refused) before any clip is encoded or sampled
        self.image_source = image_source(cfg, getattr(teacher, "image_input", "none"))
        check_image_data(cfg, getattr(teacher, "image_input", "none"), teacher_cfg.name)
        self.images = load_images(cfg.source, cfg.image_column) if self.image_source == "column" else None
        self.x0 = self._latents()  # real clips' first frames, when they condition, come with them
        self.image_latents = self.image_embeds = None
        self.images_encoded = 0  # distinct images encoded by this run (the others came from the cache)
        if self.images is not None:
            self.image_latents, self.image_embeds = self._encode_images(self.images)
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
        first_frames = self.image_source == "first_frame"
        if cfg.latents == "real":
            key = _key("real", cfg.source, cfg.split if cfg.source == "toyworld" else self.prompts, cfg.size, cfg.seed,
                       v.frames, v.height, v.width, self.checkpoint_id, *(["first_frames"] if first_frames else []))

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
                        out[str(i)] = own(z)
                    if first_frames:  # each clip's conditioning image, read with it
                        for i, clip in zip(idx, clips):
                            out[f"first-{i}"] = own(clip[0])
                return gather_dict(out)
        else:
            sampler = tc.sampler
            images = self.images
            key = _key("teacher", self.prompts, cfg.seed, v.frames, v.height, v.width, self.checkpoint_id,
                       sampler.model_dump(), tc.negative_prompt,
                       *([[image_digest(im) for im in images]] if images is not None else []))

            def make():
                out = {}
                for s in tqdm(range(0, len(mine), step), desc="teacher samples for x0",
                              disable=not self.progress or rank):
                    idx = mine[s:s + step]
                    z = t.sample([self.prompts[i] for i in idx], steps=sampler.steps,
                                         guidance=sampler.guidance, shift=sampler.shift,
                                         seed=[cfg.seed * 1_000_003 + i for i in idx], sampler=sampler.name,
                                         negative=tc.negative_prompt, frames=v.frames, height=v.height,
                                         width=v.width, images=None if images is None else [images[i] for i in idx])
                    for i, zi in zip(idx, z.cpu()):
                        out[str(i)] = own(zi)
                return gather_dict(out)
        tensors = _cached(self.cache_dir / f"x0-{key}.safetensors", make)
        if first_frames:
            self.images = [tensors[f"first-{i}"].numpy() for i in range(len(self.prompts))]
        return torch.stack([tensors[str(i)] for i in range(len(self.prompts))])

    # images ---------------------------------------------------------------------------------------------------------
    def _encode_images(self, images: list) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every example's image through the teacher's `encode_images`, each distinct image once, cached one file
        per image under <cache>/images keyed by its pixels, the clip size and the image encoders' hash (a changed
        image or encoder is encoded anew, never read stale)."""
        t, v = self.teacher, self.video
        size = (v.frames, v.height, v.width)
        encoder = t.family.image_encoder_hash(t.folder)
        keys = [_key("image", image_digest(im), size, encoder) for im in images]
        first = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        folder = self.cache_dir / "images"
        missing = [k for k in first if not (folder / f"{k}.safetensors").is_file()]
        rank, world = rank_world()
        mine = missing[rank::world]
        out = {}
        for s in tqdm(range(0, len(mine), 16), desc="encoding images", disable=not self.progress or rank):
            chunk = mine[s:s + 16]
            latents, embeds = t.encode_images([as_pil(images[first[k]]) for k in chunk], size)
            for j, k in enumerate(chunk):
                out[k] = {"latents": own(latents[j].cpu())}
                if embeds is not None:
                    out[k]["embeds"] = own(embeds[j].cpu())
        out = gather_dict(out)
        if rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            for k, tensors in out.items():
                tmp = folder / f"{k}.safetensors.tmp"
                save_file(tensors, tmp)
                tmp.replace(folder / f"{k}.safetensors")
        if world > 1:
            dist.barrier()
        self.images_encoded = len(missing)
        entries = {k: out[k] if k in out else load_file(folder / f"{k}.safetensors") for k in first}
        latents = torch.stack([entries[k]["latents"] for k in keys])
        has_embeds = "embeds" in entries[keys[0]]
        return latents, torch.stack([entries[k]["embeds"] for k in keys]) if has_embeds else None

    def image_conditioning(self, idx: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(image_latents, image_embeds) of examples `idx` (None, None for a text-only run)."""
        pick = lambda x: None if x is None else x[idx]  # noqa: E731
        return pick(self.image_latents), pick(self.image_embeds)

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
        return Batch(idx, [self.prompts[i] for i in idx.tolist()], self.x0[idx], *self.image_conditioning(idx))


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
