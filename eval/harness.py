"""The eval harness: sample every model on the same prompts and seeds, score what each student kept and lost
against the teacher, with intervals, and time it.

`eval` never knows how a student was trained: a model here is a Wan folder (the teacher, or a student's export)
plus sampler settings. Prompts and real clips come resolved from the caller.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from distill.core.dist import gather_dict, rank_world
from distill.core.env import environment
from distill.core.hashing import checkpoint_hash
from distill.eval import stats
from distill.eval.schema import SCHEMA
from distill.eval.suite import ModelSpec, SuiteConfig
from distill.teachers.resolve import checkpoint_defaults, resolve
from distill.teachers.wan import WanTeacher

RealClips = Callable[[str, int], np.ndarray]  # (prompt, seed) -> uint8 [T, H, W, 3]


@dataclass
class Candidate:
    """One model under evaluation: a loaded Wan folder and how it is sampled."""

    spec: ModelSpec
    teacher: WanTeacher
    steps: int
    sampler: str
    guidance: float
    shift: float
    negative: str
    ckpt_hash: str

    @property
    def nfe(self) -> int:
        return self.steps * (2 if self.guidance > 1 else 1)

    def cache_key(self, prompt: str, seed: int, frames: int, height: int, width: int) -> str:
        text = json.dumps([self.ckpt_hash, self.steps, self.sampler, self.guidance, self.shift, self.negative,
                           self.teacher.max_sequence_length, str(self.teacher.transformer.dtype), prompt, seed,
                           frames, height, width])
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def sample(self, prompts: list[str], seeds: list[int], frames: int, height: int, width: int,
               timing: dict | None = None) -> np.ndarray:
        """uint8 clips [B, T, H, W, 3]; `timing` (if given) receives text/denoise/decode seconds, synchronised."""
        t = self.teacher
        sync = torch.cuda.synchronize if t.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        cond = t.encode(prompts, self.negative if self.guidance > 1 else None)
        sync()
        t1 = time.perf_counter()
        latents = t.sample(prompts, steps=self.steps, guidance=self.guidance, shift=self.shift, seed=seeds,
                           sampler=self.sampler, frames=frames, height=height, width=width, cond=cond)
        sync()
        t2 = time.perf_counter()
        video = t.decode(latents).numpy()
        sync()
        t3 = time.perf_counter()
        if timing is not None:
            timing.update(text_s=t1 - t0, denoise_s=t2 - t1, decode_s=t3 - t2, total_s=t3 - t0)
        return video


class Harness:
    def __init__(self, suite: SuiteConfig, teacher_cfg, prompts: list[str], out_dir: Path,
                 cache_dir: Path | None = None, real_clips: RealClips | None = None, progress: bool = True):
        if not prompts:
            raise ValueError(f"suite {suite.name!r} resolved to an empty prompt list")
        self.suite, self.teacher_cfg, self.prompts = suite, teacher_cfg, prompts
        self.out_dir = Path(out_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else self.out_dir / "cache"
        self.real_clips = real_clips
        self.progress = progress
        self._loaded: dict[str, WanTeacher] = {}
        self._hashes: dict[str, str] = {}
        self.items = [(p, suite.seed + 1000 * i + k) for i, p in enumerate(prompts)
                      for k in range(suite.seeds_per_prompt)]

    # --- models ---------------------------------------------------------------------------------------------
    def _load(self, source: str) -> WanTeacher:
        if source not in self._loaded:
            c = self.teacher_cfg
            self._loaded[source] = WanTeacher.from_pretrained(source, dtype=c.dtype, device=c.device,
                                                              max_sequence_length=c.max_sequence_length)
            self._hashes[source] = checkpoint_hash(resolve(source))
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
        teacher = self._load(source)
        return Candidate(spec, teacher, spec.steps, sampler, guidance, shift, c.negative_prompt,
                         self._hashes[source])

    def reference(self) -> ModelSpec:
        s = self.teacher_cfg.sampler
        return ModelSpec(name=f"teacher@{s.steps}", source="teacher", steps=s.steps, sampler=s.name,
                         guidance=s.guidance, shift=s.shift, role="teacher")

    # --- sampling with a per-clip cache -------------------------------------------------------------------------
    def clips(self, cand: Candidate, items: list[tuple[str, int]], desc: str) -> np.ndarray:
        s = self.suite
        rank, world = rank_world()
        keys = [cand.cache_key(p, seed, s.frames, s.height, s.width) for p, seed in items]
        paths = [self.cache_dir / f"{k}.npy" for k in keys]
        todo = [i for i, path in enumerate(paths) if not path.is_file() and i % world == rank]
        made: dict[int, np.ndarray] = {}
        for start in tqdm(range(0, len(todo), s.batch_size), desc=desc, disable=not self.progress or rank,
                          unit="batch"):
            chunk = todo[start:start + s.batch_size]
            videos = cand.sample([items[i][0] for i in chunk], [items[i][1] for i in chunk], s.frames, s.height,
                                 s.width)
            for i, video in zip(chunk, videos):
                made[i] = video
        made = gather_dict(made)
        if rank == 0:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            for i, video in made.items():
                tmp = paths[i].with_suffix(".tmp.npy")
                np.save(tmp, video)
                os.replace(tmp, paths[i])
        if world > 1:
            torch.distributed.barrier()
        return np.stack([made[i] if i in made else np.load(paths[i]) for i in range(len(items))])

    def time_model(self, cand: Candidate) -> dict:
        """One clip at a time: `warmup` untimed clips, then the median of `clips` timed clips."""
        s = self.suite
        prompts = [self.prompts[i % len(self.prompts)] for i in range(s.speed.warmup + s.speed.clips)]
        runs = []
        for i, prompt in enumerate(prompts):
            timing: dict = {}
            cand.sample([prompt], [10_000 + i], s.frames, s.height, s.width, timing)
            if i >= s.speed.warmup:
                runs.append(timing)
        med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        video_seconds = s.frames / s.fps
        return {"latency_s": med["total_s"], "denoise_s": med["denoise_s"], "text_s": med["text_s"],
                "decode_s": med["decode_s"], "realtime_factor": video_seconds / med["total_s"],
                "runs": [r["total_s"] for r in runs]}

    # --- scoring --------------------------------------------------------------------------------------------
    def _metric_nets(self):
        s = self.suite
        from distill.eval.clip_score import ClipBackend

        device = self._loaded[self.teacher_cfg.source].device if self._loaded else "cpu"
        clip = ClipBackend.domain(device=str(device)) if s.clip.backend == "domain" else \
            ClipBackend.open_clip(s.clip.model, s.clip.pretrained, device=str(device))
        if s.detector == "domain-video-net":
            from distill.eval.domain_video_net import DomainVideoDetector

            detector = DomainVideoDetector()
        else:
            from distill.eval.fvd import I3DDetector

            if not s.i3d_path:
                raise ValueError(f"suite {s.name!r}: detector 'i3d' needs `i3d_path` (the TorchScript file)")
            detector = I3DDetector.from_file(s.i3d_path)
        return clip, detector

    def per_clip_metrics(self, videos: np.ndarray, captions: list[str], clip, detector) -> dict:
        from distill.eval import flicker

        v = torch.from_numpy(videos)
        out = {
            f"clip_score[{clip.name}]": clip.clip_scores(v, captions, self.suite.clip.frames).numpy(),
            "flicker.vbench": flicker.vbench_flicker(v).numpy(),
            f"flicker.warp_error[{flicker.resolve_flow_backend(self.suite.flow)}]":
                flicker.warp_error(v, flow=self.suite.flow).numpy(),
            "flicker.hf_energy": flicker.hf_energy(v).numpy(),
        }
        return out, detector.features(v).numpy()

    def run(self, specs: list[ModelSpec]) -> dict:
        s, rank = self.suite, rank_world()[0]
        ref = self.reference()
        specs = [ref] + [m for m in specs if m.name != ref.name]
        names = [m.name for m in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique; got {names}")
        candidates = {m.name: self.candidate(m) for m in specs}
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
            floor_items = [(p, seed + 777_777) for p, seed in self.items]
            floor_videos = self.clips(candidates[ref.name], floor_items, "noise floor")
        timings = {name: self.time_model(cand) for name, cand in candidates.items()} if rank == 0 else {}
        self.videos = videos  # for the report's side-by-side clips
        if rank != 0:
            return {}

        clip, detector = self._metric_nets()
        scores, feats = {}, {}
        for name in tqdm(names, desc="metrics", disable=not self.progress):
            scores[name], feats[name] = self.per_clip_metrics(videos[name], captions, clip, detector)
        real_feats = None
        if self.real_clips is not None:
            real = np.stack([self.real_clips(p, seed) for p, seed in self.items])
            real_feats = detector.features(torch.from_numpy(real)).numpy()
        floor_feats = detector.features(torch.from_numpy(floor_videos)).numpy() if floor_videos is not None else None
        div_feats = {name: detector.features(torch.from_numpy(v)).numpy() for name, v in div_videos.items()}

        models = {}
        for name in names:
            models[name] = self._model_record(candidates[name], name == ref.name, scores[name], scores[ref.name],
                                              feats[name], feats[ref.name], real_feats, floor_feats,
                                              div_feats.get(name), div_feats.get(ref.name), detector.name,
                                              timings[name], timings[ref.name])
        return {"schema": SCHEMA, "suite": self._suite_record(), "models": models, "env": environment()}

    def _model_record(self, cand, is_ref, mine, ref, f_mine, f_ref, f_real, f_floor, d_mine, d_ref, det, t, t_ref):
        from distill.eval.diversity import pairwise_diversity
        from distill.eval.fvd import fvd_from_features

        s = self.suite
        n_boot = s.bootstrap
        higher = {"clip_score": True, "flicker.vbench": True, "flicker.warp_error": False, "flicker.hf_energy": False}
        metrics = {}
        for key, values in mine.items():
            better = next(v for k, v in higher.items() if key.startswith(k))
            metrics[key] = stats.metric_record(values, better, None if is_ref else ref[key], n_boot=n_boot)
        fvd_note = {"n": len(f_mine), "frames": s.frames, "resolution": [s.height, s.width], "detector": det}

        def fvd(a, b, **extra):
            value = fvd_from_features(a, b)
            lo, hi = stats.bootstrap_set_statistic(a, b, fvd_from_features, n_boot=min(n_boot, 200))
            return stats.make_record(value, (lo, hi), len(a), False, **fvd_note, **extra)

        if not is_ref:
            metrics[f"fvd[{det}]:vs_teacher"] = fvd(f_ref, f_mine)
        elif f_floor is not None:
            metrics[f"fvd[{det}]:noise_floor"] = fvd(f_ref, f_floor, note="teacher vs teacher on other seeds")
        if f_real is not None:
            metrics[f"fvd[{det}]:vs_real"] = fvd(f_real, f_mine)
        if d_mine is not None:
            k = s.diversity.seeds
            per_prompt = np.array([pairwise_diversity(d_mine[i:i + k]) for i in range(0, len(d_mine), k)])
            ref_prompt = None if is_ref else np.array([pairwise_diversity(d_ref[i:i + k])
                                                       for i in range(0, len(d_ref), k)])
            metrics[f"diversity[{det}]"] = stats.metric_record(per_prompt, True, ref_prompt, n_boot=n_boot,
                                                               seeds_per_prompt=k)
        runs = np.array(t["runs"])
        metrics["speed.latency_s"] = stats.metric_record(runs, False, None if is_ref else np.array(t_ref["runs"]),
                                                         statistic=np.median, n_boot=n_boot)
        # Intervals over the timed clips: both models' runs resampled independently, the ratio of their medians.
        ref_runs = np.array(t_ref["runs"])
        speedup_ci = (1.0, 1.0) if is_ref else stats.bootstrap_set_statistic(
            ref_runs, runs, lambda a, b: float(np.median(a) / np.median(b)), n_boot=n_boot)
        metrics["speed.speedup_vs_teacher"] = stats.make_record(
            t_ref["latency_s"] / t["latency_s"], speedup_ci, len(runs), True,
            nfe_ratio=(self.reference_nfe() / cand.nfe))
        seconds = s.frames / s.fps
        metrics["speed.realtime_factor"] = stats.make_record(
            t["realtime_factor"], stats.bootstrap_set_statistic(runs, None, lambda a: seconds / float(np.median(a)),
                                                                n_boot=n_boot), len(runs), True)
        return stats.json_safe({
            "role": "teacher" if is_ref else cand.spec.role, "source": cand.spec.source, "steps": cand.steps,
            "sampler": cand.sampler, "guidance": cand.guidance, "shift": cand.shift, "nfe": cand.nfe,
            "latency_s": t["latency_s"], "denoise_s": t["denoise_s"], "text_s": t["text_s"],
            "decode_s": t["decode_s"], "checkpoint_hash": cand.ckpt_hash, "metrics": metrics})

    def reference_nfe(self) -> int:
        g = self.teacher_cfg.sampler.guidance
        return self.teacher_cfg.sampler.steps * (2 if g > 1 else 1)

    def _suite_record(self) -> dict:
        s = self.suite
        return {**s.model_dump(), "prompts": self.prompts, "n_clips": len(self.items),
                "seeds": [seed for _, seed in self.items], "teacher": self.teacher_cfg.source,
                "speed_protocol": SPEED_PROTOCOL}


SPEED_PROTOCOL = (
    "End-to-end latency per clip = text encoding + denoising + VAE decode, one clip at a time, batch 1, after "
    "`speed.warmup` untimed clips; the median of `speed.clips` timed clips; CUDA synchronised before every clock "
    "read. speedup_vs_teacher = teacher latency / model latency, both measured in this run on this device; "
    "nfe_ratio (teacher NFE / model NFE) is the bound on the denoising part. realtime_factor = seconds of video "
    "(frames / fps) per second of compute.")
