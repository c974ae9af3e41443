"""Teachers are plug-ins: nothing outside `teachers/` names a model family, so a new family touches no engine, eval
or recipe file (as tests/test_layers.py keeps the layers, and the engine names no recipe)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from distill.teachers import registry
from distill.teachers.base import FamilyError

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = ("distill", "students", "eval")  # every package folder but teachers/


def _pattern(name: str) -> re.Pattern:
    # a family's name as a word or a prefix (WanTeacher, tiny-wan, LTXPipeline), not inside another word
    # ("wandb", "want")
    return re.compile(rf"(?i)(?<![a-z]){re.escape(name)}(?!db|t\b|ts\b|ted\b)")


def family_mentions(roots=OUTSIDE) -> list[str]:
    found = []
    patterns = {name: _pattern(name) for name in registry.names()}
    for folder in roots:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                for name, pattern in patterns.items():
                    if pattern.search(line):
                        found.append(f"{path.relative_to(ROOT)}:{n} names {name!r}: {line.strip()[:100]}")
    return found


def test_no_module_outside_teachers_names_a_family():
    found = family_mentions()
    assert not found, "family names outside teachers/:\n" + "\n".join(found)


def test_the_check_finds_a_family_name_where_there_is_one():
    assert _pattern("wan").search("from diffusers import WanPipeline")
    assert _pattern("wan").search('DEFAULT = "builtin:tiny-wan"')
    assert not _pattern("wan").search("import wandb  # for want of a logger; he wants it")
    assert family_mentions(("teachers",)), "the Wan package itself must be found"


def test_registered_families_and_an_unknown_one_named():
    assert "wan" in registry.names()
    with pytest.raises(FamilyError, match=r"unknown teacher family 'nope'; registered families: \[.*'wan'"):
        registry.family("nope")


def test_family_of_a_folder_and_of_a_dit(untrained_wan):
    family = registry.family_of(untrained_wan)
    assert family.name == "wan" and family.experts(untrained_wan) == ("transformer",)
    dit = family.dit_from_pretrained(untrained_wan)
    assert registry.family_of_dit(dit) is family
    assert len(family.dit_blocks(dit)) == 2
