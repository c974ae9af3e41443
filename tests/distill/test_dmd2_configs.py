"""DMD2's shipped configs validate as run configs, and the run config's errors name DMD2's keys (the recipe
itself is tested in tests/students/test_dmd2.py)."""

import pytest

from distill.core.config import REPO_ROOT, ConfigError
from distill.teachers.samplers import student_levels
from distill.train_config import load_train_config

TINY = "configs/recipes/dmd2-tiny.yaml"


def test_shipped_dmd2_configs_validate():
    cfg = load_train_config(TINY)
    assert cfg.recipe.name == "dmd2" and cfg.recipe.sampler.steps == 4 and cfg.student.init == "teacher"
    assert "zero2" in cfg.deepspeed
    big = {size: load_train_config(f"configs/recipes/dmd2-wan2.1-{size}.yaml") for size in ("1.3b", "14b")}
    assert "zero2" in big["1.3b"].deepspeed and big["1.3b"].recipe.critic_lora is None
    assert "zero3" in big["14b"].deepspeed and big["14b"].recipe.critic_lora is not None


@pytest.mark.parametrize("override, key", [("recipe.t_range=[0.9,0.1]", "t_range"),
                                           ("recipe.critic_steps=0", "critic_steps"),
                                           ("recipe.bogus=1", "bogus")])
def test_run_config_errors_name_the_recipe_key(override, key):
    with pytest.raises(ConfigError, match=f"recipe\\.(dmd2\\.)?{key}"):
        load_train_config(TINY, [override])


def test_gan_term_without_real_clips_is_refused_at_load():
    with pytest.raises(ConfigError, match="recipe.gan_weight.*data.latents"):
        load_train_config(TINY, ["recipe.gan_weight=0.01", "data.latents=teacher"])
    assert load_train_config(TINY, ["recipe.gan_weight=0.01"]).recipe.gan_weight == 0.01


def test_shipped_recipe_configs_sample_on_grids_where_every_step_is_real():
    """No 4-step level below 0.1 (the legacy grid's last level was 0.0089 at shift 3), and on the two-expert
    configs steps on both sides of Wan 2.2 A14B's boundary 0.875, none within float32 reach of it."""
    from distill.teachers.config import load_teacher_config

    for path in sorted((REPO_ROOT / "configs" / "recipes").glob("*.yaml")):
        cfg = load_train_config(path)
        s = cfg.recipe.sampler
        levels = student_levels(s.steps, s.shift or load_teacher_config(cfg.teacher).sampler.shift, s.grid)
        assert s.grid == "shifted-uniform" and levels[0] == 1.0 and levels.min() >= 0.1, (path.name, levels)
        if "a14b" in path.name:
            high = levels >= 0.875
            assert high.any() and not high.all() and (levels - 0.875).abs().min() > 1e-3, (path.name, levels)


def test_wan_dmd2_configs_run_dmd2_as_self_forcing_does():
    """Self-Forcing's guidance 3 is cond + 3·(cond − uncond): 4 in this project's uncond + w·(cond − uncond); its
    shift 5 for levels and grid ([1, 0.938, 0.833, 0.625]); levels shifted then clamped to [0.02, 0.98]; the fake
    score on the full range; a fresh batch per critic update."""
    for size in ("wan2.1-1.3b", "wan2.1-14b", "wan2.2-a14b"):
        r = load_train_config(f"configs/recipes/dmd2-{size}.yaml").recipe
        assert (r.guidance, r.t_shift, r.sampler.shift, r.t_range) == (4.0, 5.0, 5.0, (0.02, 0.98)), size
        assert r.t_sampling == "shift-then-clamp" and r.critic_full_range and r.fresh_critic_batch, size
        levels = student_levels(r.sampler.steps, r.sampler.shift, r.sampler.grid)
        assert [round(float(v), 3) for v in levels] == [1.0, 0.938, 0.833, 0.625]
