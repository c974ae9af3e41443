"""The built-in teacher's sampler settings are written in three places: the checkpoint's own defaults
(teachers/builtin/tiny-wan/distill_teacher.json), its named config (configs/teachers/tiny-wan.yaml), and the CFG
the tiny recipes put inside the teacher's ODE or score. They must agree: a recipe that distils the teacher at
another CFG than the teacher samples with trains its students toward clips the eval never compares them with."""

from pathlib import Path

import yaml

from distill.teachers.config import load_teacher_config

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes"


def test_the_named_config_matches_the_checkpoint_defaults():
    named, own = load_teacher_config("tiny-wan"), load_teacher_config("builtin:tiny-wan")
    assert named.sampler == own.sampler and named.video == own.video
    assert named.max_sequence_length == own.max_sequence_length


def test_every_tiny_recipe_uses_the_teachers_own_guidance():
    guidance = load_teacher_config("builtin:tiny-wan").sampler.guidance
    checked = []
    for path in sorted(RECIPES.glob("*-tiny.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if cfg.get("teacher") == "tiny-wan" and "guidance" in cfg.get("recipe", {}):
            assert cfg["recipe"]["guidance"] == guidance, f"{path.name}: recipe.guidance {cfg['recipe']['guidance']}"
            checked.append(path.name)
    assert {"consistency-tiny.yaml", "dmd2-tiny.yaml", "rcm-tiny.yaml"} <= set(checked)
