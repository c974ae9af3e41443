"""Built-in teacher weights this project once shipped and has since replaced, by `checkpoint_hash`.

A student, checkpoint or eval baseline records the hash of the teacher it was made with. When that hash is one of
these, the refusal names the retired teacher rather than only printing two hashes: the user learns that the run
belongs to an older built-in teacher (and which), not that a file was damaged.
"""

from __future__ import annotations

RETIRED = {
    "c198cebf10ba6637": "builtin:tiny-wan of the first toy world (circle/square/triangle; replaced on 2026-12-03 by "
                        "toy world v2's teacher, docs/toy-world.md)",
    "61ee3e1765b95c77": "builtin:tiny-wan-a14b of the first toy world (replaced on 2026-12-03 by toy world v2's "
                        "two-expert teacher, docs/toy-world.md)",
    "c4af5e267cd033f7": "builtin:tiny-wan of toy world v2 with its DiT trained on two CPU cores (8,000 steps of "
                        "batch 16; replaced on 2026-12-04 by the same VAE with a DiT trained 6,200 steps of batch 64 "
                        "on a GPU, docs/tiny-teacher.md)",
    "21a4942276d77210": "builtin:tiny-wan of toy world v2 with its DiT trained 6,200 steps of batch 64 on a GPU and "
                        "sampled with guidance 5 (replaced on 2026-12-04 by a DiT trained 9,500 steps on a GPU, "
                        "sampled with guidance 3, docs/tiny-teacher.md)",
}


def retired_note(teacher_hash: str | None) -> str:
    """' (that is <the retired teacher>)' for a retired built-in teacher's hash, else ''."""
    name = RETIRED.get(teacher_hash or "")
    return f" (that is the retired {name})" if name else ""
