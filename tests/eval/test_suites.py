"""Shipped eval suites and the metric registry: pinned flow backends, VBench's static prompts in every suite (the
toy world's still subjects), and one registry entry per metric family."""

from pathlib import Path

import pytest
import yaml

from distill.core.config import CONFIG_DIR, ConfigError
from distill.eval import metrics
from distill.eval.suite import load_suite, suite_prompts

SUITES = sorted((CONFIG_DIR / "eval" / "suites").glob("*.yaml"))


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.stem)
def test_every_shipped_suite_pins_its_flow_backend(path):
    assert yaml.safe_load(path.read_text())["flow"] in ("farneback", "raft_small")  # written out, not a default


def test_auto_flow_is_refused(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nprompts: [a]\nflow: auto\n")
    with pytest.raises(ConfigError, match="flow"):
        load_suite(str(suite))


def test_every_suite_has_a_static_subset_and_the_toy_suites_their_still_subjects():
    suite, path = load_suite("general-t2v")
    prompts = suite_prompts(suite, path)
    assert len(suite.static_prompts) >= 6 and set(suite.static_prompts) <= set(prompts)
    assert len(prompts) == len(set(prompts))  # the static scenes are not also in the moving list
    held, path = load_suite("toyworld-held-out")
    prompts = suite_prompts(held, path)
    assert len(prompts) >= 84 and len(held.static_prompts) >= 9 and set(held.static_prompts) <= set(prompts)
    assert all("standing still" in p for p in held.static_prompts)


def test_registry_has_one_entry_per_family_with_a_direction_and_a_description():
    families = [m.family for m in metrics.REGISTRY]
    assert len(families) == len(set(families))
    for m in metrics.REGISTRY:
        assert isinstance(m.higher_is_better, bool) and len(m.how) > 20, m.family
        assert (m.per_clip is not None) == (m.level == "clip"), m.family
        assert (m.statistic is not None) == (m.level == "set") == bool(m.references), m.family
    assert {"fvd", "kvd"} <= set(families) and metrics.family_of("fvd16[i3d]:vs_real").family == "fvd"
    assert metrics.family_of("kvd[domain-video-net,17f]:noise_floor").family == "kvd"
    assert [m.family for m in metrics.REGISTRY if m.static_only] == ["flicker.vbench"]


def test_the_i2v_toy_suite_starts_each_held_out_prompt_from_its_own_render():
    """toyworld-i2v-held-out: held-out prompts only (the held-out rule stays), each with frame 0 of its own
    combination's render at its first clip seed as the first image, and a prompt that says the motion."""
    from distill import toyworld
    from distill.eval.suite import clip_seed, first_images_for

    suite, path = load_suite("toyworld-i2v-held-out")
    prompts = suite_prompts(suite, path)
    held_out = {a.caption() for a in toyworld.held_out_attributes()}
    assert suite.first_images == "toyworld" and len(prompts) >= 84 and set(prompts) <= held_out
    assert all(" moving " in p or " standing still " in p for p in prompts)
    images = first_images_for(suite, prompts)
    assert images.shape == (len(prompts), suite.height, suite.width, 3)
    for i in (0, len(prompts) - 1):
        render = toyworld.render(toyworld.parse_caption(prompts[i]), clip_seed(suite, i, 0), suite.frames,
                                 suite.height, suite.width)
        assert (images[i] == render[0]).all()
        assert toyworld.read_clip(render[:1].repeat(suite.frames, 0))["colour"] == \
            toyworld.parse_caption(prompts[i]).colour  # the image shows the prompt's subject


def test_the_real_teacher_i2v_suite_names_an_image_per_prompt_and_refuses_a_missing_one():
    from distill.eval.suite import first_images_for

    suite, path = load_suite("general-i2v")
    prompts = suite_prompts(suite, path)
    assert set(suite.first_images) == set(prompts) and (suite.detector, suite.clip.model) == ("i3d", "ViT-B-32")
    assert all(Path(f).is_absolute() and Path(f).parent == path.parent / "general-i2v"
               for f in suite.first_images.values())
    missing = [f for f in suite.first_images.values() if not Path(f).is_file()]
    if missing:  # none ships: each is refused by name before any sampling
        with pytest.raises(ConfigError, match="general-i2v.*does not exist"):
            first_images_for(suite, prompts)
