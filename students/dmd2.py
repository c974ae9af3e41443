"""The `dmd2` recipe: distribution matching distillation (Yin et al. 2024, DMD2) of a flow-matching teacher into a
few-step student. Its machinery (config, critic, backward simulation, the losses, the memory plan) is
students/dmd.py, which rCM's regulariser shares; docs/recipes/dmd2.md has the equations."""

from __future__ import annotations

from distill.students.dmd import CriticLora, DistributionMatching, DMD2Config
from distill.students.registry import register

__all__ = ["DMD2", "DMD2Config", "CriticLora"]


@register
class DMD2(DistributionMatching):
    name = "dmd2"
