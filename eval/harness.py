"""The eval harness: sample every model on the same prompts and seeds, score what each student kept and lost
against the teacher, with intervals, and time it.

`eval` never knows how a student was trained: a model here is a pipeline folder of a registered teacher family (the
teacher, or a student's export)
plus sampler settings. Prompts and real clips come resolved from the caller.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from distill.core.config import ConfigError
from distill.core.disk import writing
from distill.core.dist import gather_dict, rank_world
from distill.core.env import environment
from distill.core.hashing import checkpoint_hash
from distill.core.paths import check_output_dir
from distill.eval import flicker, metrics, stats
from distill.eval.diversity import pairwise_diversity
from distill.eval.schema import SCHEMA
from distill.eval.suite import ModelSpec, SuiteConfig, clip_seed, first_images_for
from distill.teachers.parallel import Layout, make_layout
from distill.teachers.base import DTYPES, Teacher, pick_device
from distill.teachers.conditioning import CondCache
from distill.teachers.decoders import VideoDecoder, check_decoder, decoder_folder, load_decoder
from distill.teachers.resolve import checkpoint_defaults, open_teacher
from distill.teachers.samplers import LEGACY_GRID

RealClips = Callable[[str, int], np.ndarray]  # (prompt, seed) -> uint8 [T, H, W, 3]


@dataclass
class Candidate:
    """One model under evaluation: a loaded pipeline folder and how it is sampled."""

    spec: ModelSpec
    teacher: Teacher
    steps: int
    sampler: str
    guidance: float
    shift: float
    negative: str
    ckpt_hash: str
    grid: object = None  # the consistency sampler's levels (a rule or explicit levels); None: the legacy grid
    conditioning: CondCache | None = None  # shared by every model of an eval; None: each clip's text encoded
    decoder: VideoDecoder | None = None  # a distilled decoder in place of the family's VAE (spec.decoder)
    decoder_hash: str | None = None
    # an image-to-video suite's first images encoded once per image and clip size, shared by the models of one
    # loaded checkpoint: (image sha256, size) -> (image_latents [1, ...], image_embeds [1, ...] or None)
    image_conds: dict | None = None

    @property
    def takes_images(self) -> bool:
        """Whether this model is conditioned on a suite's first images (a text-to-video model is not)."""
        return self.teacher.image_input != "none"

    @property
    def nfe(self) -> int:
        return self.steps * (2 if self.guidance > 1 else 1)

    def cache_key(self, prompt: str, seed: int, frames: int, height: int, width: int,
                  image: np.ndarray | None = None) -> str:
        key = [self.ckpt_hash, self.steps, self.sampler, self.guidance, self.shift, self.negative,
               self.teacher.max_sequence_length, str(self.teacher.dtype), prompt, seed, frames, height, width]
        if self.teacher.guidance_2 is not None:  # a two-expert teacher's own low-noise guidance
            key.append(self.teacher.guidance_2)
        if self.grid not in (None, LEGACY_GRID):  # the legacy grid keeps the keys of clips cached before the choice
            key.append(self.grid if isinstance(self.grid, str) else list(self.grid))
        if self.decoder_hash is not None:  # the VAE keeps the keys of clips cached before decoders
            key.append(["decoder", self.decoder_hash])
        if image is not None and self.takes_images:  # a clip is its first image's as much as its prompt's
            key.append(["image", image_hash(image)])
        text = json.dumps(key)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def sample(self, prompts: list[str], seeds: list[int], frames: int, height: int, width: int,
               timing: dict | None = None, decode: bool = True, cached_text: bool = True,
               images: list[np.ndarray] | None = None) -> np.ndarray | None:
        """uint8 clips [B, T, H, W, 3]; `timing` (if given) receives text/denoise/decode seconds, synchronised, and
        the time to the first frame: a distilled decoder's clip is then decoded as a stream (frames as latent frames
        arrive), the VAE's at once (its first frame comes with its last).
        `decode=False` stops after denoising (the other ranks of a sequence-parallel group) and returns None.
        `cached_text=False` runs the text encoder even where the conditioning cache holds the prompts (a timed
        clip of a new prompt), and the image encoder on `images` (uint8 [H, W, 3], one per prompt: an image-to-video
        model's first frames; a text-to-video model ignores them)."""
        t = self.teacher
        sync = torch.cuda.synchronize if t.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        negative = self.negative if self.guidance > 1 else None
        if cached_text and self.conditioning is not None:
            cond = self.conditioning.encode(t, prompts, negative)
        else:
            cond = t.encode(prompts, negative)
        if images is not None and self.takes_images:
            cond = cond.with_image(*self._image_cond(images, (frames, height, width), cached_text))
        sync()
        t1 = time.perf_counter()
        latents = t.sample(prompts, steps=self.steps, guidance=self.guidance, shift=self.shift, seed=seeds,
                           sampler=self.sampler, frames=frames, height=height, width=width, cond=cond,
                           grid=self.grid)
        sync()
        t2 = time.perf_counter()
        if not decode:
            return None
        video, first_frame = self._decode(latents, stream=timing is not None, sync=sync)
        t3 = time.perf_counter()
        if timing is not None:
            timing.update(text_s=t1 - t0, denoise_s=t2 - t1, decode_s=t3 - t2, total_s=t3 - t0,
                          first_frame_s=(first_frame or t3) - t0)
        return video

    def _decode(self, latents: torch.Tensor, stream: bool, sync) -> tuple[np.ndarray, float | None]:
        """The clip and the clock when its first frame was ready: a distilled decoder streams when `stream` (its first
        frame after one latent frame); None where every frame comes at once (the VAE), with the last."""
        if self.decoder is None or not stream:
            video = (self.teacher.decode(latents) if self.decoder is None else self.decoder.decode(latents)).numpy()
            sync()
            return video, None
        parts, first_frame = [], None
        for part in self.decoder.decode_stream(latents):
            sync()
            first_frame = first_frame or time.perf_counter()
            parts.append(part)
        return torch.cat(parts, dim=1).numpy(), first_frame

    def _image_cond(self, images: list[np.ndarray], size: tuple[int, int, int], cached: bool):
        """The image conditioning of `images` for clips of `size`, each distinct image encoded once (unless
        `cached` is False: a timed clip pays its encoding)."""
        from PIL import Image

        t = self.teacher
        if not cached or self.image_conds is None:
            return t.encode_images([Image.fromarray(im) for im in images], size)
        keys = [(image_hash(im), size) for im in images]
        new = {k: im for k, im in zip(keys, images) if k not in self.image_conds}
        if new:
            latents, embeds = t.encode_images([Image.fromarray(im) for im in new.values()], size)
            for i, k in enumerate(new):
                self.image_conds[k] = (latents[i:i + 1], None if embeds is None else embeds[i:i + 1])
        latents = torch.cat([self.image_conds[k][0] for k in keys])
        embeds = None if self.image_conds[keys[0]][1] is None else torch.cat([self.image_conds[k][1] for k in keys])
        return latents, embeds


def image_hash(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


@dataclass
class Prepared:
    """What `Harness.preflight` checked and loaded: the models (the reference first) and the metric networks."""

    names: list[str]
    specs: list[ModelSpec]
    candidates: dict[str, Candidate]
    scorers: metrics.Scorers


@dataclass
class Scored:
    """Every model's per-clip values and features, the inputs of its eval.json record."""

    roles: dict[str, str]
    values: dict[str, dict[str, np.ndarray]]
    static: dict[str, tuple[np.ndarray, np.ndarray]]
    feats: dict[str, dict[str, np.ndarray]]  # model -> feature network -> [N, D]
    div: dict[str, np.ndarray]  # the suite's detector only
    timings: dict[str, dict]
    is_static_prompt: np.ndarray
    real: dict[str, np.ndarray] | None = None  # feature network -> [N, D]
    floor: dict[str, np.ndarray] | None = None


class Harness:
    def __init__(self, suite: SuiteConfig, teacher_cfg, prompts: list[str], out_dir: Path,
                 cache_dir: Path | None = None, real_clips: RealClips | None = None, progress: bool = True,
                 sequence: int = 1):
        """`sequence`: ranks per clip under torchrun. With N > 1, each clip's tokens are split over N consecutive
        ranks in every DiT forward (DeepSpeed-Ulysses, distill.teachers.parallel), and the world/N groups share the
        clips out; with 1, each rank samples its own clips."""
        if not prompts:
            raise ValueError(f"suite {suite.name!r} resolved to an empty prompt list")
        self.suite, self.teacher_cfg, self.prompts = suite, teacher_cfg, prompts
        self.out_dir = Path(out_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else self.out_dir / "cache"
        # every model and seed of a prompt reads one embedding per text encoder; kept beside the clips for reruns
        self.conditioning = CondCache(self.cache_dir / "conditioning")
        self.real_clips = real_clips
        self.progress = progress
        self._loaded: dict[str, Teacher] = {}
        self._decoders: dict[str, VideoDecoder] = {}
        self._image_conds: dict[str, dict] = {}  # per loaded checkpoint: its encoded first images
        self._hashes: dict[str, str] = {}
        self.items = [(p, clip_seed(suite, i, k)) for i, p in enumerate(prompts)
                      for k in range(suite.seeds_per_prompt)]
        # the prompt of each clip: seeds of one prompt share its effect, so intervals resample prompts
        self.clusters = np.repeat(np.arange(len(prompts)), suite.seeds_per_prompt)
        self.slots = np.tile(np.arange(suite.seeds_per_prompt), len(prompts))  # each clip's seed within its prompt
        self._prepared: Prepared | None = None
        # each prompt's first image, uint8 [P, H, W, 3] (image-to-video suites; None otherwise): read in preflight
        self.first_images: np.ndarray | None = None
        self.sequence = sequence
        self._layout: Layout | None = None

    @property
    def layout(self) -> Layout:
        """The ranks' sequence-parallel groups (made once, collectively, on first use)."""
        if self._layout is None:
            try:
                self._layout = make_layout(self.sequence, "--sequence")
            except ValueError as err:
                raise ConfigError(str(err)) from None
        return self._layout

    # --- models ---------------------------------------------------------------------------------------------
    def _open(self, source: str):
        """(family, folder) of a model's source: the teacher's family as its config says, a student's as its
        folder says."""
        c = self.teacher_cfg
        is_teacher = source == c.source
        return open_teacher(source, c.revision if is_teacher else None, c.family if is_teacher else None)

    def _load(self, source: str) -> Teacher:
        if source not in self._loaded:
            c = self.teacher_cfg
            family, folder = self._open(source)
            guidance_2 = c.sampler.guidance_2 if source == c.source else None
            model = family.load(folder, DTYPES[c.dtype], pick_device(c.device), c.max_sequence_length, guidance_2)
            self._loaded[source] = model.shard_sequence(self.layout.group)  # a no-op without a group
            if self.suite.compile:  # preflight checked that this device compiles
                from distill.teachers.compiling import compile_dit

                compile_dit(model)
            self._hashes[source] = checkpoint_hash(folder)
        return self._loaded[source]

    def candidate(self, spec: ModelSpec) -> Candidate:
        c = self.teacher_cfg
        is_teacher = spec.source == "teacher"
        source = c.source if is_teacher else spec.source
        # A student folder (a `distill export`) carries the sampler it was distilled for.
        own = {} if is_teacher else checkpoint_defaults(source).get("sampler", {})
        fallback = c.sampler.guidance if is_teacher else 1.0
        guidance = next(v for v in (spec.guidance, own.get("guidance"), fallback) if v is not None)
        shift = next(v for v in (spec.shift, own.get("shift"), c.sampler.shift) if v is not None)
        sampler = spec.sampler or own.get("name") or "euler"
        # an export records its grid (absent: exported before the choice, the legacy grid); explicit levels hold
        # for their own step count only
        grid = c.sampler.grid if is_teacher else own.get("grid")
        if sampler == "consistency" and grid is not None and not isinstance(grid, str) and len(grid) != spec.steps:
            raise ConfigError(f"model {spec.name!r}: {source!r} samples on the explicit {len(grid)}-level grid "
                              f"{list(grid)}; evaluate it @{len(grid)}, not @{spec.steps}")
        teacher = self._load(source)
        decoder = self._load_decoder(spec.decoder, teacher.device) if spec.decoder is not None else None
        return Candidate(spec, teacher, spec.steps, sampler, guidance, shift, c.negative_prompt,
                         self._hashes[source], grid, self.conditioning, decoder,
                         self._hashes[spec.decoder] if decoder is not None else None,
                         self._image_conds.setdefault(source, {}))

    def _load_decoder(self, path: str, device) -> VideoDecoder:
        """A distilled decoder (checked against its model's latents in preflight), loaded once per folder."""
        if path not in self._decoders:
            folder = decoder_folder(path)
            decoder = load_decoder(folder, device)
            if self.suite.compile:  # preflight checked that this device compiles
                from distill.teachers.compiling import compile_decoder

                compile_decoder(decoder)
            self._decoders[path] = decoder
            self._hashes[path] = checkpoint_hash(folder)
        return self._decoders[path]

    def reference(self) -> ModelSpec:
        s = self.teacher_cfg.sampler
        return ModelSpec(name=f"teacher@{s.steps}", source="teacher", steps=s.steps, sampler=s.name,
                         guidance=s.guidance, shift=s.shift, role="teacher")

    # --- sampling with a per-clip cache -------------------------------------------------------------------------
    def clips(self, cand: Candidate, items: list[tuple[str, int]], desc: str) -> np.ndarray:
        s, layout = self.suite, self.layout
        rank, world = rank_world()
        images = [self.first_image(p) for p, _ in items] if cand.takes_images else [None] * len(items)
        keys = [cand.cache_key(p, seed, s.frames, s.height, s.width, im) for (p, seed), im in zip(items, images)]
        paths = [self.cache_dir / f"{k}.npy" for k in keys]
        cached = {i: clip for i, path in enumerate(paths) if (clip := self._cached_clip(path, rank)) is not None}
        # each group of `sequence` ranks samples its share of the clips together; its first rank keeps them
        todo = [i for i in range(len(paths)) if i not in cached and i % layout.data_world == layout.data_rank]
        made: dict[int, np.ndarray] = {}
        for start in tqdm(range(0, len(todo), s.batch_size), desc=desc, disable=not self.progress or rank,
                          unit="batch"):
            chunk = todo[start:start + s.batch_size]
            videos = cand.sample([items[i][0] for i in chunk], [items[i][1] for i in chunk], s.frames, s.height,
                                 s.width, decode=layout.leader,
                                 images=[images[i] for i in chunk] if cand.takes_images else None)
            if videos is not None:
                made.update(zip(chunk, videos))
        made = gather_dict(made)
        if rank == 0:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            for i, video in made.items():  # a re-sampled clip replaces a damaged entry
                tmp = paths[i].with_suffix(".tmp.npy")
                with writing(tmp, "the clip cache entry", video.nbytes + 128):
                    np.save(tmp, video)
                os.replace(tmp, paths[i])
        if world > 1:
            torch.distributed.barrier()
        return np.stack([made[i] if i in made else cached[i] for i in range(len(items))])

    def _cached_clip(self, path: Path, rank: int) -> np.ndarray | None:
        """The cached clip at `path` if it verifies (a readable .npy of uint8 [T, H, W, 3] at the suite's size),
        else None: a damaged entry (a killed write, a full disk, a foreign file) is named in one warning and
        sampled again, never trusted and never a dead end for every later rerun."""
        if not path.is_file():
            return None
        s = self.suite
        want = (s.frames, s.height, s.width, 3)
        try:
            clip = np.load(path, allow_pickle=False)
            problem = None if (clip.dtype == np.uint8 and clip.shape == want) else \
                f"holds {clip.dtype} {tuple(clip.shape)}, not uint8 {want}"
        except (OSError, ValueError, EOFError) as err:
            clip, problem = None, f"is unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        if problem is None:
            return clip
        if rank == 0:
            warnings.warn(f"clip cache entry {str(path)!r} {problem}; dropping it and sampling the clip again",
                          stacklevel=2)
        return None

    def time_model(self, cand: Candidate) -> dict:
        """One clip at a time: `warmup` untimed clips, then the median of `clips` timed clips. A compiled DiT
        takes at least one warm-up clip: its first batch-1 forward compiles."""
        s = self.suite
        warmup = max(s.speed.warmup, 1) if s.compile else s.speed.warmup
        prompts = [self.prompts[i % len(self.prompts)] for i in range(warmup + s.speed.clips)]
        leader = self.layout.leader  # the other ranks of a sequence-parallel group only join the denoising
        runs = []
        for i, prompt in enumerate(prompts):
            timing: dict = {}
            cand.sample([prompt], [10_000 + i], s.frames, s.height, s.width, timing, decode=leader,
                        cached_text=s.speed.text == "cached",
                        images=[self.first_image(prompt)] if cand.takes_images else None)
            if i >= warmup:
                runs.append(timing)
        if not leader:
            return {}
        med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        video_seconds = s.frames / s.fps
        return {"latency_s": med["total_s"], "denoise_s": med["denoise_s"], "text_s": med["text_s"],
                "decode_s": med["decode_s"], "first_frame_s": med["first_frame_s"],
                "realtime_factor": video_seconds / med["total_s"],
                "runs": [r["total_s"] for r in runs]}

    def first_image(self, prompt: str) -> np.ndarray:
        """The suite's first image of `prompt` (an image-to-video suite; preflight read them)."""
        if self.first_images is None:
            raise ConfigError(f"suite {self.suite.name!r} has no first_images, and an image-to-video model needs "
                              f"one per prompt")
        return self.first_images[self.prompts.index(prompt)]

    # --- preflight: every input checked before the first clip is sampled ----------------------------------------
    def preflight(self, specs: list[ModelSpec]) -> Prepared:
        """Check the output and cache folders, every model folder and the clip size it allows, the pinned flow
        backend, the CLIP backend and the detector (the I3D file by its sha256; its frame protocol against the
        suite's clip length) and the real clips, and load what the eval will use. Anything wrong raises
        `ConfigError` with one line naming it, before any sampling. Idempotent for the same specs."""
        s = self.suite
        ref = self.reference()
        specs = [ref] + [m for m in specs if m.name != ref.name]
        names = [m.name for m in specs]
        if self._prepared is not None and self._prepared.names == names:
            return self._prepared
        if len(set(names)) != len(names):
            raise ConfigError(f"model names must be unique; got {names}")
        check_output_dir(self.out_dir, "the eval output folder")
        check_output_dir(self.cache_dir, "the clip cache folder")
        try:
            flow = flicker.resolve_flow_backend(s.flow)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"suite {s.name!r} key 'flow': {err}") from None
        self._check_detector_file()  # cheap, so a wrong I3D file or an absent V-JEPA 2 folder is refused before any
        # model is loaded
        self._check_suite_size()
        layout = self.layout  # a --sequence the job cannot take is refused here
        if s.compile:  # before any model loads: a device that cannot compile is refused, never run eager
            from distill.teachers.compiling import CompileUnavailable, check_compile

            try:
                check_compile(pick_device(self.teacher_cfg.device))
            except CompileUnavailable as err:
                raise ConfigError(f"suite {s.name!r} key 'compile' (--compile): {err}; run without it") from None
        candidates = {}
        for spec in specs:
            source = self.teacher_cfg.source if spec.source == "teacher" else spec.source
            try:
                family, folder = self._open(source)
                family.check_video_size(s.frames, s.height, s.width, family.video_factors(folder))
                if layout.sequence > 1:
                    self._check_split(family, folder)
                if s.first_images is None and family.image_input(folder) == "required":
                    raise ConfigError("an image-to-video checkpoint needs a first image per prompt; give the suite "
                                      "`first_images` (toyworld, or {prompt: file})")
                if spec.decoder is not None:  # made for this model's latents, before any weights load
                    factors = family.video_factors(folder)
                    check_decoder(spec.decoder, family.latent_channels(family.dit_config(folder)), factors.temporal,
                                  factors.spatial, what="decoder=")
                candidates[spec.name] = self.candidate(spec)
            except (ConfigError, ValueError, OSError) as err:
                raise ConfigError(f"model {spec.name!r} ({source}): {err}") from None
        scorers = self._scorers(flow)
        self.first_images = first_images_for(s, self.prompts)  # a missing or misfit image is refused by name
        if self.real_clips is not None:
            prompt, seed = self.items[0]
            try:
                real = np.asarray(self.real_clips(prompt, seed))
            except Exception as err:  # a renderer that cannot read the suite's prompts
                raise ConfigError(f"suite {s.name!r}: real clips for {prompt!r}: {err}") from None
            if real.shape != (s.frames, s.height, s.width, 3) or real.dtype != np.uint8:
                raise ConfigError(f"suite {s.name!r}: real clips are {real.dtype} {real.shape}, expected uint8 "
                                  f"{(s.frames, s.height, s.width, 3)}")
        self._prepared = Prepared(names, specs, candidates, scorers)
        return self._prepared

    def _check_suite_size(self) -> None:
        """A suite too small for its set metrics fails their intervals only after every clip was sampled (minutes
        to hours): refuse it here, saying how many prompts it needs."""
        s = self.suite
        need = metrics.min_prompts_for_sets(s.seeds_per_prompt)
        if len(self.prompts) < need:
            names = ", ".join(sorted({m.family.upper() for m in metrics.by_level("set")
                                      if m.family != "jedi" or s.jedi is not None}))
            raise ConfigError(
                f"suite {s.name!r} has {len(self.prompts)} prompt(s) x {s.seeds_per_prompt} seed(s); its set metrics "
                f"({names}: a covariance over clips, with a jackknife interval that leaves one prompt out) need at "
                f"least {need} prompts at {s.seeds_per_prompt} seed(s) per prompt; add prompts or raise "
                f"seeds_per_prompt")

    def _check_split(self, family, folder: Path) -> None:
        """Refuse, before the weights load, a DiT or a clip whose heads or tokens do not divide by --sequence."""
        s = self.suite
        try:
            family.check_sequence_split(folder, s.frames, s.height, s.width, self.sequence,
                                        f"clip {s.frames}x{s.height}x{s.width}")
        except ValueError as err:
            raise ConfigError(str(err).replace("parallel.sequence", "--sequence")) from None

    def _check_detector_file(self) -> None:
        s = self.suite
        if s.jedi is not None:
            from distill.eval.jedi import check_folder

            try:
                check_folder(s.jedi.path)
            except ConfigError as err:
                raise ConfigError(f"suite {s.name!r} key 'jedi.path': {err}") from None
        if s.detector != "i3d":
            return
        from distill.core.hashing import sha256_of_file
        from distill.eval.fvd import I3D_URL, PINNED_I3D_SHA256

        if not s.i3d_path:
            raise ConfigError(f"suite {s.name!r}: detector 'i3d' needs `i3d_path` (the TorchScript file)")
        path = Path(s.i3d_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"suite {s.name!r} key 'i3d_path': {str(path)!r} does not exist; download {I3D_URL}")
        actual = sha256_of_file(path)
        if actual != PINNED_I3D_SHA256:
            raise ConfigError(f"suite {s.name!r} key 'i3d_path': {str(path)!r} has sha256 {actual}, not the pinned "
                              f"I3D's {PINNED_I3D_SHA256}; refusing to load it")

    def _scorers(self, flow: str) -> metrics.Scorers:
        s = self.suite
        from distill.eval.clip_score import ClipBackend

        device = str(next(iter(self._loaded.values())).device) if self._loaded else "cpu"
        try:
            clip = ClipBackend.domain(device=device) if s.clip.backend == "domain" else \
                ClipBackend.open_clip(s.clip.model, s.clip.pretrained, device=device)
        except Exception as err:  # open_clip raises RuntimeError for an unknown tag offline, OSError for files
            raise ConfigError(f"suite {s.name!r} key 'clip': cannot load the CLIP backend ({s.clip.backend}"
                              f"{'' if s.clip.backend == 'domain' else f' {s.clip.model}/{s.clip.pretrained}'}): "
                              f"{err}") from None
        if s.detector == "domain-video-net":
            from distill.eval.domain_video_net import DomainVideoDetector

            try:
                detector = DomainVideoDetector()
            except (OSError, RuntimeError) as err:
                raise ConfigError(f"suite {s.name!r} key 'detector': {err}") from None
        else:
            from distill.eval.fvd import I3DDetector

            if not s.i3d_path:
                raise ConfigError(f"suite {s.name!r}: detector 'i3d' needs `i3d_path` (the TorchScript file)")
            try:
                detector = I3DDetector.from_file(s.i3d_path, device=device)
            except (OSError, ValueError, RuntimeError) as err:
                raise ConfigError(f"suite {s.name!r} key 'i3d_path': {err}") from None
        try:
            detector.check_frames(s.frames)
        except ValueError as err:
            raise ConfigError(f"suite {s.name!r}: {err}") from None
        return metrics.Scorers(clip=clip, clip_frames=s.clip.frames, detector=detector, flow=flow,
                               frames=s.frames, static_max_flow_px=s.static_filter.max_flow_px,
                               jedi=self._jedi_network(device))

    def _jedi_network(self, device: str):
        """JEDi's V-JEPA 2 features where the suite asks for them (eval/jedi.py), else None."""
        s = self.suite
        if s.jedi is None:
            return None
        from distill.eval.jedi import VJEPA2Features

        try:
            net = VJEPA2Features.from_folder(s.jedi.path, s.jedi.frames, device=device, batch_size=s.jedi.batch_size)
        except ConfigError as err:
            raise ConfigError(f"suite {s.name!r} key 'jedi.path': {err}") from None
        except ValueError as err:  # frames not a multiple of the model's tubelet
            raise ConfigError(f"suite {s.name!r} key 'jedi.frames': {err}") from None
        try:
            net.check_frames(s.frames)
        except ValueError as err:
            raise ConfigError(f"suite {s.name!r} key 'jedi.frames': {err}") from None
        return net

    # --- scoring --------------------------------------------------------------------------------------------
    def run(self, specs: list[ModelSpec]) -> dict:
        s, rank = self.suite, rank_world()[0]
        prep = self.preflight(specs)
        names, candidates, scorers = prep.names, prep.candidates, prep.scorers
        ref = names[0]
        captions = [p for p, _ in self.items]
        div_prompts = self.prompts[:s.diversity.prompts]
        div_items = [(p, s.seed + 500_000 + 1000 * i + k) for i, p in enumerate(div_prompts)
                     for k in range(s.diversity.seeds)]
        videos, div_videos = {}, {}
        for name, cand in candidates.items():
            videos[name] = self.clips(cand, self.items, f"sampling {name}")
            if div_items:
                div_videos[name] = self.clips(cand, div_items, f"diversity {name}")
        floor_videos = None
        if s.noise_floor:
            # The teacher on the next block of seeds (prompt i, seed + seeds_per_prompt .. 2 seeds_per_prompt - 1):
            # other noise, the same prompts; consecutive seed sets of a replication share these clips.
            floor_items = [(p, seed + s.seeds_per_prompt) for p, seed in self.items]
            floor_videos = self.clips(candidates[ref], floor_items, "noise floor")
        # the first group times each model (rank 0 alone, or with the other ranks of its --sequence group)
        timed = self.layout.data_rank == 0
        timings = {name: self.time_model(cand) for name, cand in candidates.items()} if timed else {}
        self.videos = videos  # for the report's side-by-side clips
        if rank != 0:
            return {}

        detector = scorers.detector
        networks = metrics.feature_networks(scorers)  # the detector's and, where the suite asks, JEDi's V-JEPA 2

        def features(v: np.ndarray, net=detector) -> np.ndarray:
            return np.asarray(net.features(torch.from_numpy(v)), dtype=np.float64)

        def every(v: np.ndarray) -> dict[str, np.ndarray]:
            return {net_name: features(v, net) for net_name, net in networks.items()}

        is_static_prompt = np.array([p in set(s.static_prompts) for p in captions], dtype=bool)
        # clip j's conditioning image is its prompt's: every seed of a prompt starts from the same image
        clip_images = None if self.first_images is None else self.first_images[self.clusters]
        scored = Scored(roles={m.name: ("teacher" if m.name == ref else m.role) for m in prep.specs},
                        values={}, static={}, feats={}, div={}, timings=timings, is_static_prompt=is_static_prompt)
        for name in tqdm(names, desc="metrics", disable=not self.progress):
            scored.values[name] = metrics.clip_values(videos[name], captions, scorers, clip_images)
            scored.static[name] = metrics.static_mask(videos[name], is_static_prompt, scorers)
            scored.feats[name] = every(videos[name])
            if name in div_videos:
                scored.div[name] = features(div_videos[name])
        if self.real_clips is not None:
            scored.real = every(np.stack([self.real_clips(p, seed) for p, seed in self.items]))
        if floor_videos is not None:
            scored.floor = every(floor_videos)

        per_clip: dict[str, dict] = {name: {} for name in names}
        models = {name: self._model_record(name, candidates[name], scored, scorers, ref, per_clip[name])
                  for name in names}
        return {"schema": SCHEMA, "suite": self._suite_record(scorers), "models": models, "env": environment(),
                "per_clip": stats.json_safe({"about": PER_CLIP_ABOUT, "prompt_of_clip": self.clusters,
                                             "models": per_clip})}

    def _model_record(self, name: str, cand: Candidate, sc: "Scored", scorers: metrics.Scorers, ref: str,
                      per_clip: dict) -> dict:
        """The model's eval.json entry; fills `per_clip` with what the gate's paired test reads (PER_CLIP_ABOUT)."""
        s = self.suite
        is_ref = name == ref
        clusters = self.clusters
        out: dict[str, dict] = {}
        for m in metrics.clip_metrics(self.first_images is not None):
            key = m.name(scorers)
            mine, teacher = sc.values[name][key], None if is_ref else sc.values[ref][key]
            per_clip[key] = {"values": mine if not m.static_only else np.where(sc.static[name][0], mine, np.nan)}
            if not m.static_only:
                out[key] = metrics.clip_record(m, mine, clusters, teacher)
                continue
            out[key] = self._static_record(m, name, ref, sc, mine, teacher)
        students = [n for n, role in sc.roles.items() if role == "student"]
        others = [n for n, role in sc.roles.items() if role != "teacher" and n != name]
        for m in metrics.set_metrics(scorers):
            net = m.network(scorers).name  # the features this metric reads
            feats = {model: by_net[net] for model, by_net in sc.feats.items()}
            references = {"vs_teacher": None if is_ref else feats[ref], "vs_real": sc.real[net] if sc.real else None,
                          "noise_floor": sc.floor[net] if is_ref and sc.floor else None}
            for ref_name in m.references:
                reference = references[ref_name]
                if reference is None:
                    continue
                key = m.name(scorers, ref_name)
                mine = feats[name] if ref_name != "noise_floor" else sc.floor[net]
                target = reference if ref_name != "noise_floor" else feats[ref]
                record = metrics.set_record(m, scorers, mine, target, ref_name, clusters, self.slots)
                if ref_name == "vs_real" and not is_ref:
                    # closer to the real clips than the 50-step teacher (negative) or farther (positive)
                    record["paired_diff_vs_teacher"] = metrics.set_difference(m, mine, feats[ref], target,
                                                                              clusters)
                if name in students and ref_name != "noise_floor" and others:
                    record["paired_diff_vs_models"] = {
                        other: metrics.set_difference(m, mine, feats[other], target, clusters)
                        for other in others}
                out[key] = record
                if ref_name != "noise_floor":
                    per_clip[key] = {"leave_one_out": leave_one_out(m.statistic, mine, target)}
        if name in sc.div:
            k = s.diversity.seeds
            (m,) = metrics.by_level("prompt")

            def per_prompt(f):
                return np.array([pairwise_diversity(f[i:i + k]) for i in range(0, len(f), k)])
            out[m.name(scorers)] = metrics.prompt_record(m, per_prompt(sc.div[name]),
                                                         None if is_ref else per_prompt(sc.div[ref]),
                                                         seeds_per_prompt=k)
        t, t_ref = sc.timings[name], sc.timings[ref]
        out.update(metrics.timing_records(t["runs"], t_ref["runs"], s.frames / s.fps,
                                          self.reference_nfe() / cand.nfe, is_ref))
        return stats.json_safe({
            "role": sc.roles[name], "source": cand.spec.source, "steps": cand.steps,
            "sampler": cand.sampler, "guidance": cand.guidance, "shift": cand.shift, "nfe": cand.nfe,
            "latency_s": t["latency_s"], "denoise_s": t["denoise_s"], "text_s": t["text_s"],
            "decode_s": t["decode_s"], "first_frame_s": t["first_frame_s"], "checkpoint_hash": cand.ckpt_hash,
            # the decoder is part of the model: the family's VAE, or a distilled one with its weights' hash
            "decoder": None if cand.decoder is None else {"path": cand.spec.decoder, "hash": cand.decoder_hash},
            "metrics": out})

    def _static_record(self, m: metrics.MetricDef, name: str, ref: str, sc: "Scored", mine, teacher) -> dict:
        mask, motion = sc.static[name]
        return metrics.static_record(m, mine, self.clusters, sc.is_static_prompt, mask, motion,
                                     self.suite.flow, self.suite.static_filter.max_flow_px, teacher,
                                     None if name == ref else sc.static[ref][0])

    def reference_nfe(self) -> int:
        g = self.teacher_cfg.sampler.guidance
        return self.teacher_cfg.sampler.steps * (2 if g > 1 else 1)

    def _suite_record(self, scorers: metrics.Scorers) -> dict:
        s = self.suite
        suite = s.model_dump()
        if self.first_images is None:
            suite.pop("first_images")  # a text-to-video suite records what it recorded before the option existed
        else:  # the pixels scored against, not file paths: the same images anywhere compare equal in the gate
            suite["first_images"] = {"source": "toyworld" if s.first_images == "toyworld" else "files",
                                     "n": len(self.first_images),
                                     "sha256": hashlib.sha256(np.ascontiguousarray(self.first_images)).hexdigest()}
        if scorers.jedi is None:
            suite.pop("jedi")  # a suite without JEDi records what it recorded before the option existed
        else:
            suite["jedi"].update(name=scorers.jedi.name, dim=scorers.jedi.feature_dim,
                                 protocol=scorers.jedi.protocol(s.frames))
        computed = [m for m in metrics.REGISTRY if (m.level != "set" or m in metrics.set_metrics(scorers))
                    and (m.level != "clip" or m in metrics.clip_metrics(self.first_images is not None))]
        return {**suite, "prompts": self.prompts, "n_clips": len(self.items),
                "seeds": [seed for _, seed in self.items], "teacher": self.teacher_cfg.source,
                "detector": {"name": scorers.detector.name, "dim": scorers.detector.feature_dim,
                             "protocol": scorers.detector.protocol(s.frames)},
                "clip_backend": scorers.clip.name, "ranks_per_clip": self.sequence,
                "speed_protocol": SPEED_PROTOCOL + (f" Each clip was split over {self.sequence} ranks (sequence "
                                                    f"parallelism), timed clips included." if self.sequence > 1
                                                    else "") + speed_notes(s),
                "metric_definitions": {m.family: {"level": m.level, "higher_is_better": m.higher_is_better,
                                                  "how": m.how} for m in computed}}


PER_CLIP_ABOUT = (
    "What the gate's paired regression test reads (eval/gate.py): clip j is the j-th of suite.seeds, of prompt "
    "prompt_of_clip[j]. Per-clip metrics: `values`, each clip's value (null where a clip is not scored). Set "
    "metrics (FVD, KVD): `leave_one_out`, the statistic with clip j left out of both sets, so that two evals of the "
    "same prompts and seeds can be compared clip by clip.")


def speed_notes(s: SuiteConfig) -> str:
    """What this suite changes in the speed protocol: cached text, a compiled DiT."""
    notes = ""
    if s.speed.text == "cached":
        notes += (" Text: each timed clip read its prompt's embeddings from the conditioning cache (a prompt seen "
                  "before), so text_s is that lookup, not the encoder.")
    if s.compile:
        notes += (" Every model's DiT ran under torch.compile (inductor); its compile time fell in the untimed "
                  "warm-up clips (at least one).")
    return notes


def leave_one_out(statistic, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """statistic(a, b) with row j deleted from both matched sets, for every j."""
    keep = np.ones(len(a), dtype=bool)
    out = np.empty(len(a))
    for j in range(len(a)):
        keep[j] = False
        out[j] = statistic(a[keep], b[keep])
        keep[j] = True
    return out


SPEED_PROTOCOL = (
    "End-to-end latency per clip = text encoding + denoising + VAE decode, one clip at a time, batch 1, after "
    "`speed.warmup` untimed clips; the median of `speed.clips` timed clips, with their min and max and no "
    "interval; CUDA synchronised before every clock read. speedup_vs_teacher = teacher latency / model latency, both measured in this run on this device; "
    "nfe_ratio (teacher NFE / model NFE) is the bound on the denoising part. realtime_factor = seconds of video "
    "(frames / fps) per second of compute.")
