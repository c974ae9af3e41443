"""First-frame fidelity and subject consistency (eval/first_frame.py) through the metric registry, on synthetic toy
clips scored with the shipped domain CLIP: a clip that drifts from its first image scores worse than one that keeps
it, a subject that changes identity mid-clip scores worse than one that holds, the paired intervals contain their
points, the shipped I2V gate rules fail a clearly worse student and pass an identical one, every name carries its
backbone, and a suite carries its first images (the toy world's, or files) or, text-to-video, none at all."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from distill import toyworld
from distill.core.config import CONFIG_DIR, ConfigError
from distill.eval import first_frame, metrics
from distill.eval.clip_score import ClipBackend
from distill.eval.gate import EvalDoc, Policy, evaluate, load_policy
from distill.eval.suite import SuiteConfig, clip_seed, first_images_for, load_suite, real_clips_for
from distill.toyworld import Attributes

SUBJECTS = [Attributes("disc", "red", "black", "right", "slowly"),
            Attributes("plank", "yellow", "gray", "up", "quickly"),
            Attributes("pillar", "green", "white", "still", "still"),
            Attributes("dot", "blue", "gray", "left", "slowly")]
# the same motion and background, another shape and colour: what a subject that loses its identity turns into
OTHERS = [Attributes("plank", "blue", "black", "right", "slowly"),
          Attributes("disc", "green", "gray", "up", "quickly"),
          Attributes("dot", "red", "white", "still", "still"),
          Attributes("pillar", "yellow", "gray", "left", "slowly")]
PSNR, DIST, SUBJ = "first_frame.psnr", "first_frame.feature_dist[domain-clip]", "subject_consistency[domain-clip]"
I2V_POLICY = CONFIG_DIR / "eval" / "gates" / "toyworld-i2v.yaml"


@pytest.fixture(scope="module")
def scorers():
    return metrics.Scorers(clip=ClipBackend.domain(), clip_frames=8, detector=None, flow="farneback", frames=17,
                           static_max_flow_px=None)


def render(subjects, seed=3) -> np.ndarray:
    return np.stack([toyworld.render(a, seed) for a in subjects])


def with_noise(videos: np.ndarray, sd: float, seed: int) -> np.ndarray:
    """A decoder's grain: independent Gaussian noise of `sd` grey levels on every pixel."""
    noise = np.random.default_rng(seed).normal(0.0, sd, videos.shape)
    return np.clip(videos + noise.round(), 0, 255).astype(np.uint8)


def turned(videos: np.ndarray, others: np.ndarray, from_frame: int) -> np.ndarray:
    """The clips with every frame from `from_frame` on taken from `others`: the subject changes identity there."""
    out = videos.copy()
    out[:, from_frame:] = others[:, from_frame:]
    return out


def score(family: str, videos: np.ndarray, conditioning, scorers) -> np.ndarray:
    """One registry entry's per-clip values, called as the harness calls it."""
    m = next(m for m in metrics.REGISTRY if m.family == family)
    if m.conditioning == "first_image":
        conditioning = torch.from_numpy(conditioning)
    return np.asarray(m.per_clip(torch.from_numpy(videos), conditioning, scorers))


def test_a_clip_that_drifts_from_its_first_image_scores_worse_on_psnr_and_feature_distance(scorers):
    clips = render(SUBJECTS[:3])
    images = clips[:, 0].copy()
    kept = with_noise(clips, 2.0, seed=0)  # starts from its image, with a decoder's grain
    moved = with_noise(render(SUBJECTS[:3], seed=11), 2.0, seed=0)  # the same subject, started elsewhere
    other = turned(kept, render(OTHERS[:3]), 0)  # frame 0 shows another subject
    clips_by = {"kept": kept, "moved": moved, "other": other}
    psnr = {k: score("first_frame.psnr", v, images, scorers) for k, v in clips_by.items()}
    dist = {k: score("first_frame.feature_dist", v, images, scorers) for k, v in clips_by.items()}
    assert (psnr["kept"] > 35).all() and (psnr["moved"] < psnr["kept"] - 10).all()
    assert (psnr["other"] < psnr["kept"] - 10).all()
    assert (dist["kept"] < 0.005).all() and (dist["other"] > 0.2).all()
    assert (dist["moved"] > dist["kept"]).all()
    # an exact copy reads the ceiling, not infinity
    exact = first_frame.first_frame_psnr(torch.from_numpy(clips), torch.from_numpy(images))
    assert torch.equal(exact, torch.full((3,), first_frame.PSNR_CEILING_DB, dtype=torch.float64))


def test_a_subject_that_changes_identity_mid_clip_scores_worse_on_subject_consistency(scorers):
    holds = with_noise(render(SUBJECTS[:3]), 2.0, seed=1)
    changes = turned(holds, with_noise(render(OTHERS[:3]), 2.0, seed=1), toyworld.FRAMES // 2)
    held, changed = score("subject_consistency", holds, None, scorers), score("subject_consistency", changes, None,
                                                                              scorers)
    assert (held > 0.9).all() and (changed < held - 0.05).all(), (held, changed)


def test_subject_consistency_is_vbenchs_rule():
    """Frames red, red, green, green with one-hot colour features: t=1 scores (1 + 1)/2, t=2 (0 + 0)/2 and t=3
    (1 + 0)/2 (like its previous frame, unlike the first), so the clip scores 0.5."""
    video = torch.zeros(1, 4, 8, 8, 3, dtype=torch.uint8)
    video[0, :2, ..., 0] = 255
    video[0, 2:, ..., 1] = 255

    def colour_features(images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(images.double().mean(dim=(1, 2)), dim=-1)

    assert first_frame.subject_consistency(video, colour_features).item() == pytest.approx(0.5)


def test_metric_names_carry_the_backbone(scorers):
    names = {m.family: m.name(scorers) for m in metrics.clip_metrics(has_first_images=True)}
    assert names["first_frame.psnr"] == PSNR and names["first_frame.feature_dist"] == DIST
    assert names["subject_consistency"] == SUBJ
    standard = SimpleNamespace(clip=SimpleNamespace(name="ViT-B-32/laion2b_s34b_b79k"))
    assert metrics.family_of(DIST).name(standard) == "first_frame.feature_dist[ViT-B-32/laion2b_s34b_b79k]"
    assert metrics.family_of(SUBJ).name(standard) == "subject_consistency[ViT-B-32/laion2b_s34b_b79k]"
    assert metrics.family_of(PSNR).family == "first_frame.psnr"


def test_without_first_images_the_first_frame_metrics_are_absent(scorers):
    clips = render(SUBJECTS[:1])[:, :4]  # 4 frames: enough for every per-clip metric, cheap for the flow
    without = metrics.clip_values(clips, [SUBJECTS[0].caption()], scorers, first_images=None)
    assert not any(k.startswith("first_frame") for k in without) and SUBJ in without
    with_images = metrics.clip_values(clips, [SUBJECTS[0].caption()], scorers, first_images=clips[:, 0].copy())
    assert set(with_images) - set(without) == {PSNR, DIST} and with_images[DIST][0] == pytest.approx(0, abs=1e-6)
    assert {m.family for m in metrics.clip_metrics(False)} == \
        {m.family for m in metrics.clip_metrics(True)} - {"first_frame.psnr", "first_frame.feature_dist"}


# --- paired against the teacher, and gated ----------------------------------------------------------------------

SEEDS = 2


@pytest.fixture(scope="module")
def paired(scorers):
    """4 prompts x 2 seeds. The teacher starts every clip from its prompt's image (each seed its own grain); the
    identical student is the teacher's clips; the worse one starts from another subject and turns into it halfway."""
    clips = np.repeat(render(SUBJECTS), SEEDS, axis=0)
    images = clips[:, 0].copy()
    teacher = np.concatenate([with_noise(clips[j:j + 1], 2.0, seed=j) for j in range(len(clips))])
    others = np.repeat(with_noise(render(OTHERS), 2.0, seed=7), SEEDS, axis=0)
    worse = turned(teacher, others, toyworld.FRAMES // 2)
    worse[:, 0] = others[:, 0]
    clusters = np.repeat(np.arange(len(SUBJECTS)), SEEDS)
    values = {name: {f: score(f, v, images, scorers) for f in ("first_frame.psnr", "first_frame.feature_dist",
                                                                "subject_consistency")}
              for name, v in (("teacher", teacher), ("same", teacher.copy()), ("worse", worse))}
    return values, clusters, scorers


def records(values, clusters, scorers) -> dict:
    """eval.json's models section for the three models (per-clip records, paired against the teacher)."""
    out = {}
    for name, role in (("teacher", "teacher"), ("same", "student"), ("worse", "student")):
        recs = {}
        for family, mine in values[name].items():
            m = next(m for m in metrics.REGISTRY if m.family == family)
            recs[m.name(scorers)] = metrics.clip_record(m, mine, clusters,
                                                        None if name == "teacher" else values["teacher"][family])
        out[name] = {"role": role, "metrics": recs}
    return out


def test_paired_intervals_contain_their_points(paired):
    values, clusters, scorers = paired
    models = records(values, clusters, scorers)
    for name in ("same", "worse"):
        for key, rec in models[name]["metrics"].items():
            lo, hi = rec["ci95"]
            assert lo <= rec["value"] <= hi, (name, key)
            d = rec["paired_diff_vs_teacher"]
            assert d["ci95"][0] <= d["value"] <= d["ci95"][1], (name, key)
            assert rec["n"] == 8 and rec["n_prompts"] == 4 and "se_seeds" in rec
    same, worse = models["same"]["metrics"], models["worse"]["metrics"]
    assert all(same[k]["paired_diff_vs_teacher"]["value"] == 0.0 for k in same)
    assert worse[PSNR]["paired_diff_vs_teacher"]["ci95"][1] < -10  # dB, the whole interval
    assert worse[DIST]["paired_diff_vs_teacher"]["ci95"][0] > 0.2
    assert worse[SUBJ]["paired_diff_vs_teacher"]["ci95"][1] < -0.05


def test_the_shipped_i2v_rules_fail_a_clearly_worse_student_and_pass_an_identical_one(paired):
    values, clusters, scorers = paired
    shipped = load_policy(I2V_POLICY)
    rules = [r for r in shipped.rules if r.metric in (PSNR, DIST, SUBJ)]
    assert len(rules) == 3 and all(r.required and r.kind.endswith("paired_diff_vs_teacher") for r in rules)
    policy = Policy(name="i2v-rules", rules=rules)
    result = evaluate(policy, EvalDoc("eval.json", records(values, clusters, scorers)), None)
    status = {(c.model, c.metric): c.status for c in result.checks}
    assert status == {**{("same", m): "pass" for m in (PSNR, DIST, SUBJ)},
                      **{("worse", m): "fail" for m in (PSNR, DIST, SUBJ)}}, status


# --- a suite's first images ---------------------------------------------------------------------------------------

TOY_PROMPTS = [a.caption() for a in SUBJECTS[:3]]


def test_a_toy_suite_carries_frame_0_of_each_prompts_render_and_a_t2v_suite_none():
    suite = SuiteConfig(name="i2v", prompts=TOY_PROMPTS, real="toyworld", first_images="toyworld", seed=5)
    images = first_images_for(suite, TOY_PROMPTS)
    real = real_clips_for(suite)
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
    for i, prompt in enumerate(TOY_PROMPTS):  # the real clip of the prompt's first seed starts from it
        assert np.array_equal(images[i], real(prompt, clip_seed(suite, i, 0))[0])
    assert first_images_for(SuiteConfig(name="t2v", prompts=TOY_PROMPTS), TOY_PROMPTS) is None
    with pytest.raises(ConfigError, match="first_images.*toy grammar"):
        first_images_for(suite, ["a cat on a sofa"])


def test_a_suite_lists_image_files_by_prompt_and_bad_ones_are_refused_by_name(tmp_path):
    clips = render(SUBJECTS[:2])
    (tmp_path / "img").mkdir()
    for i in range(2):
        Image.fromarray(clips[i, 0]).save(tmp_path / "img" / f"{i}.png")
    Image.fromarray(clips[0, 0, :32]).save(tmp_path / "img" / "small.png")
    suite_file = tmp_path / "s.yaml"

    def suite_with(files: dict):
        lines = [f'  "{p}": {f}' for p, f in files.items()]
        suite_file.write_text("name: s\nprompts:\n" + "".join(f'  - "{p}"\n' for p in TOY_PROMPTS[:2])
                              + "flow: farneback\nfirst_images:\n" + "\n".join(lines) + "\n")
        return load_suite(str(suite_file))[0]

    suite = suite_with({TOY_PROMPTS[0]: "img/0.png", TOY_PROMPTS[1]: "img/1.png"})
    assert np.array_equal(first_images_for(suite, TOY_PROMPTS[:2]), clips[:, 0])  # relative to the suite file
    with pytest.raises(ConfigError, match="no image for 1 of its 2 prompts.*moving up quickly"):
        first_images_for(suite_with({TOY_PROMPTS[0]: "img/0.png"}), TOY_PROMPTS[:2])
    with pytest.raises(ConfigError, match=r"small.png'? is 64x32.*64x64"):
        first_images_for(suite_with({TOY_PROMPTS[0]: "img/0.png", TOY_PROMPTS[1]: "img/small.png"}), TOY_PROMPTS[:2])
    with pytest.raises(ConfigError, match="gone.png'? does not exist"):
        first_images_for(suite_with({TOY_PROMPTS[0]: "img/0.png", TOY_PROMPTS[1]: "img/gone.png"}), TOY_PROMPTS[:2])


@pytest.mark.slow
def test_the_harness_scores_an_image_suite_end_to_end(tmp_path):
    """The built-in teacher on a toy suite with first images: eval.json carries the first-frame records, paired
    against the teacher, the suite record says which images, summary.md shows them, and the I2V gate can judge it.
    (The text-to-video teacher ignores the image: this checks the plumbing, not an I2V model's fidelity.)"""
    import json

    from distill.eval.gate import run_gate
    from distill.eval.harness import Harness
    from distill.eval.report import write_outputs
    from distill.eval.suite import parse_model_spec
    from distill.teachers.config import load_teacher_config

    suite = SuiteConfig(name="i2v-test", toyworld_split="held_out", real="toyworld", first_images="toyworld",
                        diversity={"prompts": 2, "seeds": 2}, speed={"clips": 1, "warmup": 0}, noise_floor=False,
                        batch_size=4)  # the I2V gate's diversity rule needs the diversity set
    prompts = toyworld.prompt_suite("held_out").prompts[::14][:3]
    harness = Harness(suite, load_teacher_config("tiny-wan"), prompts, tmp_path, real_clips=real_clips_for(suite),
                      progress=False)
    result = harness.run([parse_model_spec("naive=teacher@2:euler,role=student")])
    write_outputs(result, tmp_path, harness.videos)
    naive = result["models"]["naive"]["metrics"]
    for key in (PSNR, DIST, SUBJ):
        d = naive[key]["paired_diff_vs_teacher"]
        assert naive[key]["n"] == 3 and d["ci95"][0] <= d["value"] <= d["ci95"][1], key
    assert np.array_equal(harness.first_images[0], real_clips_for(suite)(prompts[0], clip_seed(suite, 0, 0))[0])
    fi = result["suite"]["first_images"]
    assert fi["source"] == "toyworld" and fi["n"] == 3 and len(fi["sha256"]) == 64
    assert "first_frame.psnr" in result["suite"]["metric_definitions"]
    summary = (tmp_path / "summary.md").read_text()
    assert "| first_frame.psnr ↑ |" in summary and "First images: 3" in summary and " dB [" in summary
    assert len(json.loads((tmp_path / "eval.json").read_text())["per_clip"]["models"]["naive"][PSNR]["values"]) == 3
    assert run_gate(tmp_path / "eval.json", None, I2V_POLICY, tmp_path / "gate", quiet=True) in (0, 1)
