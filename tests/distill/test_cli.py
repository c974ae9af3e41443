import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from distill.cli import main


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "distill.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "sample" in out.stdout
    out = subprocess.run([sys.executable, "-m", "distill.cli", "sample", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--steps" in out.stdout and "4k+1" in out.stdout


def test_sample_writes_mp4_gif_and_png(untrained_wan, tmp_path):
    out = tmp_path / "clip.mp4"
    rc = main(["sample", "--teacher", str(untrained_wan), "--prompt", "a red circle moving left slowly on a black "
               "background", "--steps", "3", "--frames", "9", "--height", "32", "--width", "48", "--out", str(out)])
    assert rc == 0
    frames = iio.imread(out)
    assert frames.shape[0] == 9 and frames.shape[1:3] == (32, 48)
    gif = Image.open(tmp_path / "clip.gif")
    assert gif.n_frames == 9 and gif.size == (48, 32)
    grid = np.asarray(Image.open(tmp_path / "clip.png"))
    assert grid.shape[0] > 32 and grid.shape[1] > 48


def test_several_prompts_give_numbered_clips(untrained_wan, tmp_path):
    rc = main(["sample", "--teacher", str(untrained_wan), "--prompt", "a red circle", "--prompt", "a blue square",
               "--steps", "2", "--frames", "5", "--height", "32", "--width", "32", "--formats", "gif",
               "--out", str(tmp_path / "c.gif")])
    assert rc == 0
    assert (tmp_path / "c-0.gif").is_file() and (tmp_path / "c-1.gif").is_file()


@pytest.mark.parametrize("extra,message", [
    (["--frames", "16"], "frames=16 is not 4k+1"),
    (["--height", "40"], "height=40 is not divisible by 16"),
    (["--prompt", " "], "positions [1] are empty"),
    (["--out", "x.avi"], "'.avi'"),
])
def test_bad_input_is_refused_with_exit_2(untrained_wan, tmp_path, capsys, extra, message):
    args = ["sample", "--teacher", str(untrained_wan), "--prompt", "a red circle", "--out", str(tmp_path / "c.mp4")]
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
