"""`distill sample --image PATH` (and `--last-image`): an image-to-video teacher samples from its first frame; an
image for a text-to-video teacher, no image for an image-to-video one, a last image where the checkpoint takes none
and a missing image file are refused by flag and file before any weights load."""

import numpy as np
import pytest
from PIL import Image

from distill.cli import main
from distill.teachers.wan.tiny import TinyWanSpec, build_i2v_pipeline
from distill.toyworld import vocabulary

PROMPT = "a red disc moving left slowly on a black background"
FRAMES, HEIGHT, WIDTH = 5, 32, 48


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """shape -> a saved tiny image-to-video pipeline folder (teachers/wan/tiny.py), built on first use."""
    made = {}

    def get(shape: str):
        if shape not in made:
            made[shape] = tmp_path_factory.mktemp(shape)
            build_i2v_pipeline(shape, TinyWanSpec(dit_patch=(1, 2, 2), dit_layers=2), vocabulary()).save_pretrained(
                made[shape])
        return made[shape]
    return get


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8))


def _sample(folder, tmp_path, *flags) -> list[str]:
    return ["sample", "--teacher", str(folder), "--prompt", PROMPT, "--steps", "1", "--frames", str(FRAMES),
            "--height", str(HEIGHT), "--width", str(WIDTH), "--formats", "png", "--no-cond-cache", "--no-progress",
            "--out", str(tmp_path / "clip.png"), *flags]


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if ": warning: " not in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_distill_sample_takes_an_image_for_an_image_to_video_teacher(folders, tmp_path):
    """Written clips, and another first frame gives another clip (the image reaches the DiT)."""
    grids = []
    for seed in (0, 1):
        image, out = tmp_path / f"first-{seed}.png", tmp_path / f"run-{seed}"
        _image(seed).save(image)
        out.mkdir()
        assert main(_sample(folders("wan2.2-i2v-a14b"), out, "--image", str(image), "--last-image", str(image))) == 0
        grids.append(np.asarray(Image.open(out / "clip.png")).astype(int))
    assert grids[0].shape[0] >= HEIGHT and grids[0].shape[1] >= WIDTH
    assert np.abs(grids[0] - grids[1]).max() > 0


@pytest.mark.parametrize("shape, flags, message", [
    ("text", ["--image", "{image}"], "--image: teacher '{folder}' ({folder}/model_index.json names 'WanPipeline') "
                                     "is a text-to-video checkpoint; it takes no image"),
    ("wan2.2-i2v-a14b", [], "is an image-to-video checkpoint: give the first frame with --image PATH"),
    ("wan2.2-i2v-a14b", ["--image", "{missing}"], "--image '{missing}' does not exist"),
    ("wan2.2-ti2v", ["--image", "{image}", "--last-image", "{image}"], "--last-image: teacher '{folder}' "),
    ("wan2.2-ti2v", ["--last-image", "{image}"], "--last-image needs --image"),
])
def test_distill_sample_refuses_images_by_flag_and_file(folders, untrained_wan, tmp_path, capsys, shape, flags,
                                                        message):
    folder = untrained_wan if shape == "text" else folders(shape)
    image, missing = tmp_path / "first.png", tmp_path / "nope.png"
    _image(0).save(image)
    fill = lambda text: text.format(image=image, missing=missing, folder=folder)
    args = _sample(folder, tmp_path, *map(fill, flags))
    assert main(args) == 2
    line = _error(capsys)
    assert line.startswith("distill sample: error: ") and fill(message) in line, line
    assert not (tmp_path / "clip.png").exists()
