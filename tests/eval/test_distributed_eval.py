"""Sampling spread over two ranks (torchrun, gloo on CPU) gives the same numbers as one process: with each rank
sampling its own clips, and (slow) with both ranks sharing every clip (`--sequence 2`, sequence parallelism)."""

import json
import os
import subprocess
import sys

import pytest

from distill.core.config import ConfigError
from distill.eval.harness import Harness
from distill.eval.suite import load_suite
from distill.teachers.config import load_teacher_config
from distill.teachers.resolve import open_teacher
from tests.eval.test_harness import _flatten, _numbers

ARGS = ["eval", "--suite", "toyworld-held-out", "--teacher", "tiny-wan", "--model", "teacher@2",
        "max_prompts=4", "seeds_per_prompt=2", "diversity.prompts=2", "diversity.seeds=2", "speed.clips=1", "speed.warmup=0",
        "batch_size=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def eval_cmd(out, *extra) -> list[str]:
    return ["-m", "distill.cli", *ARGS[:1], "--out", str(out), *ARGS[1:], *extra]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    single = subprocess.run([sys.executable, *eval_cmd(out)], capture_output=True, text=True, env=ENV)
    assert single.returncode == 0, single.stderr[-2000:]
    return out


def two_ranks(out, *extra, port: int):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    multi = subprocess.run([*torchrun, *eval_cmd(out, *extra)], capture_output=True, text=True, env=ENV)
    assert multi.returncode == 0, multi.stderr[-2000:]
    return out


def assert_same_numbers(one, two):
    a = _flatten(_numbers(json.loads((one / "eval.json").read_text())))
    b = _flatten(_numbers(json.loads((two / "eval.json").read_text())))
    assert a.keys() == b.keys()
    layout = {"suite.ranks_per_clip", "suite.speed_protocol"}  # the layout itself, checked by each test
    differ = [key for key in sorted(a.keys() - layout)
              if not (b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6) if isinstance(a[key], float)
                      else b[key] == a[key])]
    assert not differ, [(key, a[key], b[key]) for key in differ]
    assert len(list((two / "cache").glob("*.npy"))) == len(list((one / "cache").glob("*.npy")))


@pytest.mark.slow  # ~2.5 min with its one-process reference: make test's budget (tests/teachers/test_parallel.py
# and the sequence tests here keep the distributed sampling in make test)
def test_two_ranks_equal_one_process(tmp_path, one_process):
    # a clip's noise depends only on its seed; batches differ between the runs, so equal up to float rounding
    two = two_ranks(tmp_path / "two", port=29531)
    assert_same_numbers(one_process, two)
    assert json.loads((two / "eval.json").read_text())["suite"]["ranks_per_clip"] == 1


@pytest.mark.slow  # ~2 min: both ranks take part in every clip
def test_two_ranks_sharing_each_clip_equal_one_process(tmp_path, one_process):
    two = two_ranks(tmp_path / "two", "--sequence", "2", port=29532)
    assert_same_numbers(one_process, two)
    suite = json.loads((two / "eval.json").read_text())["suite"]
    assert suite["ranks_per_clip"] == 2 and "split over 2 ranks" in suite["speed_protocol"]


# --- refused before any sampling --------------------------------------------------------------------------------
def test_a_sequence_degree_that_does_not_divide_the_ranks_is_refused(tmp_path):
    env = {**ENV, "WORLD_SIZE": "2"}  # as under torchrun, refused before joining any process group
    proc = subprocess.run([sys.executable, *eval_cmd(tmp_path / "out", "--sequence", "3")], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--sequence=3 does not divide the job's 2 ranks" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_sequence_degree_the_dit_or_clip_cannot_take_is_refused(tmp_path):
    suite, _ = load_suite("toyworld-held-out", [])
    family, folder = open_teacher("builtin:tiny-wan")  # 4 heads; 17x64x64 is 320 tokens
    harness = Harness(suite, load_teacher_config("tiny-wan"), ["a red disc"], tmp_path, sequence=3)
    with pytest.raises(ConfigError, match=r"clip 17x64x64: --sequence=3 does not divide the DiT's 4 attention heads"):
        harness._check_split(family, folder)
    odd, _ = load_suite("toyworld-held-out", ["height=24", "width=40", "frames=1"])  # 15 tokens
    harness = Harness(odd, load_teacher_config("tiny-wan"), ["a red disc"], tmp_path, sequence=2)
    with pytest.raises(ConfigError, match=r"15 tokens does not split evenly over --sequence=2"):
        harness._check_split(family, folder)
