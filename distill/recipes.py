"""The engine's one door to the recipes: the recipe a run config names, built with what the teacher says.

This is the only place in `distill/` that looks a recipe up (students/registry.py); everything else talks to the
instance through the contract of students/base.py.
"""

from __future__ import annotations

from distill.core.config import ConfigError
from distill.students import registry
from distill.students.base import Context


def recipe_context(tcfg, family, dit: dict, experts: int = 1, factors=None, image_conditioned: bool = False
                   ) -> Context:
    """`tcfg`: the teacher config; `family`: its family; `dit`: one expert's transformer config.json; `experts`:
    how many expert DiTs the teacher has; `factors`: the family's `VideoFactors` for the teacher's folder;
    `image_conditioned`: whether the run's examples carry a conditioning image (distill.data.image_source)."""
    s = tcfg.sampler
    return Context(teacher_shift=s.shift, teacher_guidance=s.guidance, teacher_steps=s.steps,
                   depth=family.depth(dit), dim=family.width(dit), heads=family.attention_heads(dit), experts=experts,
                   latent_channels=family.latent_channels(dit), factors=factors, image_conditioned=image_conditioned)


def make_recipe(cfg, tcfg, family, dit: dict, experts: int = 1, factors=None, image_conditioned: bool = False):
    """The recipe named by `cfg.recipe.name`, built from its own config section."""
    try:
        ctx = recipe_context(tcfg, family, dit, experts, factors, image_conditioned)
        return registry.get(cfg.recipe.name)(cfg.recipe, ctx)
    except ValueError as err:  # a value that only the teacher's settings show to be wrong
        raise ConfigError(f"recipe: {err}") from None
