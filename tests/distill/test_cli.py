import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from distill.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "distill.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "sample" in out.stdout
    out = subprocess.run([sys.executable, "-m", "distill.cli", "sample", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--steps" in out.stdout and "4k+1" in out.stdout


def test_sample_writes_mp4_gif_and_png(untrained_wan, tmp_path):
    out = tmp_path / "clip.mp4"
    rc = main(["sample", "--teacher", str(untrained_wan), "--prompt", "a red disc moving left slowly on a black "
               "background", "--steps", "3", "--frames", "9", "--height", "32", "--width", "48", "--out", str(out)])
    assert rc == 0
    frames = iio.imread(out)
    assert frames.shape[0] == 9 and frames.shape[1:3] == (32, 48)
    gif = Image.open(tmp_path / "clip.gif")
    assert gif.n_frames == 9 and gif.size == (48, 32)
    grid = np.asarray(Image.open(tmp_path / "clip.png"))
    assert grid.shape[0] > 32 and grid.shape[1] > 48


@pytest.mark.slow  # two torchrun launches, ~1-2 min on 2 cores
def test_sample_under_torchrun_splits_each_clip_over_the_ranks(untrained_wan, tmp_path):
    """`distill sample` on 2 ranks (each clip's tokens split over them, Ulysses) writes the 1-rank clip."""
    args = ["-m", "distill.cli", "sample", "--teacher", str(untrained_wan), "--prompt", "a red disc", "--steps",
            "3", "--frames", "9", "--height", "32", "--width", "64", "--formats", "png", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one.png")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    two = subprocess.run([*torchrun, *args, "--out", str(tmp_path / "two.png")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "split over 2 ranks" in two.stderr
    a = np.asarray(Image.open(tmp_path / "one.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "two.png")).astype(int)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1  # latents agree to ~1e-6; uint8 rounding may flip
    bad = subprocess.run([*torchrun, *args, "--height", "16", "--width", "16", "--out",  # 3 tokens: no even split
                          str(tmp_path / "bad.png")], env=env, capture_output=True, text=True, timeout=300)
    # each rank exits 2 with the one-line cause; torchrun itself reports a failed job as 1
    assert bad.returncode != 0 and "does not split evenly over the rank count=2" in bad.stderr


def test_several_prompts_give_numbered_clips(untrained_wan, tmp_path):
    rc = main(["sample", "--teacher", str(untrained_wan), "--prompt", "a red disc", "--prompt", "a blue plank",
               "--steps", "2", "--frames", "5", "--height", "32", "--width", "32", "--formats", "gif",
               "--out", str(tmp_path / "c.gif")])
    assert rc == 0
    assert (tmp_path / "c-0.gif").is_file() and (tmp_path / "c-1.gif").is_file()


@pytest.mark.parametrize("extra,message", [
    (["--frames", "16"], "frames=16 is not 4k+1"),
    (["--height", "40"], "height=40 is not divisible by 16"),
    (["--prompt", " "], "positions [1] are empty"),
    (["--out", "x.avi"], "'.avi'"),
    (["--guidance-2", "3"], "--guidance-2 is the low-noise expert's CFG scale, and teacher"),
])
def test_bad_input_is_refused_with_exit_2(untrained_wan, tmp_path, capsys, extra, message):
    args = ["sample", "--teacher", str(untrained_wan), "--prompt", "a red disc", "--out", str(tmp_path / "c.mp4")]
    if "--out" in extra:
        args = args[:-2]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_no_prompt_and_missing_teacher(tmp_path, capsys):
    assert main(["sample", "--out", str(tmp_path / "c.mp4")]) == 2
    assert "no prompts" in capsys.readouterr().err
    assert main(["sample", "--teacher", str(tmp_path / "nope"), "--prompt", "x", "--out", str(tmp_path / "c.mp4")]) == 2
    assert "no such folder" in capsys.readouterr().err


# --- the dispatcher, its exit codes and its one-line errors ---------------------------------------------------------
def test_one_module_per_command_and_the_exit_codes_in_help(capsys):
    import importlib

    from distill.cli import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert tuple(sub.choices) == COMMANDS
    for name in COMMANDS:
        module = importlib.import_module(f"distill.commands.{name}")
        assert callable(module.add_parser) and callable(module.run)
        assert sub.choices[name].get_default("func") is module.run
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for code, what in (("0", "done"), ("1", "regression"), ("2", "could not do its job"), ("3", "loss guard"),
                       ("130", "interrupted")):
        assert f"  {code} " in text and what in text


@pytest.mark.parametrize("raised,code,shown", [
    (RuntimeError("the disk caught fire"), 2, "distill sample: error: RuntimeError: the disk caught fire"),
    (FileNotFoundError(2, "No such file or directory", "/nope/weights.bin"), 2,
     "distill sample: error: /nope/weights.bin: No such file or directory"),
    (KeyboardInterrupt(), 130, "distill sample: error: interrupted"),
])
def test_any_failure_is_one_line_and_a_documented_code(monkeypatch, capsys, raised, code, shown):
    import distill.commands.sample as sample

    def fail(args):
        raise raised
    monkeypatch.setattr(sample, "run", fail)
    assert main(["sample", "--prompt", "x", "--out", "c.mp4"]) == code
    err = capsys.readouterr().err.strip()
    assert err == shown and "Traceback" not in err
    with pytest.raises(type(raised)):  # --debug, before or after the command: the exception itself
        main(["--debug", "sample", "--prompt", "x", "--out", "c.mp4"])
    with pytest.raises(type(raised)):
        main(["sample", "--prompt", "x", "--out", "c.mp4", "--debug"])


def test_a_training_stopped_by_its_guard_exits_3(monkeypatch, capsys, tmp_path):
    import distill.train
    from distill.monitor import TrainingAborted

    def abort(cfg, resume=None, progress=True):
        raise TrainingAborted("step 3: the loss is nan; stopped. Last good checkpoint: step-000002")
    monkeypatch.setattr(distill.train, "train", abort)
    config = REPO / "configs" / "recipes" / "consistency-tiny.yaml"
    assert main(["train", str(config), f"out={tmp_path / 'run'}"]) == 3
    assert capsys.readouterr().err.strip() == ("distill train: error: step 3: the loss is nan; stopped. Last good "
                                               "checkpoint: step-000002")


# --- output paths are checked before any model loads, in every command ------------------------------------------
def _bad_out(kind: str, tmp_path, name: str):
    if kind == "proc":
        return f"/proc/{name}"
    if kind == "under-a-file":
        (tmp_path / "notes.txt").write_text("a file")
        return str(tmp_path / "notes.txt" / name)
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder (the /proc case covers an unwritable folder here)")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return str(locked / name)


def _argv(command: str, out: str, untrained_wan, tmp_path) -> list[str]:
    run = tmp_path / "no-run"
    return {
        "sample": ["sample", "--teacher", str(untrained_wan), "--prompt", "a red disc", "--steps", "1",
                   "--frames", "5", "--height", "32", "--width", "32", "--out", out],
        "train": ["train", str(REPO / "configs" / "recipes" / "consistency-tiny.yaml"), f"out={out}"],
        "export": ["export", str(run), "--out", out],
        "eval": ["eval", "--teacher", str(untrained_wan), "--model", "teacher@1", "--out", out],
        "gate": ["gate", "--current", str(tmp_path / "eval.json"), "--policy", str(tmp_path / "policy.yaml"),
                 "--out", out],
        "demo": ["demo", "--fast", "--out", out],
    }[command]


@pytest.mark.parametrize("kind", ["proc", "under-a-file", "read-only"])
@pytest.mark.parametrize("command", ["sample", "train", "export", "eval", "gate", "demo"])
def test_a_bad_output_path_is_refused_before_any_model_loads(untrained_wan, tmp_path, monkeypatch, capsys,
                                                             command, kind):
    import distill.demo
    import distill.train
    from distill.teachers.wan import WanTeacher

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the output path was checked")
    monkeypatch.setattr(WanTeacher, "from_pretrained", loaded)
    monkeypatch.setattr(distill.train, "train", loaded)
    monkeypatch.setattr(distill.demo, "run_demo", loaded)
    out = _bad_out(kind, tmp_path, "clip.mp4" if command == "sample" else "out")
    assert main(_argv(command, out, untrained_wan, tmp_path)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"distill {command}: error: ")
    assert repr(out) in err and ("cannot be written" in err or "which is a file" in err)
    assert not (tmp_path / "notes.txt").is_dir()


def test_a_truncated_teacher_file_is_one_line_naming_it(untrained_wan, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken-wan"
    shutil.copytree(untrained_wan, broken)
    weights = broken / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert main(["sample", "--teacher", str(broken), "--prompt", "a red disc", "--steps", "1", "--frames", "5",
                 "--height", "32", "--width", "32", "--out", str(tmp_path / "c.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"distill sample: error: weights file {str(weights)!r} is incomplete or corrupt")


def test_a_prompt_with_unknown_words_warns_in_one_line(untrained_wan, tmp_path, capsys):
    assert main(["sample", "--teacher", str(untrained_wan), "--prompt", "a red zorblax", "--steps", "1",
                 "--frames", "5", "--height", "32", "--width", "32", "--formats", "gif", "--no-progress",
                 "--out", str(tmp_path / "c.gif")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warned == ["distill sample: warning: prompt 'a red zorblax': the tokenizer does not know the words "
                      "['zorblax']; the text encoder reads <unk> in their place"]
