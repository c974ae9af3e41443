"""JEDi (eval/jedi.py): the paper's kernel and scale, the unbiased estimator the registry reports, V-JEPA 2 features
from a tiny random-weight model saved offline and loaded back from its folder (refused by name without one), V-JEPA
2's own frame preprocessing, and a metric name that carries the backbone down to its weights."""

import numpy as np
import pytest
import torch

from distill.core.config import ConfigError
from distill.eval import jedi as J
from distill.eval import metrics
from distill.eval.suite import SuiteConfig

FRAMES = 16  # the suite's JEDi window, of the toy suite's 17-frame clips


def _tiny(tmp_path, name="vjepa2", seed=0, classification=False):
    from transformers import VJEPA2Config, VJEPA2ForVideoClassification, VJEPA2Model

    torch.manual_seed(seed)
    config = VJEPA2Config(crop_size=32, patch_size=8, frames_per_clip=FRAMES, tubelet_size=2, hidden_size=32,
                          num_attention_heads=2, num_hidden_layers=2, mlp_ratio=2.0, num_pooler_layers=1,
                          pred_hidden_size=16, pred_num_attention_heads=2, pred_num_hidden_layers=1,
                          num_labels=3)
    model = (VJEPA2ForVideoClassification if classification else VJEPA2Model)(config)
    folder = tmp_path / name
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _tiny(tmp_path_factory.mktemp("vjepa2"))


@pytest.fixture(scope="module")
def net(folder):
    return J.VJEPA2Features.from_folder(folder, frames=FRAMES)


def _clips(n, seed=0, frames=17, size=48):
    """Smooth random clips (a moving blob over a tinted background), uint8 [n, frames, size, size, 3]."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, frames, size, size, 3), np.uint8)
    for i in range(n):
        bg, colour = g.uniform(30, 120, 3), g.uniform(150, 255, 3)
        x0, y0, vx = g.uniform(8, 40), g.uniform(8, 40), g.uniform(-1.5, 1.5)
        for t in range(frames):
            blob = np.exp(-((xx - x0 - vx * t) ** 2 + (yy - y0) ** 2) / 40.0)[..., None]
            out[i, t] = (bg * (1 - blob) + colour * blob).astype(np.uint8)
    return torch.from_numpy(out)


# --- the distance -------------------------------------------------------------------------------------------------

def test_the_papers_estimator_matches_its_reference_code_example():
    # videojedi/mmd_polynomial.py's own example: mmd_poly(a, b, degree=2, coef0=0) prints 270.7 (sklearn's
    # polynomial kernel, gamma = 1/d); JEDiMetric.compute_metric multiplies by 100
    a = np.arange(1, 10, dtype=float).reshape(3, 3)
    b = np.array([[7, 6, 5], [4, 3, 2], [1, 1, 8], [0, 2, 5]], dtype=float)
    assert J.jedi(a, b, unbiased=False) == pytest.approx(100 * 270.7, abs=100 * 0.05)


def test_identical_sets_score_zero_and_a_shift_grows_it():
    x = np.random.default_rng(0).standard_normal((40, 8)) + 1.0
    assert J.jedi(x, x, matched=True) == pytest.approx(0.0, abs=1e-9)
    assert J.jedi(x, x, unbiased=False) == pytest.approx(0.0, abs=1e-9)
    d = [J.jedi(x + s, x, matched=True) for s in (0.1, 0.3, 1.0)]
    assert 0 < d[0] < d[1] < d[2]


def test_unbiased_where_the_papers_v_statistic_is_not():
    """Two fresh sets from ONE distribution: the U-statistic averages to 0 (within its standard error), the
    paper's V-statistic to a positive bias set by each set's spread, so a set that lost diversity would score
    better. This is the reason the registry reports the U-statistic."""
    g = np.random.default_rng(1)
    u, v = [], []
    for _ in range(200):
        x, y = g.standard_normal((20, 6)) + 0.5, g.standard_normal((20, 6)) + 0.5
        u.append(J.jedi(x, y))
        v.append(J.jedi(x, y, unbiased=False))
    u, v = np.array(u), np.array(v)
    assert abs(u.mean()) < 3 * u.std() / np.sqrt(len(u))
    assert v.mean() > 10 * v.std() / np.sqrt(len(v))


def test_the_distance_refuses_bad_features():
    with pytest.raises(ValueError, match="different feature dimensions"):
        J.jedi(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        J.jedi(np.full((3, 4), np.nan), np.ones((3, 4)))
    with pytest.raises(ValueError, match="matched"):
        J.jedi(np.ones((3, 4)), np.ones((4, 4)), matched=True)


# --- the feature network ------------------------------------------------------------------------------------------

def test_features_have_the_suites_shape_and_read_only_the_window(net):
    clips = _clips(3)
    feats = net.features(clips)
    assert feats.shape == (3, 32) and feats.dtype == torch.float32 and torch.isfinite(feats).all()
    changed = clips.clone()
    changed[:, FRAMES:] = 0  # the 17th frame is outside the 16-frame window
    torch.testing.assert_close(net.features(changed), feats)
    changed[:, 0] = 0
    assert not torch.allclose(net.features(changed), feats)
    with pytest.raises(ValueError, match="16 consecutive frames"):
        net.features(clips[:, :8])


def test_preprocessing_is_vjepa2s_own_video_processor():
    from transformers import VJEPA2VideoProcessor

    clips = _clips(2, size=48)[:, :4, :, :40]  # 48 x 40: not square, so the resize and the crop both act
    ours = J.preprocess_for_vjepa2(clips, 4, 32)
    theirs = VJEPA2VideoProcessor(crop_size=32)([c.numpy() for c in clips], return_tensors="pt")["pixel_values_videos"]
    assert ours.shape == theirs.shape == (2, 4, 3, 32, 32)
    # the processor resizes uint8 frames with its own fixed-point rounding: at most one grey level apart
    assert (ours - theirs).abs().max() <= 1 / 255 / min(J.IMAGENET_STD) + 1e-4


def test_the_distance_on_vjepa_features_is_zero_for_the_same_clips_and_grows_with_a_shift(net):
    clips = _clips(8, seed=2)
    base = net.features(clips).numpy()
    assert J.jedi(base, base, matched=True) == pytest.approx(0.0, abs=1e-9)
    darker = [net.features((clips.float() * f).to(torch.uint8)).numpy() for f in (0.9, 0.6)]
    small, large = (J.jedi(d, base, matched=True) for d in darker)
    assert 0 < small < large


def test_a_classification_folder_gives_its_probe_pooled_features(tmp_path):
    probe = J.VJEPA2Features.from_folder(_tiny(tmp_path, "probe", classification=True), frames=FRAMES)
    assert probe.pooling == "probe" and "-probe-" in probe.name
    assert probe.features(_clips(2)).shape == (2, 32)


# --- loading: local files only, refused by name ---------------------------------------------------------------------

def test_an_absent_folder_or_absent_weights_are_refused_by_name(tmp_path, folder):
    missing = tmp_path / "no-such-vjepa2"
    with pytest.raises(ConfigError, match="no-such-vjepa2.*does not exist"):
        J.VJEPA2Features.from_folder(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((folder / "config.json").read_text())
    (empty / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"empty.*no safetensors weights.*pytorch_model\.bin"):
        J.VJEPA2Features.from_folder(empty)
    (empty / "config.json").write_text('{"model_type": "vit"}')
    (empty / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="'vit' model, not V-JEPA 2"):
        J.VJEPA2Features.from_folder(empty)


def test_weights_that_leave_the_encoder_uninitialised_are_refused(tmp_path, folder):
    from safetensors.torch import load_file, save_file

    part = tmp_path / "part"
    part.mkdir()
    (part / "config.json").write_text((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "layer.1." not in k}, part / "model.safetensors")
    with pytest.raises(ConfigError, match="lacks weights for .* tensors of the feature network"):
        J.VJEPA2Features.from_folder(part)


def test_the_suite_option_and_its_refusals(tmp_path, folder):
    assert SuiteConfig(name="toy", prompts=["a"]).jedi is None  # the toy suites: no JEDi
    suite = SuiteConfig(name="real", prompts=["a"], jedi={"path": str(folder)})
    assert suite.jedi.frames == FRAMES
    with pytest.raises(ValueError, match="frames=15 is not a positive multiple"):
        J.VJEPA2Features.from_folder(folder, frames=15)
    with pytest.raises(ValueError, match="the suite has frames=9"):
        J.VJEPA2Features.from_folder(folder, frames=FRAMES).check_frames(9)


# --- the registry entry -------------------------------------------------------------------------------------------

def _scorers(jedi_net):
    return metrics.Scorers(clip=None, clip_frames=8, detector=None, flow="farneback", frames=17,
                           static_max_flow_px=0.5, jedi=jedi_net)


def test_the_metric_name_carries_the_backbone_down_to_its_weights(tmp_path, folder, net):
    (m,) = [m for m in metrics.REGISTRY if m.family == "jedi"]
    name = m.name(_scorers(net), "vs_teacher")
    assert name == f"jedi[{net.name},16f]:vs_teacher" and metrics.family_of(name) is m
    # the tiny network is named by its width, depth, patch, crop, pooling and weights: never as a real checkpoint
    assert net.name.startswith("vjepa2-vit-d32x2-p8-32px-mean-sha256:") and "vitl" not in net.name
    assert J.VJEPA2Features.from_folder(folder).name == net.name  # the same weights, the same name
    other = J.VJEPA2Features.from_folder(_tiny(tmp_path, "other", seed=1))
    assert other.name != net.name  # other weights of the same shape: another name
    assert m.network(_scorers(None)) is None and m not in metrics.set_metrics(_scorers(None))


def test_the_registry_record_names_the_vjepa_features_and_has_an_interval(net):
    (m,) = [m for m in metrics.REGISTRY if m.family == "jedi"]
    clips = _clips(12, seed=3)
    teacher = net.features(clips).numpy().astype(np.float64)
    student = net.features((clips.float() * 0.8).to(torch.uint8)).numpy().astype(np.float64)
    clusters = np.repeat(np.arange(6), 2)
    rec = metrics.set_record(m, _scorers(net), student, teacher, "vs_teacher", clusters)
    assert rec["detector"] == net.name and rec["dim"] == 32 and "16 consecutive frames" in rec["protocol"]
    assert rec["statistic"] == "jedi" and rec["ci95"][0] <= rec["value"] <= rec["ci95"][1]
    assert rec["value"] == pytest.approx(J.jedi(student, teacher, matched=True))


# --- the harness and the command line -----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_harness_reports_jedi_beside_fvd_and_leaves_a_suite_without_it_unchanged(tmp_path, folder):
    """The built-in teacher (at 8 steps, to keep it short) against itself at 2 and 3 steps, with and without JEDi
    on one clip cache: JEDi's records (vs the teacher, the noise floor, model-vs-model) appear only with the
    option, and every other metric and the suite record of the run without it are the same numbers."""
    from distill import toyworld
    from distill.eval.harness import Harness
    from distill.eval.suite import parse_model_spec
    from distill.teachers.config import load_teacher_config

    base = dict(name="tiny-jedi", toyworld_split="held_out", frames=17, height=64, width=64, fps=8,
                diversity={"prompts": 0, "seeds": 2}, speed={"clips": 1, "warmup": 0}, batch_size=4)
    prompts = toyworld.prompt_suite("held_out").prompts[::14][:3]
    teacher_cfg = load_teacher_config("tiny-wan")
    teacher_cfg = teacher_cfg.model_copy(update={"sampler": teacher_cfg.sampler.model_copy(update={"steps": 8})})
    specs = [parse_model_spec(m) for m in ("naive=teacher@2:euler,role=student", "other=teacher@3:euler,role=student")]
    results = {}
    for jedi_on in (False, True):
        suite = SuiteConfig(**base, **({"jedi": {"path": str(folder)}} if jedi_on else {}))
        harness = Harness(suite, teacher_cfg, prompts, tmp_path / f"out{jedi_on}",
                          cache_dir=tmp_path / "cache", progress=False)
        results[jedi_on] = harness.run(specs)
    plain, with_jedi = results[False], results[True]
    assert "jedi" not in plain["suite"] and "jedi" not in plain["suite"]["metric_definitions"]
    assert with_jedi["suite"]["jedi"]["name"].startswith("vjepa2-") and "jedi" in with_jedi["suite"]["metric_definitions"]
    name = f"jedi[{with_jedi['suite']['jedi']['name']},16f]"
    teacher, naive = with_jedi["models"]["teacher@8"]["metrics"], with_jedi["models"]["naive"]["metrics"]
    assert f"{name}:noise_floor" in teacher and f"{name}:vs_teacher" not in teacher
    rec = naive[f"{name}:vs_teacher"]
    assert rec["detector"] == with_jedi["suite"]["jedi"]["name"] and rec["dim"] == 32
    assert rec["ci95"][0] <= rec["value"] <= rec["ci95"][1] and "other" in rec["paired_diff_vs_models"]
    for model, record in plain["models"].items():
        jedi_free = {k: v for k, v in with_jedi["models"][model]["metrics"].items() if not k.startswith("jedi[")}
        for k, v in record["metrics"].items():
            if not k.startswith("speed."):
                assert jedi_free[k] == v, (model, k)
    assert {k: v for k, v in with_jedi["suite"].items() if k not in ("jedi", "metric_definitions")} == \
        {k: v for k, v in plain["suite"].items() if k != "metric_definitions"}
