"""What the wheel installs, and the launch path from a user's repository that has its own `eval/`, `students/` and
`teachers/` packages (the documented `torchrun -m distill.cli ...` puts the current folder first on sys.path)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the venv's setuptools builds it, so nothing is fetched.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    (path,) = out.glob("distill-*.whl")
    return path


def test_the_wheel_installs_one_top_level_import_package(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
        info = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        declared = zf.read(info).decode().split()
    assert top_level == {"distill"}, top_level
    assert declared == ["distill"]
    # the layers are sub-packages, and the shipped checkpoints travel with them
    for path in ("distill/eval/harness.py", "distill/teachers/base.py", "distill/teachers/wan/family.py",
                 "distill/students/consistency.py",
                 "distill/core/config.py", "distill/toyworld/domain.py",
                 "distill/teachers/builtin/tiny-wan/model_index.json",
                 "distill/eval/builtin/domain-clip/open_clip_model.safetensors"):
        assert path in names, path


def test_distill_runs_from_a_repository_with_its_own_eval_students_and_teachers(tmp_path):
    for name in ("eval", "students", "teachers"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('the user repository\\'s own {name}')\n")
    done = subprocess.run([sys.executable, "-m", "distill.cli", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "eval" in done.stdout and "train" in done.stdout
    done = subprocess.run([sys.executable, "-c", "import distill.eval.gate, distill.teachers.resolve, "
                           "distill.students.apt"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    # and the user's folder is still theirs: importing it from there gets their module, not ours
    theirs = subprocess.run([sys.executable, "-c", "import eval"], cwd=tmp_path, capture_output=True, text=True)
    assert "the user repository's own eval" in theirs.stderr
