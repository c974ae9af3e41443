"""The eval's metrics: one registry, the only way the harness computes a number.

Each entry (`MetricDef`) says what a metric is: its family, the level it is computed at (per clip, per set of
clips, per prompt, per timed clip), its direction, how it is computed, which references a set metric is taken
against, which feature network a set metric reads (the suite's detector, or another such as JEDi's V-JEPA 2; a set
metric whose network the suite did not configure is not computed), and how its `eval.json` name is made from the
networks and settings that produced it (backbone, detector, frame protocol, flow backend), so a score from a
stand-in network or a non-standard protocol never carries a standard name. Adding a metric is one entry here plus
its tests; the harness, the report and the gate read the records, never a list of names.

A per-clip metric reads the clips and, beside them, what each clip was conditioned on (`conditioning`): its caption,
or its first image (image-to-video suites). A first-image metric is computed only where the suite carries images
(`suite.first_images`); on a text-to-video suite it is absent from eval.json, never scored against a stand-in.

Records (schema distill.eval/2, eval/schema.py) come from the builders at the bottom: every record has `value`,
`ci95` (null where no interval is claimed, with the reason), `n` and `higher_is_better`; intervals come from
`distill.eval.stats` (clustered by prompt for per-clip means and their paired differences; jointly resampled
matched sets for FVD and KVD), and each says in `target` what it covers: the population mean over prompts (per-clip
metrics), the statistic's expected value at this n (a set metric under its standard name), or the population
distance (a set metric's `bias_corrected` value, and every model-vs-model row, so that rankings follow population
distances, not each model's small-sample bias).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch

from distill.eval import first_frame, flicker, stats
from distill.eval.frechet import frechet_distance_of_features
from distill.eval.jedi import jedi
from distill.eval.kvd import kvd

Level = Literal["clip", "set", "prompt", "timing"]
REFERENCES = {
    "vs_teacher": "the teacher's clips of the same prompts and seeds",
    "vs_real": "real clips of the same prompts and seeds (the toy world's renderer)",
    "noise_floor": "the teacher against itself on other seeds of the same prompts: what a perfect student would "
                   "still score at this n",
}


@dataclass(frozen=True)
class Scorers:
    """The networks and settings every metric of one eval is computed with (loaded once, before sampling)."""

    clip: object  # distill.eval.clip_score.ClipBackend
    clip_frames: int
    detector: object  # a distill.eval.fvd.VideoDetector
    flow: str  # "farneback" | "raft_small", pinned by the suite
    frames: int  # the suite's clip length
    static_max_flow_px: float | None  # None: VBench's threshold for the clip's size (flicker.static_threshold)
    jedi: object | None = None  # a distill.eval.jedi.VJEPA2Features when the suite asks for JEDi, else None


@dataclass(frozen=True)
class MetricDef:
    family: str
    level: Level
    higher_is_better: bool
    how: str  # how it is computed, in one or two sentences (docs/eval.md carries the long form)
    naming: Callable[[Scorers], str]
    # level "clip": per_clip(videos, conditioning, scorers), the conditioning as `conditioning` says: the clips'
    # captions (list[str]), or their first images (uint8 tensor [N, H, W, 3])
    per_clip: Callable[[torch.Tensor, object, Scorers], np.ndarray] | None = None
    conditioning: Literal["caption", "first_image"] = "caption"
    statistic: Callable[[np.ndarray, np.ndarray], float] | None = None  # level "set": statistic(model, reference)
    references: tuple[str, ...] = ()  # level "set"
    ratio_to_teacher: bool = False  # a ratio has a meaning (the metric has a true zero)
    static_only: bool = False  # computed only on static clips of static prompts (VBench's protocol)
    # level "set": the feature network it reads (a VideoDetector), None where the suite did not configure it
    network: Callable[[Scorers], object | None] = lambda s: s.detector

    def name(self, scorers: Scorers, reference: str | None = None) -> str:
        base = self.naming(scorers)
        return f"{base}:{reference}" if reference else base


def _fvd(x, y) -> float:
    # the N x M form: the same number to round-off, and cheap enough for the jackknife's many leave-outs
    return frechet_distance_of_features(x, y)


def _kvd(x, y) -> float:
    # matched rows (same prompt and seed): the U-statistic without the paired cross terms, unbiased either way
    return kvd(x, y, matched=True)


def _jedi(x, y) -> float:
    # JEDi's kernel and scale with the unbiased, matched U-statistic (eval/jedi.py says why not its V-statistic)
    return jedi(x, y, matched=True)


REGISTRY: tuple[MetricDef, ...] = (
    MetricDef("clipsim", "clip", True,
              "100 x mean over sampled frames of cos(image, caption) with the suite's CLIP backend; no clamp at 0, "
              "so not torchmetrics' CLIPScore. Compare models by the paired difference in points.",
              naming=lambda s: f"clipsim[{s.clip.name}]",
              per_clip=lambda v, captions, s: s.clip.clip_scores(v, captions, s.clip_frames).numpy()),
    MetricDef("flicker.vbench", "clip", True,
              "VBench temporal flickering, (255 - mean |frame(t+1) - frame(t)|) / 255, on STATIC clips only: clips "
              "of the suite's static prompts that pass VBench's static filter (flow of the fastest 2% of pixels).",
              naming=lambda s: "flicker.vbench",
              per_clip=lambda v, captions, s: flicker.vbench_flicker(v).numpy(), static_only=True),
    MetricDef("flicker.warp_error", "clip", False,
              "Lai et al. 2018: frame t+1 warped onto t with the pinned optical flow, occlusions masked by "
              "forward-backward consistency, mean squared residual; valid on moving clips.",
              naming=lambda s: f"flicker.warp_error[{s.flow}]",
              per_clip=lambda v, captions, s: flicker.warp_error(v, flow=s.flow).numpy(), ratio_to_teacher=True),
    MetricDef("flicker.hf_energy", "clip", False,
              "share of each pixel's temporal spectrum above 0.25 Nyquist after removing its linear trend, "
              "energy-weighted over pixels.",
              naming=lambda s: "flicker.hf_energy",
              per_clip=lambda v, captions, s: flicker.hf_energy(v).numpy(), ratio_to_teacher=True),
    MetricDef("first_frame.psnr", "clip", True,
              "the conditioning image against frame 0 of the decoded clip: 10 log10(255^2 / MSE) over pixels and "
              "channels, in dB (100 dB for an exact copy). Only on suites that carry first images.",
              naming=lambda s: "first_frame.psnr",
              per_clip=lambda v, images, s: first_frame.first_frame_psnr(v, images).numpy(),
              conditioning="first_image"),
    MetricDef("first_frame.feature_dist", "clip", False,
              "1 - cos(f(conditioning image), f(frame 0)) with the suite's CLIP image tower f (raw frames). Only on "
              "suites that carry first images.",
              naming=lambda s: f"first_frame.feature_dist[{s.clip.name}]",
              per_clip=lambda v, images, s: first_frame.first_frame_feature_distance(
                  v, images, s.clip.image_features).numpy(),
              conditioning="first_image"),
    MetricDef("subject_consistency", "clip", True,
              "VBench's subject-consistency rule with the suite's CLIP image tower in place of DINO: mean over "
              "frames t >= 1 of (max(0, cos(f_t, f_t-1)) + max(0, cos(f_t, f_0))) / 2, every frame read.",
              naming=lambda s: f"subject_consistency[{s.clip.name}]",
              per_clip=lambda v, captions, s: first_frame.subject_consistency(v, s.clip.image_features).numpy()),
    MetricDef("fvd", "set", False,
              "Frechet distance between Gaussians fitted to detector features of the two clip sets (float64).",
              naming=lambda s: s.detector.metric_name("fvd", s.frames), statistic=_fvd,
              references=("vs_teacher", "vs_real", "noise_floor")),
    MetricDef("kvd", "set", False,
              "unbiased MMD^2 with the cubic polynomial kernel (KID's estimator) on the same features; matched rows "
              "drop their paired cross terms. Unbiased at small n, where FVD is not.",
              naming=lambda s: s.detector.metric_name("kvd", s.frames), statistic=_kvd,
              references=("vs_teacher", "vs_real", "noise_floor")),
    MetricDef("jedi", "set", False,
              "JEDi (Luo et al. 2025): 100 x MMD^2 with the polynomial kernel (a.b/d)^2 on V-JEPA 2 features; the "
              "unbiased U-statistic (matched rows drop their paired cross terms) rather than the paper code's "
              "V-statistic, whose small-n bias depends on each set's spread. Only where the suite sets `jedi`.",
              naming=lambda s: s.jedi.metric_name("jedi", s.frames), statistic=_jedi,
              references=("vs_teacher", "vs_real", "noise_floor"), network=lambda s: s.jedi),
    MetricDef("diversity", "prompt", True,
              "mean pairwise L2 distance between detector features of one prompt's clips over several seeds.",
              naming=lambda s: s.detector.metric_name("diversity", s.frames)),
    MetricDef("speed.latency_s", "timing", False,
              "seconds per clip end to end (text + denoise + decode), batch 1: median of the timed clips.",
              naming=lambda s: "speed.latency_s", ratio_to_teacher=True),
    MetricDef("speed.speedup_vs_teacher", "timing", True,
              "teacher median latency / model median latency, both measured in this run on this device.",
              naming=lambda s: "speed.speedup_vs_teacher"),
    MetricDef("speed.realtime_factor", "timing", True,
              "seconds of video (frames / fps) per second of compute, from the median latency.",
              naming=lambda s: "speed.realtime_factor"),
)


def by_level(level: Level) -> list[MetricDef]:
    return [m for m in REGISTRY if m.level == level]


def set_metrics(scorers: Scorers) -> list[MetricDef]:
    """The set metrics this eval computes: those whose feature network the suite configured."""
    return [m for m in by_level("set") if m.network(scorers) is not None]


def feature_networks(scorers: Scorers) -> dict[str, object]:
    """Every feature network the set metrics read, by name, the suite's detector first: each clip set's features
    are computed once per network."""
    nets: dict[str, object] = {}
    for m in set_metrics(scorers):
        net = m.network(scorers)
        nets.setdefault(net.name, net)
    return nets


def family_of(name: str) -> MetricDef | None:
    """The registry entry behind an eval.json metric name (`fvd[domain-video-net,17f]:vs_teacher` -> fvd)."""
    head = name.split("[", 1)[0].split(":", 1)[0]
    stem = head.rstrip("0123456789")  # fvd16 -> fvd
    return next((m for m in REGISTRY if m.family in (head, stem)), None)


# --- per-clip values ----------------------------------------------------------------------------------------------

def clip_metrics(has_first_images: bool) -> list[MetricDef]:
    """The per-clip metrics an eval computes: the first-image ones only where its suite carries first images."""
    return [m for m in by_level("clip") if m.conditioning != "first_image" or has_first_images]


def clip_values(videos: np.ndarray, captions: list[str], scorers: Scorers,
                first_images: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every per-clip metric of one model's clips, by eval.json name: float64 [N] each. `first_images`: uint8
    [N, H, W, 3], clip j's conditioning image (None on a text-to-video suite: the first-image metrics are left
    out)."""
    v = torch.from_numpy(videos)
    given = {"caption": captions, "first_image": None if first_images is None else torch.from_numpy(first_images)}
    return {m.name(scorers): np.asarray(m.per_clip(v, given[m.conditioning], scorers), dtype=np.float64)
            for m in clip_metrics(first_images is not None)}


def static_mask(videos: np.ndarray, is_static_prompt: np.ndarray, scorers: Scorers) -> tuple[np.ndarray, np.ndarray]:
    """VBench's protocol: a clip is scored for flicker when its prompt is a static one AND it passes the static
    filter. Returns (mask [N] bool, motion score [N], NaN for clips of moving prompts, which are not filtered)."""
    mask = np.zeros(len(videos), dtype=bool)
    motion = np.full(len(videos), np.nan)
    idx = np.flatnonzero(is_static_prompt)
    if idx.size:
        ok, score = flicker.static_clips(torch.from_numpy(videos[idx]), flow=scorers.flow,
                                         max_flow_px=scorers.static_max_flow_px)
        mask[idx], motion[idx] = ok.numpy(), score.numpy()
    return mask, motion


# --- records ------------------------------------------------------------------------------------------------------

def _interval(values: np.ndarray, clusters: np.ndarray) -> dict:
    """stats.clustered_mean_interval, or the mean with no interval (and why) below two prompts; with several seeds
    per prompt also `se_seeds`, the standard error given these prompts (stats.within_prompt_se)."""
    if len(np.unique(clusters)) < 2:
        return {"value": float(values.mean()) if values.size else None, "ci95": None, "n": int(values.size),
                "ci_note": "no interval: fewer than 2 prompts"}
    record = {**stats.clustered_mean_interval(values, clusters), "target": stats.TARGET_POPULATION_MEAN}
    se_seeds = stats.within_prompt_se(values, clusters)
    if se_seeds is not None:
        record["se_seeds"] = se_seeds
    return record


def clip_record(metric: MetricDef, values: np.ndarray, clusters: np.ndarray, teacher: np.ndarray | None = None,
                mask: np.ndarray | None = None, teacher_mask: np.ndarray | None = None, **extra) -> dict:
    """A per-clip metric: the mean over clips with its prompt-clustered interval and, for a non-teacher model,
    the paired difference vs the teacher (same prompts and seeds) in the metric's own units, on the clips both
    have; `mask` restricts the clips (VBench's static clips)."""
    mask = np.ones(len(values), dtype=bool) if mask is None else mask
    base = {"higher_is_better": metric.higher_is_better, "level": "clip", **extra}
    if not mask.any():
        return {"value": None, "ci95": None, "n": 0, **base}
    record = {**_interval(values[mask], clusters[mask]), **base}
    record["n_prompts"] = int(len(np.unique(clusters[mask])))
    if teacher is not None:
        both = mask & (np.ones(len(values), dtype=bool) if teacher_mask is None else teacher_mask)
        if both.any():
            record["paired_diff_vs_teacher"] = _interval(values[both] - teacher[both], clusters[both])
            t_mean = float(teacher[both].mean())
            if metric.ratio_to_teacher and t_mean != 0.0:
                record["ratio_to_teacher"] = float(values[both].mean()) / t_mean
    return record


def skipped_record(metric: MetricDef, reason: str, **extra) -> dict:
    return {"value": None, "ci95": None, "n": 0, "higher_is_better": metric.higher_is_better,
            "level": metric.level, "skipped": reason, **extra}


def static_record(metric: MetricDef, values: np.ndarray, clusters: np.ndarray, is_static_prompt: np.ndarray,
                  mask: np.ndarray, motion: np.ndarray, flow: str, max_flow_px: float,
                  teacher: np.ndarray | None = None, teacher_mask: np.ndarray | None = None) -> dict:
    """VBench's protocol for a `static_only` metric: the clips of static prompts that pass the static filter, and
    no others; the record says how many there were, and why there is no value when there are none."""
    filt = {"flow": flow, "max_flow_px": max_flow_px,
            "rule": "VBench's: a pair's score is the mean flow of its fastest 2% of pixels; static when at most "
                    "round(2 T / 16) pairs, the last two aside, score above max_flow_px (None: 3 px at a 256-pixel "
                    "short side, scaled) and the last two stay below 2 round(2 T / 16) times it"}
    n_candidates = int(is_static_prompt.sum())
    info = {"n_total": len(values), "n_static_prompt_clips": n_candidates, "n_static": int(mask.sum()),
            "static_filter": filt}
    if n_candidates == 0:
        return skipped_record(
            metric, "the suite has no static prompts: VBench scores temporal flickering only on static clips "
                    "(static prompts + a static filter); moving clips are judged by the warp error and the HF "
                    "energy", **info)
    if not mask.any():
        return skipped_record(
            metric, f"none of the {n_candidates} clips of static prompts passed the static filter (they move: "
                    f"least motion {np.nanmin(motion):.2f} px/frame in a clip's fastest pair); moving clips are "
                    "judged by the warp error and the HF energy", **info)
    return clip_record(metric, values, clusters, teacher, mask=mask, teacher_mask=teacher_mask, **info)


MIN_PROMPTS_DELETE_TWO = 4  # FVD and KVD need 2 rows; stats' default deletes 2 prompts at a time


def min_prompts_for_sets(seeds_per_prompt: int) -> int:
    """The fewest prompts a suite needs for its set metrics (FVD, KVD): their jackknife leaves one prompt out and
    still needs 2 rows (a covariance, an unbiased MMD), from at least 2 prompts: (P - 1) * seeds >= 2, P >= 2."""
    return max(2, 1 + -(-2 // seeds_per_prompt))


def _set_method(clusters: np.ndarray) -> dict:
    """stats' default interval for set statistics, except below `MIN_PROMPTS_DELETE_TWO` prompts, where its
    delete-two step would leave a single row: then the plain (delete-one, conservative) jackknife."""
    return {} if len(np.unique(clusters)) >= MIN_PROMPTS_DELETE_TWO else {"method": "jackknife"}


def set_record(metric: MetricDef, scorers: Scorers, model: np.ndarray, reference: np.ndarray, reference_name: str,
               clusters: np.ndarray, slots: np.ndarray | None = None) -> dict:
    """A set metric of a model's features against a reference's, rows matched by prompt and seed: the jackknife
    interval over prompts (`stats.set_interval`), plus what produced it. With several seeds per prompt (`slots`:
    each row's seed index within its prompt) also `se_seeds`, the standard error given these prompts: the same
    jackknife deleting one seed slot (that seed of every prompt) at a time; it needs at least 3 seeds per prompt.

    Two targets from one jackknife: the record itself is the statistic under its standard name (FVD as the
    literature computes it), whose interval covers its expected value at this n; `bias_corrected` is the
    jackknife bias-corrected statistic, whose interval covers the population distance (for KVD, unbiased, the
    correction is 0 with one seed per prompt and small with several). `bias_warning` says when the plain value's
    bias reaches half its standard error (`stats.bias_matters`): then the plain number and its interval do not
    describe the population distance, and comparisons across models or suite sizes must use `bias_corrected`."""
    corrected = stats.set_interval(metric.statistic, model, reference, clusters=clusters, bias_correction=True,
                                   **_set_method(clusters))
    record = {**{k: corrected[k] for k in ("se", "n", "n_clusters", "method")}, **corrected.pop("at_n")}
    record["bias_corrected"] = {k: corrected[k] for k in ("value", "ci95", "se", "target", "bias",
                                                          "bias_correction")}
    record["bias_corrected"]["target"] = stats.TARGET_POPULATION_DISTANCE
    if stats.bias_matters(corrected):
        ratio = abs(corrected["bias"]) / corrected["se"] if corrected["se"] > 0 else math.inf
        record["bias_warning"] = (
            f"the estimated small-sample bias {corrected['bias']:.4g} is {ratio:.1f} "
            f"standard errors ({abs(corrected['bias']) / max(abs(record['value']), 1e-300):.0%} of the value) at "
            f"n = {record['n']}, d = {int(model.shape[1])}: this value and its interval are about this suite size, "
            "not the population distance; compare models by `bias_corrected`")
    if slots is not None and len(np.unique(slots)) >= 3:
        record["se_seeds"] = stats.set_interval(metric.statistic, model, reference, clusters=slots)["se"]
    network = metric.network(scorers)
    return {**record, "higher_is_better": metric.higher_is_better, "level": "set", "statistic": metric.family,
            "reference": REFERENCES[reference_name], "detector": network.name,
            "dim": int(model.shape[1]), "protocol": network.protocol(scorers.frames)}


def set_difference(metric: MetricDef, a: np.ndarray, b: np.ndarray, reference: np.ndarray,
                   clusters: np.ndarray) -> dict:
    """statistic(a, ref) - statistic(b, ref) with all three sets resampled jointly (`stats.set_difference_interval`),
    bias-corrected: a ranking must compare population distances, and FVD's bias at this n depends on each model's
    covariance (a model that lost diversity has a smaller one), so the plain difference can point the wrong way.
    Negative: a is closer to the reference than b. `at_n` keeps the plain difference and its interval."""
    record = stats.set_difference_interval(metric.statistic, a, b, reference, clusters=clusters,
                                           bias_correction=True, **_set_method(clusters))
    record["target"] = f"difference of {stats.TARGET_POPULATION_DISTANCE}s"
    return record


def prompt_record(metric: MetricDef, values: np.ndarray, teacher: np.ndarray | None, **extra) -> dict:
    """A per-prompt metric (diversity): one value per prompt, so prompts are the independent units."""
    clusters = np.arange(len(values))
    return clip_record(metric, values, clusters, teacher, level="prompt", **extra)


def timing_records(runs: list[float], teacher_runs: list[float], video_seconds: float, nfe_ratio: float,
                   is_teacher: bool) -> dict[str, dict]:
    """Speed from a few timed clips: the median, with the min and max beside it and NO interval: a bootstrap over
    3 clips covers about 73% for a nominal 95%, and claiming less than it says is worse than claiming nothing."""
    runs_a, ref = np.asarray(runs, dtype=np.float64), np.asarray(teacher_runs, dtype=np.float64)
    note = f"min/median/max of {runs_a.size} timed clips (no interval: too few clips for a 95% one)"
    defs = {m.family: m for m in by_level("timing")}

    def rec(family, value, lo, hi, **extra):
        return {"value": float(value), "ci95": None, "n": int(runs_a.size),
                "higher_is_better": defs[family].higher_is_better, "level": "timing", "min": float(lo),
                "median": float(value), "max": float(hi), "summary": note, **extra}

    med, ref_med = float(np.median(runs_a)), float(np.median(ref))
    out = {"speed.latency_s": rec("speed.latency_s", med, runs_a.min(), runs_a.max())}
    if not is_teacher:
        out["speed.latency_s"]["ratio_to_teacher"] = med / ref_med
    # the speed-up's range pairs the teacher's slowest clip with the model's fastest, and the reverse
    out["speed.speedup_vs_teacher"] = rec(
        "speed.speedup_vs_teacher", 1.0 if is_teacher else ref_med / med,
        1.0 if is_teacher else ref.min() / runs_a.max(), 1.0 if is_teacher else ref.max() / runs_a.min(),
        nfe_ratio=nfe_ratio)
    out["speed.realtime_factor"] = rec("speed.realtime_factor", video_seconds / med, video_seconds / runs_a.max(),
                                       video_seconds / runs_a.min())
    return out
