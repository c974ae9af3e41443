"""The process layout of a run: `parallel.sequence: N` puts N consecutive ranks in a sequence-parallel group that
splits each clip's tokens (DeepSpeed-Ulysses, distill.teachers.parallel); the world/N groups are data-parallel
replicas of one another, each with its own batches.

    world 8, parallel.sequence 4:   ranks 0 1 2 3 │ 4 5 6 7
                                    group 0       │ group 1         data rank = group index, data world = 2

Every rank of a group sees the same batch and draws the same noise (the loop's seeds follow the data rank), so the
group computes one replica's losses; DeepSpeed's gradient mean over all ranks then equals the mean over groups (see
distill.teachers.parallel for why no loss scaling is needed).
"""

from __future__ import annotations

from pathlib import Path

from distill.core.config import ConfigError
from distill.teachers.base import Family
from distill.teachers.parallel import Layout
from distill.teachers.parallel import make_layout as _make_layout


def make_layout(sequence: int) -> Layout:
    """Create the run's sequence-parallel groups (a collective: every rank calls it, with the same `sequence`)."""
    try:
        return _make_layout(sequence)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_sequence_parallel(cfg, family: Family, teacher_folder: Path, video, world: int,
                            inits: list[tuple[str, str]] = ()) -> None:
    """Refuse, before any weights load, a sequence degree the job or the networks cannot take: N must divide the
    world size, every DiT's head count (the student's and other networks' inits: (config key, init) pairs), and
    the clip's token count."""
    n = cfg.parallel.sequence
    if n == 1:
        return
    if world % n:
        options = [d for d in range(1, world + 1) if world % d == 0]
        raise ConfigError(f"parallel.sequence={n} does not divide the job's {world} ranks (WORLD_SIZE); "
                          f"use one of {options} or launch a multiple of {n} ranks")
    try:
        family.check_sequence_split(teacher_folder, video.frames, video.height, video.width, n,
                                    f"clip {video.frames}x{video.height}x{video.width}",
                                    [("student.init", cfg.student.init), *inits])
    except ValueError as err:
        raise ConfigError(str(err)) from None
