"""`distill export`: a checkpoint of `distill train` into a diffusers Wan folder that stock `WanPipeline` samples
exactly as the project's own few-step consistency sampler does (fp32 CPU, max abs difference <= 1e-4)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from safetensors import safe_open
from safetensors.torch import load_file

from distill import checkpoint
from distill.cli import main
from distill.core.config import REPO_ROOT, ConfigError
from distill.teachers.config import load_teacher_config
from distill.export import export
from distill.teachers.samplers import consistency_timesteps, sample_consistency, student_levels
from distill.teachers.resolve import checkpoint_defaults, resolve
from distill.teachers.wan import WanTeacher

PROMPTS = ["a red disc moving left slowly on a black background",
           "a yellow pillar moving up quickly on a gray background"]
FRAMES, SIZE, MAX_LEN = 17, 64, 16
TOL = 1e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A full and a LoRA `distill train` run of one step each (one subprocess: the engine sets process-wide state).
    The LoRA run learns fast and without EMA, so that its adapter moves the weights visibly."""
    root = tmp_path_factory.mktemp("export-runs")
    config = root / "run.yaml"
    config.write_text(textwrap.dedent(f"""\
        teacher: tiny-wan
        recipe: {{name: consistency, skip: 5, sampler: {{steps: 4}}}}
        data: {{size: 4, batch_size: 2}}
        deepspeed: zero2
        train: {{steps: 1, log_every: 1, checkpoint_every: 1}}
        wandb: {{mode: disabled}}
        out: {root / 'full'}
        """))
    lora = ["student.lora={rank: 4}", "optim.lr=0.01", "student.ema_decay=null", "student.export=online",
            "recipe.target=online", f"out={root / 'lora'}"]
    code = (f"from distill.cli import main; import sys; "
            f"sys.exit(main(['train', {str(config)!r}, '--no-progress']) or "
            f"main(['train', {str(config)!r}, *{lora!r}, '--no-progress']))")
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "full", root / "lora"


@pytest.fixture(scope="module")
def full_export(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "full"
    assert main(["export", str(runs[0]), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def one_step_export(runs, tmp_path_factory):
    """The same student exported for one step: a scheduler off the legacy grid is exact for its step count only."""
    return export(runs[0], tmp_path_factory.mktemp("exports") / "one-step", steps=1)


@pytest.fixture(scope="module")
def lora_export(runs, tmp_path_factory):
    return export(runs[1], tmp_path_factory.mktemp("exports") / "lora")


def _pipe(folder):
    pipe = WanPipeline.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stock(pipe, prompts, seeds, steps):
    return pipe(prompt=prompts, num_inference_steps=steps, guidance_scale=1.0, num_frames=FRAMES, height=SIZE,
                width=SIZE, max_sequence_length=MAX_LEN, output_type="latent",
                generator=[torch.Generator().manual_seed(s) for s in seeds]).frames.float()


# --- 1. a full run: stock WanPipeline samples as the project's consistency sampler ------------------------------
def test_full_export_is_a_few_step_wan_folder(full_export):
    pipe = _pipe(full_export)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.stochastic_sampling
    # the run's default grid, every step a real one: the stock scheduler lands on it for the student's 4 steps
    levels = student_levels(4, 3.0, "shifted-uniform")
    assert levels.tolist() == [1.0, 0.9, 0.75, 0.5]
    pipe.scheduler.set_timesteps(4)
    assert (pipe.scheduler.sigmas[:-1].double() - levels).abs().max() < 1e-6 and pipe.scheduler.sigmas[-1] == 0
    assert json.loads((full_export / "model_index.json").read_text())["scheduler"][1] == "FlowMatchEulerDiscreteScheduler"
    # `distill sample --teacher OUT` and `distill eval --model NAME=OUT@4` pick the consistency sampler.
    cfg = load_teacher_config(str(full_export))
    assert (cfg.sampler.name, cfg.sampler.steps, cfg.sampler.guidance, cfg.sampler.shift) == ("consistency", 4, 1.0, 3.0)
    assert cfg.sampler.grid == "shifted-uniform"
    assert (cfg.video.frames, cfg.video.height, cfg.max_sequence_length) == (FRAMES, SIZE, MAX_LEN)
    assert checkpoint_defaults(str(full_export)) == json.loads((full_export / "distill_teacher.json").read_text())
    readme = (full_export / "README.md").read_text()
    assert "WanPipeline.from_pretrained" in readme and "num_inference_steps=4" in readme
    assert not list(full_export.parent.glob(".tmp-*"))


def test_one_step_stock_pipeline_equals_wan_teacher_sample(one_step_export):
    pipe = _pipe(one_step_export)
    teacher = WanTeacher.from_pretrained(str(one_step_export), device="cpu", max_sequence_length=MAX_LEN)
    seeds = [3, 4]
    # the pipeline's initial latents are WanTeacher's initial noise for the same seeds
    initial = pipe.prepare_latents(2, pipe.transformer.config.in_channels, SIZE, SIZE, FRAMES, torch.float32,
                                   torch.device("cpu"), [torch.Generator().manual_seed(s) for s in seeds])
    assert torch.equal(initial, teacher.noise(2, FRAMES, SIZE, SIZE, seeds))
    # one step re-noises to sigma 0: no fresh noise enters, so the two must agree exactly
    expected = _stock(pipe, PROMPTS, seeds, steps=1)
    ours = teacher.sample(PROMPTS, steps=1, guidance=1.0, shift=3.0, sampler="consistency", seed=seeds,
                          frames=FRAMES, height=SIZE, width=SIZE)
    assert ours.shape == expected.shape == initial.shape
    assert (ours - expected).abs().max().item() <= TOL
    assert expected.abs().max() > 0.1 and (expected - initial).abs().max() > 0.1


def test_four_step_stock_pipeline_equals_wan_teacher_sample(full_export, one_step_export):
    """WanTeacher.sample draws the re-noising noise from the clip's generator after its initial noise; the stock
    scheduler draws it from the global RNG. Put the global RNG where the clip's generator is after the initial
    noise, and the two samplers see the same noise."""
    pipe = _pipe(full_export)
    teacher = WanTeacher.from_pretrained(str(full_export), device="cpu", max_sequence_length=MAX_LEN)
    seed = 7
    ours = teacher.sample(PROMPTS[:1], steps=4, guidance=1.0, shift=3.0, sampler="consistency", seed=seed,
                          frames=FRAMES, height=SIZE, width=SIZE, grid="shifted-uniform")
    g = torch.Generator().manual_seed(seed)
    torch.randn(teacher.latent_shape(FRAMES, SIZE, SIZE), generator=g)  # the initial noise
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(g.get_state())
        expected = _stock(pipe, PROMPTS[:1], [seed], steps=4)
    assert (ours - expected).abs().max().item() <= TOL
    one_step = _stock(_pipe(one_step_export), PROMPTS[:1], [seed], steps=1)
    assert (expected - one_step).abs().max() > 1e-2  # four steps really are four steps


def test_four_step_stock_pipeline_equals_sample_consistency_with_global_noise(full_export):
    pipe = _pipe(full_export)
    teacher = WanTeacher.from_pretrained(str(full_export), device="cpu", max_sequence_length=MAX_LEN)
    seeds = [11, 12]
    cond = teacher.encode(PROMPTS, negative=None)

    def model(x, t):
        return teacher.velocity(x, t, cond, guidance=1.0)
    x = teacher.noise(2, FRAMES, SIZE, SIZE, seeds)
    results = []
    for k in (0, 1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(k)
            ours = sample_consistency(model, x, student_levels(4, 3.0, "shifted-uniform"),
                                      noise=lambda like: torch.randn(like.shape))
            torch.manual_seed(k)
            expected = _stock(pipe, PROMPTS, seeds, steps=4)
        assert (ours - expected).abs().max().item() <= TOL
        results.append(expected)
    assert (results[0] - results[1]).abs().max() > 1e-2  # the re-noising noise matters: the comparison is not vacuous


def _old_checkpoint(runs, tmp_path):
    """The full run as a version before the grid was a choice wrote it: no "grid" in its meta or config."""
    old = tmp_path / "old-run"
    shutil.copytree(runs[0], old)
    folder = old / "checkpoints" / (old / "checkpoints" / "latest").read_text().strip()
    meta = json.loads((folder / "meta.json").read_text())
    del meta["sampler"]["grid"]
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "manifest.json").unlink()  # checkpoints of that version had no manifest either
    return old


def _rewrite_meta(folder, **sampler):
    """Edit a checkpoint's sampler meta as if it had been written so (its manifest rewritten to match)."""
    meta = json.loads((folder / "meta.json").read_text())
    meta["sampler"].update(sampler)
    (folder / "meta.json").write_text(json.dumps(meta))
    checkpoint.write_manifest(folder, checkpoint.hash_files(folder))


# make test: the old checkpoint's legacy grid (the default grid is the four-step tests' above); the other rules are
# covered without a pipeline by tests/students/test_consistency.py, and here when slow tests run (~30 s each)
@pytest.mark.parametrize("grid", ["euler", pytest.param("uniform", marks=pytest.mark.slow),
                                  pytest.param((1.0, 0.8, 0.3), marks=pytest.mark.slow)])
def test_stock_pipeline_samples_each_grid_as_the_consistency_sampler(runs, tmp_path, grid):
    """Old checkpoints (no "grid" in their meta) export on the legacy grid and sample as before; a checkpoint on
    another rule, or on explicit levels the scheduler can reach, exports a scheduler that lands on them."""
    if grid == "euler":
        run, steps, levels = _old_checkpoint(runs, tmp_path), 4, consistency_timesteps(4, 3.0)
    else:
        run = tmp_path / "run"
        shutil.copytree(runs[0], run)
        folder = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
        steps = 4 if isinstance(grid, str) else len(grid)
        _rewrite_meta(folder, grid=grid if isinstance(grid, str) else list(grid), steps=steps)
        levels = student_levels(steps, 3.0, grid)
    out = export(run, tmp_path / "export")
    written = json.loads((out / "distill_teacher.json").read_text())["sampler"]["grid"]
    assert written == (grid if isinstance(grid, str) else list(grid))
    pipe = _pipe(out)
    if grid == "euler":  # byte for byte the scheduler exports wrote before
        assert pipe.scheduler.config.shift == 3.0 and pipe.scheduler.config.shift_terminal is None
    teacher = WanTeacher.from_pretrained(str(out), device="cpu", max_sequence_length=MAX_LEN)
    cond = teacher.encode(PROMPTS[:1], negative=None)
    x = teacher.noise(1, FRAMES, SIZE, SIZE, [5])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ours = sample_consistency(lambda y, t: teacher.velocity(y, t, cond, guidance=1.0), x, levels,
                                  noise=lambda like: torch.randn(like.shape))
        torch.manual_seed(0)
        expected = _stock(pipe, PROMPTS[:1], [5], steps=steps)
    assert (ours - expected).abs().max().item() <= TOL
    # the same export through the project's own tools (distill sample / eval read distill_teacher.json)
    mine = teacher.sample(PROMPTS[:1], steps=steps, guidance=1.0, shift=3.0, sampler="consistency", seed=5,
                          frames=FRAMES, height=SIZE, width=SIZE, grid=load_teacher_config(str(out)).sampler.grid)
    g = torch.Generator().manual_seed(5)
    torch.randn(teacher.latent_shape(FRAMES, SIZE, SIZE), generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(g.get_state())
        assert (mine - _stock(pipe, PROMPTS[:1], [5], steps=steps)).abs().max().item() <= TOL


def test_explicit_levels_the_stock_scheduler_cannot_reach_are_refused(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    folder = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    _rewrite_meta(folder, grid=[1.0, 0.9, 0.5, 0.4])
    with pytest.raises(ConfigError, match=r"no FlowMatchEulerDiscreteScheduler config reproduces the grid"):
        export(run, tmp_path / "export")
    with pytest.raises(ConfigError, match="--steps 2"):
        export(run, tmp_path / "export", steps=2)
    assert not (tmp_path / "export").exists()


# --- 2. the exported transformer is the checkpoint's student ---------------------------------------------------------
def test_exported_transformer_weights_are_the_checkpoints_student(runs, full_export):
    ckpt = runs[0] / "checkpoints" / (runs[0] / "checkpoints" / "latest").read_text().strip()
    student = load_file(ckpt / "student" / "diffusion_pytorch_model.safetensors")
    exported = load_file(full_export / "transformer" / "diffusion_pytorch_model.safetensors")
    assert sorted(student) == sorted(exported)
    assert all(torch.equal(student[k], exported[k]) for k in student)
    teacher = load_file(resolve("builtin:tiny-wan") / "transformer" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(teacher[k], exported[k].to(teacher[k].dtype)) for k in teacher)  # trained, not copied
    assert json.loads((full_export / "distill_export.json").read_text())["step"] == 1


# --- 3. a LoRA run: fused transformer, and the adapter alone ---------------------------------------------------------
def _forward(transformer, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = transformer.config
    x = torch.randn(1, c.in_channels, 5, 8, 8, generator=g)
    text = torch.randn(1, MAX_LEN, c.text_dim, generator=g)
    with torch.no_grad():
        return transformer(hidden_states=x, timestep=torch.tensor([700.0]), encoder_hidden_states=text,
                           return_dict=False)[0]


def test_lora_export_fuses_the_adapter_and_ships_it_alone(runs, lora_export):
    teacher_folder = resolve("builtin:tiny-wan")
    pipe = WanPipeline.from_pretrained(teacher_folder, dtype=torch.float32)
    base_out = _forward(pipe.transformer)
    pipe.load_lora_weights(lora_export / "lora")
    fused = WanTransformer3DModel.from_pretrained(lora_export / "transformer", torch_dtype=torch.float32)
    adapted_out, fused_out = _forward(pipe.transformer), _forward(fused)
    assert (adapted_out - fused_out).abs().max().item() <= TOL
    assert (fused_out - base_out).abs().max().item() > 100 * TOL  # the adapter does something
    assert not any("lora" in k for k in fused.state_dict())

    with safe_open(lora_export / "lora" / "pytorch_lora_weights.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    # fused = base + (alpha / r)·B·A, checked on one layer by hand
    lora = load_file(lora_export / "lora" / "pytorch_lora_weights.safetensors")
    base = load_file(teacher_folder / "transformer" / "diffusion_pytorch_model.safetensors")
    layer = "blocks.0.attn1.to_q"
    delta = 16.0 / 4 * lora[f"transformer.{layer}.lora_B.weight"] @ lora[f"transformer.{layer}.lora_A.weight"]
    assert delta.abs().max() > 1e-3
    assert torch.allclose(fused.state_dict()[f"{layer}.weight"], base[f"{layer}.weight"].float() + delta, atol=1e-6)
    ckpt = runs[1] / "checkpoints" / (runs[1] / "checkpoints" / "latest").read_text().strip()
    assert load_file(ckpt / "lora" / "pytorch_lora_weights.safetensors").keys() == lora.keys()
    # the same adapter in the original Wan key names, which diffusers converts back (tests/distill/test_lora_format.py)
    wan = WanPipeline.lora_state_dict(str(lora_export / "lora"), weight_name="wan_lora.safetensors")
    assert wan.keys() == lora.keys()
    assert json.loads((lora_export / "distill_export.json").read_text())["student"] == "lora"
    assert "load_lora_weights" in (lora_export / "README.md").read_text()


# --- 4. errors --------------------------------------------------------------------------------------------------------
def _decoder_for_tiny(folder, extra_channels: int = 0):
    from distill.teachers import registry
    from distill.teachers.decoders import VideoDecoder

    teacher = resolve("builtin:tiny-wan")
    family = registry.family_of(teacher)
    f = family.video_factors(teacher)
    VideoDecoder(latent_channels=family.latent_channels(family.dit_config(teacher)) + extra_channels,
                 temporal=f.temporal, spatial=f.spatial, width=8, depth=0, min_width=4).save_pretrained(folder)
    return folder


def test_a_decoder_ships_beside_the_student_and_stock_loading_ignores_it(runs, tmp_path, capsys):
    from distill.core.hashing import checkpoint_hash
    from distill.teachers.decoders import check_decoder, decoder_folder

    dec = _decoder_for_tiny(tmp_path / "dec")
    out = tmp_path / "with-decoder"
    assert main(["export", str(runs[0]), "--out", str(out), "--decoder", str(dec)]) == 0
    assert decoder_folder(out) == out / "decoder" and checkpoint_hash(out / "decoder") == checkpoint_hash(dec)
    assert check_decoder(out, 8, 4, 4) == out / "decoder"  # `distill sample --decoder OUT` finds it
    made = json.loads((out / "distill_export.json").read_text())
    assert made["decoder"] == {"source": str(dec.resolve()), "hash": checkpoint_hash(dec)}
    assert "decoder" not in json.loads((out / "model_index.json").read_text())
    assert isinstance(_pipe(out), WanPipeline)
    assert 'VideoDecoder.from_pretrained("with-decoder/decoder")' in (out / "README.md").read_text()

    wrong = _decoder_for_tiny(tmp_path / "wrong", extra_channels=1)
    assert main(["export", str(runs[0]), "--out", str(tmp_path / "no"), "--decoder", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert "--decoder" in err and "latent_channels is 9, the teacher's 8" in err and not (tmp_path / "no").exists()


def test_no_checkpoint_is_an_error_naming_the_path(tmp_path, capsys):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no checkpoint under") as err:
        export(empty, tmp_path / "out")
    assert str(empty) in str(err.value)
    assert main(["export", str(empty), "--out", str(tmp_path / "out")]) == 2
    assert str(empty) in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-run"]


def test_incomplete_checkpoints_and_existing_out_are_refused(runs, full_export, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs[0], run, ignore=shutil.ignore_patterns("deepspeed", "cache"))
    latest = (run / "checkpoints" / "latest").read_text().strip()
    with pytest.raises(ConfigError, match="step-000009") as err:
        export(run, tmp_path / "out", checkpoint="step-000009")
    assert str(run / "checkpoints" / "step-000009") in str(err.value) and latest in str(err.value)
    shutil.rmtree(run / "checkpoints" / latest / "student")
    with pytest.raises(ConfigError, match="incomplete") as err:
        export(run, tmp_path / "out")
    assert str(run / "checkpoints" / latest / "student") in str(err.value)
    (run / "checkpoints" / "latest").write_text("step-000123\n")
    with pytest.raises(ConfigError, match="step-000123"):
        export(run, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ConfigError, match="already exists"):
        export(runs[0], full_export)


def test_overwrite_never_deletes_a_run_or_a_folder_that_is_not_an_export(runs, full_export, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs[0], run, ignore=shutil.ignore_patterns("deepspeed", "cache"))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for out in (run, run / "checkpoints", run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()):
        with pytest.raises(ConfigError, match="holds the checkpoint being exported"):
            export(run, out, overwrite=True)
    other = tmp_path / "other-run"
    shutil.copytree(run, other)
    with pytest.raises(ConfigError, match="is a training run or checkpoint .*never replaces one"):
        export(run, other, overwrite=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="replaces an earlier export only"):
        export(run, mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing of the run was touched
    again = tmp_path / "again"
    shutil.copytree(full_export, again)
    (again / "stale.txt").write_text("from an earlier export")
    assert export(run, again, overwrite=True) == again.absolute() and not (again / "stale.txt").exists()


def test_a_student_of_other_teacher_weights_is_refused_by_export_and_eval(runs, full_export, tmp_path):
    """The teacher-hash guard: the export records the teacher's weights hash; an export of a checkpoint whose
    teacher has since changed (a retrained built-in teacher) and an eval of such a student are refused by name."""
    from distill.checkpoint import hash_files, write_manifest
    from distill.commands.eval import check_student_teacher
    from distill.core.hashing import checkpoint_hash
    from distill.teachers.resolve import resolve

    made = json.loads((full_export / "distill_export.json").read_text())
    teacher = resolve(made["teacher"])
    assert made["teacher_hash"] == checkpoint_hash(teacher)
    check_student_teacher("cd4", full_export, made["teacher"], teacher)  # its own teacher: passes

    run = tmp_path / "run"
    shutil.copytree(runs[0], run, ignore=shutil.ignore_patterns("deepspeed", "cache"))
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "teacher_hash": "0ld7eac4e5"}))
    write_manifest(ckpt, hash_files(ckpt))
    with pytest.raises(ConfigError, match="0ld7eac4e5") as err:
        export(run, tmp_path / "out")
    assert str(ckpt) in str(err.value) and not (tmp_path / "out").exists()

    old = tmp_path / "old-student"
    shutil.copytree(full_export, old)
    (old / "distill_export.json").write_text(json.dumps({**made, "teacher_hash": "0ld7eac4e5"}))
    with pytest.raises(ConfigError, match="0ld7eac4e5") as err:
        check_student_teacher("cd4", old, made["teacher"], teacher)
    assert "--model cd4" in str(err.value) and str(old) in str(err.value)
    check_student_teacher("cd4", old, "builtin:another-teacher", teacher)  # a comparison the user chose


def test_export_help():
    out = subprocess.run([sys.executable, "-m", "distill.cli", "export", "--help"], check=False,
                         capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0 and "--out" in out.stdout and "--checkpoint" in out.stdout
