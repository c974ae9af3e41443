"""Sampling spread over two ranks (torchrun, gloo on CPU) gives the same numbers as one process."""

import json
import os
import subprocess
import sys

import pytest

from tests.eval.test_harness import _flatten, _numbers

ARGS = ["eval", "--suite", "toyworld-held-out", "--teacher", "tiny-wan", "--model", "teacher@2",
        "max_prompts=4", "seeds_per_prompt=2", "diversity.prompts=2", "diversity.seeds=2", "speed.clips=1", "speed.warmup=0",
        "batch_size=2"]


def test_two_ranks_equal_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "distill.cli", *ARGS[:1], "--out", str(tmp_path / "one"),
                             *ARGS[1:]], capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    multi = subprocess.run([*torchrun, "-m", "distill.cli", *ARGS[:1], "--out", str(tmp_path / "two"), *ARGS[1:]],
                           capture_output=True, text=True, env=env)
    assert multi.returncode == 0, multi.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "eval.json").read_text())
    two = json.loads((tmp_path / "two" / "eval.json").read_text())
    # a clip's noise depends only on its seed; batches differ between the runs, so equal up to float rounding
    a, b = _flatten(_numbers(one)), _flatten(_numbers(two))
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), key
        else:
            assert b[key] == a[key], key
    assert len(list((tmp_path / "two" / "cache").glob("*.npy"))) == len(list((tmp_path / "one" / "cache").glob("*.npy")))
