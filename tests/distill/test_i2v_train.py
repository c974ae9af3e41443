"""Image-to-video distillation on one rank: a tiny Wan 2.2 TI2V teacher (built offline, random weights) distilled by
consistency and by DMD2 for two steps from toy-world clips, each conditioned on its clip's first frame. The losses
are finite, the images were encoded and cached, the student's clip keeps the image's latent as its first frame and
depends on the image; APT and rCM refuse an image-conditioned run with one line."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from distill.core.config import REPO_ROOT, ConfigError
from distill.teachers.config import load_teacher, load_teacher_config
from distill.teachers.samplers import DEFAULT_GRID, sample
from distill.teachers.wan.tiny import TinyWanSpec, build_i2v_pipeline
from distill.toyworld import vocabulary
from distill.train_config import load_train_config

PROMPT = "a red disc moving left slowly on a black background"
RECIPES = {
    "consistency": "{name: consistency, skip: 5, sampler: {steps: 2}}",
    "dmd2": "{name: dmd2, critic_steps: 1, sampler: {steps: 2}}",
}


def teacher_yaml(folder, path):
    path.write_text(textwrap.dedent(f"""\
        name: tiny-ti2v
        source: {folder}
        sampler: {{name: unipc, steps: 50, guidance: 5.0, shift: 3.0}}
        video: {{frames: 5, height: 32, width: 32, fps: 8}}
        max_sequence_length: 16
        """))
    return path


def run_yaml(root, teacher, name, recipe):
    lines = [f"teacher: {teacher}", f"recipe: {recipe}", "data: {size: 4, batch_size: 2}", "deepspeed: zero2",
             "optim: {lr: 0.001}", "train: {steps: 2, log_every: 1, checkpoint_every: 2}", "wandb: {mode: disabled}",
             f"out: {root / name}"]
    path = root / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The teacher config file of a tiny TI2V pipeline folder."""
    root = tmp_path_factory.mktemp("ti2v-teacher")
    build_i2v_pipeline("wan2.2-ti2v", TinyWanSpec(dit_layers=1), vocabulary()).save_pretrained(root / "teacher")
    return teacher_yaml(root / "teacher", root / "teacher.yaml")


@pytest.fixture(scope="module")
def runs(teacher, tmp_path_factory):
    """A 2-step consistency and a 2-step DMD2 run on the tiny TI2V teacher (one subprocess, one rank)."""
    root = tmp_path_factory.mktemp("ti2v-runs")
    configs = [str(run_yaml(root, teacher, name, recipe)) for name, recipe in RECIPES.items()]
    code = ("from distill.cli import main; import sys; "
            f"sys.exit(any(main(['train', c, '--no-progress']) for c in {configs!r}))")
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                               "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return root, teacher


def _latest(run):
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_an_image_conditioned_run_trains_with_finite_losses(runs, recipe):
    root, _ = runs
    run = root / recipe
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in records)
    # every example's first frame was encoded through the teacher and cached
    assert len(list((run / "cache" / "images").glob("*.safetensors"))) == 4
    assert (_latest(run) / "student").is_dir()
    assert len(list((run / "validation").rglob("*.mp4"))) == 4  # the first examples, with their images


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_the_student_keeps_the_image_as_frame_0_and_reads_it(runs, recipe):
    root, teacher_file = runs
    tcfg = load_teacher_config(str(teacher_file))
    teacher = load_teacher(tcfg, "cpu")
    student = teacher.family.dit_from_pretrained(_latest(root / recipe) / "student")
    size = (5, 32, 32)
    text = teacher.encode([PROMPT], None)
    clips, latents = [], []
    for value in (30, 220):
        image = Image.fromarray(np.full((32, 32, 3), value, np.uint8))
        lat, _ = teacher.encode_images([image], size)
        cond = text.with_image(lat, None)
        x = teacher.noise(1, *size, seed=0)
        g = torch.Generator().manual_seed(1)
        out = sample("consistency", lambda y, t: teacher.forward(student, y, t, text.prompt_embeds, cond), x, 2,
                     tcfg.sampler.shift, noise=lambda like: torch.randn(like.shape, generator=g).to(like),
                     grid=DEFAULT_GRID)  # the recipes' default student sampler
        clips.append(teacher.keep_image_frames(out, cond))
        latents.append(lat)
    for clip, lat in zip(clips, latents):
        torch.testing.assert_close(clip[:, :, :1], lat, atol=1e-6, rtol=0)
    # another image changes the frames the student generates (the image reaches its DiT)
    assert (clips[0][:, :, 1:] - clips[1][:, :, 1:]).abs().max() > 1e-3


@pytest.mark.parametrize("recipe", ["apt", "rcm"])
def test_apt_and_rcm_refuse_an_image_conditioned_run(teacher, recipe, tmp_path):
    path = run_yaml(tmp_path, teacher, recipe, f"{{name: {recipe}}}")
    from distill.preflight import preflight

    with pytest.raises(ConfigError, match=f"recipe: '{recipe}' does not train on image-conditioned examples"):
        preflight(load_train_config(path))


def test_the_export_of_an_i2v_student_samples_as_the_project_in_the_stock_pipeline(runs, tmp_path):
    """`distill export` of the TI2V student: the stock image-to-video pipeline gives the student's clip for the same
    image and seed (fp32 CPU, max abs difference <= 1e-4)."""
    from diffusers import WanImageToVideoPipeline

    from distill.export import export
    from distill.teachers.wan import WanTeacher

    root, _ = runs
    out = export(root / "consistency", tmp_path / "export")
    assert json.loads((out / "model_index.json").read_text()).get("expand_timesteps") is True
    grid = json.loads((out / "distill_teacher.json").read_text())["sampler"]["grid"]
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    teacher = WanTeacher.from_pretrained(str(out), device="cpu", max_sequence_length=16)
    seed = 7
    ours = teacher.sample([PROMPT], steps=2, guidance=1.0, shift=3.0, sampler="consistency", seed=seed, frames=5,
                          height=32, width=32, grid=grid, images=image)
    pipe = WanImageToVideoPipeline.from_pretrained(out, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    torch.randn(teacher.latent_shape(5, 32, 32), generator=g)  # the initial noise: the scheduler's follows it
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(g.get_state())
        expected = pipe(image=image, prompt=[PROMPT], num_inference_steps=2, guidance_scale=1.0, num_frames=5,
                        height=32, width=32, max_sequence_length=16, output_type="latent",
                        generator=torch.Generator().manual_seed(seed)).frames.float()
    assert expected.abs().max() > 0.1
    diff = (ours - expected).abs().max().item()
    print(f"TI2V student export vs stock pipeline: max abs difference {diff:.1e}")
    assert diff <= 1e-4
