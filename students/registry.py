"""The recipe registry: every recipe class, by the name a run config gives in `recipe.name`.

Recipes are found, not listed: every module of `distill.students` is imported once and its `@register`-ed classes
are kept, and so are the classes another installed package names under the `distill.recipes` entry-point group
(`[project.entry-points."distill.recipes"] myrecipe = "mypkg.myrecipe:MyRecipe"`). Adding a recipe is adding its
module; no engine file changes.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Annotated, Union

from pydantic import Field

_RECIPES: dict[str, type] = {}
_NOT_RECIPES = {"base", "registry", "common", "dmd"}
_discovered = False


def register(cls: type) -> type:
    """Class decorator: make a recipe known by its `name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__}: a recipe needs a class attribute `name` (a non-empty string)")
    if name in _RECIPES and _RECIPES[name] is not cls:
        raise ValueError(f"recipe name {name!r} is taken by {_RECIPES[name].__module__}.{_RECIPES[name].__qualname__}")
    config = getattr(cls, "Config", None)
    if config is None or config.model_fields["name"].annotation.__args__ != (name,):
        raise TypeError(f"{cls.__qualname__}: `Config` must be a RecipeConfig with `name: Literal[{name!r}]`")
    _RECIPES[name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import distill.students as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _NOT_RECIPES and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    for ep in entry_points(group="distill.recipes"):
        register(ep.load())


def names() -> list[str]:
    _discover()
    return sorted(_RECIPES)


def get(name: str) -> type:
    _discover()
    if name not in _RECIPES:
        raise KeyError(f"unknown recipe {name!r}; one of {names()}")
    return _RECIPES[name]


def config_type():
    """The pydantic type of `recipe:` in a run config: the recipes' configs, told apart by `name`."""
    _discover()
    configs = tuple(_RECIPES[n].Config for n in names())
    if len(configs) == 1:
        return configs[0]
    return Annotated[Union[configs], Field(discriminator="name")]
