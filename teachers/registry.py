"""The family registry: every teacher family, by the name a teacher config gives in `family:`.

Families are found, not listed: every sub-package of `distill.teachers` is imported once and its `@register`-ed
`Family` classes are kept, and so are the classes another installed package names under the `distill.teachers`
entry-point group (`[project.entry-points."distill.teachers"] myfamily = "mypkg.family:MyFamily"`). Adding a family
is adding its package; no engine, eval or recipe file changes.

    family(name)            the registered family called `name` (FamilyError naming the registered ones)
    family_of(folder)       the family whose pipeline classes include the folder's model_index.json class
    family_of_dit(module)   the family whose DiT (or expert router) class `module` is
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from pathlib import Path

from torch import nn

from distill.teachers.base import Family, FamilyError, pipeline_class

_FAMILIES: dict[str, Family] = {}
_discovered = False


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family known by its `name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__}: a family needs a class attribute `name` (a non-empty string)")
    if not issubclass(cls, Family):
        raise TypeError(f"{cls.__qualname__}: a family subclasses distill.teachers.base.Family")
    taken = _FAMILIES.get(name)
    if taken is not None and type(taken) is not cls:
        raise ValueError(f"family name {name!r} is taken by {type(taken).__module__}.{type(taken).__qualname__}")
    for other in _FAMILIES.values():
        shared = set(other.pipeline_classes) & set(cls.pipeline_classes)
        if shared and type(other) is not cls:
            raise ValueError(f"family {name!r}: pipeline classes {sorted(shared)} are served by {other.name!r}")
    _FAMILIES[name] = cls()
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import distill.teachers as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg and not info.name.startswith("_") and info.name != "builtin":
            importlib.import_module(f"{package.__name__}.{info.name}")
    for ep in entry_points(group="distill.teachers"):
        register(ep.load())


def names() -> list[str]:
    _discover()
    return sorted(_FAMILIES)


def family(name: str) -> Family:
    _discover()
    if name not in _FAMILIES:
        raise FamilyError(f"unknown teacher family {name!r}; registered families: {names()}")
    return _FAMILIES[name]


def family_of(folder: Path, name: str | None = None) -> Family:
    """The family that serves a pipeline folder, by its model_index.json's class."""
    _discover()
    cls = pipeline_class(folder)
    for fam in _FAMILIES.values():
        if cls in fam.pipeline_classes:
            return fam
    served = {c: f.name for f in _FAMILIES.values() for c in f.pipeline_classes}
    raise FamilyError(f"teacher {name or str(folder)!r}: {Path(folder) / 'model_index.json'} names pipeline class "
                      f"{cls!r}, which no registered family serves; served: {served}")


def family_of_dit(module: nn.Module) -> Family:
    """The family of a DiT (or a network wrapping one: a DeepSpeed engine's `module`, a headed network's
    `backbone`)."""
    _discover()
    module = getattr(module, "module", module)
    module = getattr(module, "backbone", module)
    cls = type(module).__name__
    for fam in _FAMILIES.values():
        if cls in fam.dit_classes:
            return fam
    raise FamilyError(f"no registered family has a DiT of class {cls!r}; families: {names()}")
