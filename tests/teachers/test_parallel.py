"""Sequence parallelism in the teacher layer: the split rules, and one teacher's sampling spread over two CPU ranks
(gloo) giving the one-rank latents."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.teachers.parallel import check_sequence_split, token_count

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "distill" / "parallel_worker.py"


def torchrun(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--standalone", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_split_rules_name_the_heads_and_the_tokens():
    check_sequence_split(12, 32760, 4)  # Wan 2.1 1.3B at 81x480x832 over 4 ranks
    with pytest.raises(ValueError, match="parallel.sequence=8 does not divide the DiT's 12 attention heads.*"
                                         r"\[1, 2, 3, 4, 6, 12\]"):
        check_sequence_split(12, 32760, 8)
    check_sequence_split(40, 32760, 8)  # 14B's 40 heads take 8
    with pytest.raises(ValueError, match="clip of 75 tokens does not split evenly over parallel.sequence=2"):
        check_sequence_split(12, 75, 2)
    # 81 frames x 480 x 832 -> latent 21 x 60 x 104 -> 1x2x2 patches: 21 x 30 x 52 tokens
    assert token_count((16, 21, 60, 104), (1, 2, 2)) == 32760


def test_teacher_sampling_spread_over_two_ranks_gives_the_one_rank_latents(tmp_path, untrained_wan):
    out = tmp_path / "sample.json"
    proc = torchrun(WORKER, "sample", out, untrained_wan)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in json.loads(out.read_text()):
        s = rank["sample"]
        # 5 frames of 64x64 -> latent 2 x 16 x 16 -> 4x4 patches: 32 tokens, 16 per rank in every block
        assert s["block_tokens"] == [16], s
        assert s["latents"] <= 1e-5 * max(1.0, s["scale"]), s
