"""Training data of an image-conditioned run: each example's conditioning image (an image column of a prompt source,
or a real clip's first frame) encoded once through the teacher and cached per image; bad images and data that
cannot condition the teacher refused by file, row and column before any work."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from distill.core.config import ConfigError
from distill.data import TrainData, check_image_data, image_source, load_images
from distill.teachers.base import Cond
from distill.teachers.config import TeacherConfig, load_teacher
from distill.teachers.wan.tiny import TinyWanSpec, build_i2v_pipeline
from distill.toyworld import vocabulary
from distill.train_config import DataConfig

PROMPTS = ["a red disc moving left slowly on a black background",
           "a yellow pillar moving up quickly on a gray background"]


@pytest.fixture(scope="module")
def ti2v(tmp_path_factory):
    """A tiny Wan 2.2 TI2V teacher (built offline, random weights), loaded, and its config."""
    folder = tmp_path_factory.mktemp("ti2v")
    build_i2v_pipeline("wan2.2-ti2v", TinyWanSpec(dit_layers=1), vocabulary()).save_pretrained(folder)
    cfg = TeacherConfig(name="tiny-ti2v", source=str(folder), dtype="float32", device="cpu",
                        sampler={"name": "euler", "steps": 1, "guidance": 1.0, "shift": 3.0},
                        video={"frames": 5, "height": 32, "width": 32, "fps": 8}, max_sequence_length=16)
    return load_teacher(cfg), cfg


def _image(path, seed: int):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)


def _source(tmp_path, images: list[str]):
    for i, name in enumerate(images):
        if not (tmp_path / name).exists():
            _image(tmp_path / name, i)
    source = tmp_path / "data.jsonl"
    source.write_text("".join(json.dumps({"prompt": PROMPTS[i % 2], "image": name}) + "\n"
                              for i, name in enumerate(images)))
    return source


def _data(ti2v, source, cache, **kw):
    teacher, cfg = ti2v
    data_cfg = DataConfig(source=str(source), latents="teacher", image_column="image", batch_size=1, **kw)
    return TrainData(data_cfg, teacher, cfg, "tiny-ti2v", cache, progress=False)


def test_a_missing_image_file_is_refused_by_row_and_column(tmp_path):
    source = _source(tmp_path, ["a.png", "b.png"])
    (tmp_path / "b.png").unlink()
    with pytest.raises(ConfigError, match=r"row 1 column 'image': image '.*b\.png' does not exist"):
        load_images(str(source), "image")


def test_an_unreadable_image_and_a_missing_column_are_refused_by_name(tmp_path):
    source = _source(tmp_path, ["a.png", "b.png"])
    (tmp_path / "a.png").write_text("not an image")
    with pytest.raises(ConfigError, match=r"row 0 column 'image': image '.*a\.png' is not a readable image"):
        load_images(str(source), "image")
    with pytest.raises(ConfigError, match=r"no column 'picture' \(data.image_column\)"):
        load_images(str(source), "picture")


def test_data_that_cannot_condition_the_teacher_is_refused_before_any_work(tmp_path):
    prompts = DataConfig(source=str(tmp_path / "p.jsonl"), latents="teacher")
    with pytest.raises(ConfigError, match="image-to-video checkpoint and data.source .* gives no image"):
        check_image_data(prompts, "required", "i2v")
    with_column = prompts.model_copy(update={"image_column": "image"})
    with pytest.raises(ConfigError, match="data.image_column: 'image', but teacher 't2v' is a text-to-video"):
        check_image_data(with_column, "none", "t2v")
    with pytest.raises(ConfigError, match="train.validation_prompts"):
        check_image_data(with_column, "required", "i2v", ["a red disc"])
    with pytest.raises(ConfigError, match="data.image_column: 'image', but data.source 'toyworld' has no columns"):
        check_image_data(DataConfig(latents="teacher", image_column="image"), "optional", "ti2v")
    # real clips condition an image-taking teacher by their first frames; a text-only one gets none
    assert image_source(DataConfig(), "required") == "first_frame"
    assert image_source(DataConfig(), "optional") == "first_frame"
    assert image_source(DataConfig(), "none") is None
    assert image_source(prompts, "optional") is None
    check_image_data(prompts, "optional", "ti2v")  # TI2V also distils from text alone


def test_images_are_encoded_once_and_a_changed_image_is_encoded_anew(ti2v, tmp_path):
    teacher, _ = ti2v
    source = _source(tmp_path, ["a.png", "b.png", "a.png"])  # rows 0 and 2 share an image
    cache = tmp_path / "cache"
    first = _data(ti2v, source, cache)
    assert first.images_encoded == 2
    assert first.image_latents.shape == (3, 8, 1, 8, 8)  # TI2V: the clean first-frame latent [z, 1, h, w]
    assert torch.equal(first.image_latents[0], first.image_latents[2])
    # the entry is what the teacher's own encoding of that image gives
    want, _ = teacher.encode_images([tmp_path / "b.png"], (5, 32, 32))
    torch.testing.assert_close(first.image_latents[1], want[0], atol=1e-6, rtol=0)
    # the x0 the teacher sampled for each example keeps its image's latent as frame 0
    torch.testing.assert_close(first.x0[:, :, :1], first.image_latents, atol=1e-6, rtol=0)

    again = _data(ti2v, source, cache)
    assert again.images_encoded == 0
    assert torch.equal(again.image_latents, first.image_latents)

    _image(tmp_path / "b.png", seed=7)  # same file name, other pixels
    changed = _data(ti2v, source, cache)
    assert changed.images_encoded == 1
    assert torch.equal(changed.image_latents[0], first.image_latents[0])
    assert not torch.allclose(changed.image_latents[1], first.image_latents[1])
    assert not torch.allclose(changed.x0[1], first.x0[1])  # the x0 sampled from the old image is not reused

    batch = changed.batch(0, 2)
    assert torch.equal(batch.image_latents, changed.image_latents[batch.index])
    assert batch.image_embeds is None  # TI2V reads no image tokens


def test_a_changed_image_encoder_is_never_read_stale(ti2v, tmp_path, monkeypatch):
    source = _source(tmp_path, ["a.png"])
    cache = tmp_path / "cache"
    assert _data(ti2v, source, cache).images_encoded == 1
    family = type(ti2v[0].family)
    monkeypatch.setattr(family, "image_encoder_hash", lambda self, folder: "another-vae")
    assert _data(ti2v, source, cache).images_encoded == 1


def test_the_handles_give_every_network_the_batch_image(ti2v):
    """The engine's handles (distill/build.py) pass the image to the DiT (another image, another velocity), guide
    over text with it in both halves, and report the frame TI2V keeps clean."""
    from distill.build import DiTHandle

    teacher, _ = ti2v
    size = (5, 32, 32)
    images = [Image.fromarray(np.full((32, 32, 3), v, np.uint8)) for v in (20, 230)]
    latents = [teacher.encode_images([im], size)[0] for im in images]
    text = teacher.encode(PROMPTS[:1], "")
    x = teacher.noise(1, *size, seed=0)
    t = torch.tensor([0.7], dtype=torch.float64)
    out = []
    for lat in latents:
        cond = text.with_image(lat, None)
        handle = DiTHandle(teacher, teacher.dit, text.prompt_embeds, text.negative_embeds, image=cond)
        v = handle(x, t)
        torch.testing.assert_close(v, teacher.forward(teacher.dit, x, t, text.prompt_embeds, cond))
        guided = DiTHandle(teacher, teacher.dit, text.prompt_embeds, text.negative_embeds, default_guidance=4.0,
                           is_teacher=True, image=cond)
        torch.testing.assert_close(guided(x, t), teacher.velocity(x, t, cond, 4.0))
        assert handle.image_frames(x).tolist() == [True, False]
        assert torch.equal(handle.keep_image_frames(x)[:, :, :1], lat)
        out.append(v)
    assert not torch.allclose(out[0], out[1])
    plain = DiTHandle(teacher, teacher.dit, text.prompt_embeds, text.negative_embeds)
    assert plain.image_frames(x) is None and torch.equal(plain.keep_image_frames(x), x)
    assert isinstance(text, Cond)
