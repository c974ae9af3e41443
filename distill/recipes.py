"""The engine's one door to the recipes: the recipe a run config names, built with what the teacher says.

This is the only place in `distill/` that looks a recipe up (students/registry.py); everything else talks to the
instance through the contract of students/base.py.
"""

from __future__ import annotations

from distill.core.config import ConfigError
from distill.students import registry
from distill.students.base import Context


def recipe_context(tcfg, dit: dict) -> Context:
    """`tcfg`: the teacher config; `dit`: its transformer's config.json."""
    s = tcfg.sampler
    heads = int(dit["num_attention_heads"])
    return Context(teacher_shift=s.shift, teacher_guidance=s.guidance, teacher_steps=s.steps,
                   depth=int(dit.get("num_layers", 1)), dim=heads * int(dit["attention_head_dim"]), heads=heads)


def make_recipe(cfg, tcfg, dit: dict):
    """The recipe named by `cfg.recipe.name`, built from its own config section."""
    try:
        return registry.get(cfg.recipe.name)(cfg.recipe, recipe_context(tcfg, dit))
    except ValueError as err:  # a value that only the teacher's settings show to be wrong
        raise ConfigError(f"recipe: {err}") from None
