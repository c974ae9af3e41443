"""DMD2's shipped configs validate as run configs, and the run config's errors name DMD2's keys (the recipe
itself is tested in tests/students/test_dmd2.py)."""

import pytest

from distill.core.config import ConfigError
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
