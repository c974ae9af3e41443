"""rCM's shipped configs validate as run configs, its errors name its keys, and the planner counts its JVP (the
recipe itself is tested in tests/students/test_rcm.py)."""

import pytest

from distill.core.config import ConfigError
from distill.plan import GIB, activation_bytes, estimate, settings, shapes
from distill.train_config import load_train_config

TINY = "configs/recipes/rcm-tiny.yaml"


def test_shipped_rcm_configs_validate():
    cfg = load_train_config(TINY)
    assert cfg.recipe.name == "rcm" and cfg.recipe.sampler.steps == 2 and cfg.recipe.dmd.weight > 0
    big = {size: load_train_config(f"configs/recipes/rcm-wan2.1-{size}.yaml") for size in ("1.3b", "14b")}
    assert "zero2" in big["1.3b"].deepspeed and big["1.3b"].recipe.dmd.critic_lora is None
    assert "zero3" in big["14b"].deepspeed and big["14b"].recipe.dmd.critic_lora is not None
    assert (big["1.3b"].recipe.p_mean, big["14b"].recipe.p_mean) == (0.7, 1.5)  # rCM's p_G per size


@pytest.mark.parametrize("override, key", [("recipe.dmd.t_range=[0.9,0.1]", "dmd"),
                                           ("recipe.p_std=0", "p_std"),
                                           ("recipe.jvp_attention_chunk=0", "jvp_attention_chunk"),
                                           ("recipe.bogus=1", "bogus")])
def test_run_config_errors_name_the_recipe_key(override, key):
    with pytest.raises(ConfigError, match=f"recipe\\.(rcm\\.)?{key}"):
        load_train_config(TINY, [override])


def test_sequence_parallelism_is_accepted_and_the_14b_config_splits_its_clip():
    # the all-to-alls carry the JVP's tangents (tests/distill/test_parallel.py checks the numbers on two ranks)
    assert load_train_config(TINY, ["parallel.sequence=2"]).parallel.sequence == 2
    assert load_train_config("configs/recipes/rcm-wan2.1-14b.yaml").parallel.sequence == 8


def test_planner_counts_the_jvp_pass_in_the_student_phase():
    cfg = load_train_config(TINY)
    shp = shapes(cfg)
    phase, passes = next((k, v) for k, v in shp.recipe.phases.items() if k.startswith("sCM + DMD"))
    assert ("student", 2, False) in [(p.network, p.batch, p.grad) for p in passes]  # the JVP: primal + tangent
    plan = estimate(cfg, shp, settings(cfg), 2, 80 * GIB, device="cpu", overhead=0)
    act = next(i for i in plan.items if i.name == "activations")
    assert act.note.startswith(phase)  # the largest phase
    jvp = activation_bytes(shp.teacher.family, shp.dit, shp.depth, 2 * cfg.data.batch_size, shp.latent,
                           shp.text_tokens, "float32", False, False)
    assert act.bytes > jvp > 0  # the JVP's pass is part of what the phase holds
