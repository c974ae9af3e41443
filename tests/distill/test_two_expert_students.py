"""A two-expert teacher (Wan 2.2 A14B's layout) distilled: the student keeps both experts, each trained on its side of
the boundary, and its export is a stock two-expert pipeline folder that samples as the project does (fp32 CPU, max
abs difference <= 1e-4); LoRA runs write one adapter per expert. Bad layouts are refused before any weights load."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import WanPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from distill.core.config import REPO_ROOT, ConfigError
from distill.export import export
from distill.teachers.wan import WanTeacher
from distill.train_config import load_train_config
from distill.teachers.samplers import student_levels

PROMPTS = ["a red disc moving left slowly on a black background",
           "a yellow pillar moving up quickly on a gray background"]


def teacher_yaml(folder, path):
    path.write_text(textwrap.dedent(f"""\
        name: untrained-a14b
        source: {folder}
        sampler: {{name: unipc, steps: 50, guidance: 5.0, guidance_2: 4.0, shift: 3.0}}
        video: {{frames: 17, height: 64, width: 64, fps: 8}}
        max_sequence_length: 16
        """))
    return path


def run_yaml(root, teacher, name, **sections):
    """A run config of the two-expert teacher; `sections` replace the defaults (YAML flow text)."""
    cfg = {"teacher": teacher, "recipe": "{name: consistency, skip: 5, sampler: {steps: 4}}",
           "data": "{size: 4, batch_size: 2}", "deepspeed": "zero2",
           "train": "{steps: 1, log_every: 1, checkpoint_every: 1, validation_prompts: [a red disc]}",
           "wandb": "{mode: disabled}", "out": root / name, **sections}
    lines = [f"{k}: {v}" for k, v in cfg.items()]
    path = root / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(untrained_wan_a14b, tmp_path_factory):
    """A full and a LoRA consistency run of one step on the two-expert teacher (one subprocess)."""
    root = tmp_path_factory.mktemp("a14b-runs")
    teacher = teacher_yaml(untrained_wan_a14b, root / "teacher.yaml")
    full = run_yaml(root, teacher, "full")
    lora = run_yaml(root, teacher, "lora", student="{lora: {rank: 4}, ema_decay: null, export: online}",
                    optim="{lr: 0.01}", recipe="{name: consistency, skip: 5, target: online, sampler: {steps: 4}}")
    code = (f"from distill.cli import main; import sys; "
            f"sys.exit(main(['train', {str(full)!r}, '--no-progress']) or main(['train', {str(lora)!r}, "
            f"'--no-progress']))")
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return root, root / "full", root / "lora"


def _latest(run):
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def test_the_student_keeps_both_experts_and_each_moved(runs, untrained_wan_a14b):
    _, full, _ = runs
    student = _latest(full) / "student"
    assert sorted(p.name for p in student.iterdir()) == ["transformer", "transformer_2"]
    for expert in ("transformer", "transformer_2"):
        ours = load_file(student / expert / "diffusion_pytorch_model.safetensors")
        theirs = load_file(untrained_wan_a14b / expert / "diffusion_pytorch_model.safetensors")
        assert ours.keys() == theirs.keys()
    # the two experts stay two different networks (each copied from its own teacher expert)
    a = load_file(student / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(student / "transformer_2" / "diffusion_pytorch_model.safetensors")
    assert any((a[k].float() - b[k].float()).abs().max() > 1e-3 for k in a)


def test_export_is_a_stock_two_expert_pipeline_that_samples_as_the_project(runs, tmp_path):
    _, full, _ = runs
    out = export(full, tmp_path / "export")
    index = json.loads((out / "model_index.json").read_text())
    assert index["boundary_ratio"] == 0.875 and index["transformer_2"][1] == "WanTransformer3DModel"
    assert json.loads((out / "distill_export.json").read_text())["experts"] == ["transformer", "transformer_2"]
    pipe = WanPipeline.from_pretrained(out, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer_2 is not None
    teacher = WanTeacher.from_pretrained(str(out), device="cpu", max_sequence_length=16)
    seed = 7
    # the run's grid, [1, 0.9, 0.75, 0.5] at shift 3: two steps on each side of the boundary 0.875
    grid = json.loads((out / "distill_teacher.json").read_text())["sampler"]["grid"]
    assert grid == "shifted-uniform"
    levels = student_levels(4, 3.0, grid)
    assert (levels >= 0.875).tolist() == [True, True, False, False] and (levels - 0.875).abs().min() > 1e-3
    ours = teacher.sample(PROMPTS[:1], steps=4, guidance=1.0, shift=3.0, sampler="consistency", seed=seed,
                          frames=17, height=64, width=64, grid=grid)
    g = torch.Generator().manual_seed(seed)
    torch.randn(teacher.latent_shape(17, 64, 64), generator=g)  # the initial noise: the scheduler's follows it
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(g.get_state())
        expected = pipe(prompt=PROMPTS[:1], num_inference_steps=4, guidance_scale=1.0, num_frames=17, height=64,
                        width=64, max_sequence_length=16, output_type="latent",
                        generator=torch.Generator().manual_seed(seed)).frames.float()
    assert (ours - expected).abs().max().item() <= 1e-4
    # the low-noise expert matters: without it the stock pipeline gives another clip
    single = WanTeacher.from_pretrained(str(out), device="cpu", max_sequence_length=16)
    single.dit = single.transformer
    alone = single.sample(PROMPTS[:1], steps=4, guidance=1.0, shift=3.0, sampler="consistency", seed=seed,
                          frames=17, height=64, width=64, grid=grid)
    assert (alone - ours).abs().max() > 1e-3


def test_lora_export_writes_one_adapter_per_expert_in_both_key_formats(runs, tmp_path):
    _, _, lora = runs
    out = export(lora, tmp_path / "lora-export")
    files = sorted(p.relative_to(out / "lora").as_posix() for p in (out / "lora").rglob("*.safetensors"))
    assert files == ["pytorch_lora_weights.safetensors", "transformer_2/pytorch_lora_weights.safetensors",
                     "wan_lora_high_noise.safetensors", "wan_lora_low_noise.safetensors"]
    for path, expert in (("pytorch_lora_weights.safetensors", "transformer"),
                         ("transformer_2/pytorch_lora_weights.safetensors", "transformer_2")):
        with safe_open(str(out / "lora" / path), "pt") as f:
            assert f.metadata()["distill.expert"] == expert
    for native in ("wan_lora_high_noise.safetensors", "wan_lora_low_noise.safetensors"):
        keys = load_file(out / "lora" / native).keys()
        assert keys and all(k.startswith("diffusion_model.blocks.") for k in keys)
    # the stock pipeline takes both adapters onto the teacher, and gives the fused export's experts
    assert "load_into_transformer_2=True" in (out / "README.md").read_text()


def test_apt_and_a_one_expert_student_init_are_refused_before_any_weights_load(runs, untrained_wan, tmp_path):
    from distill.preflight import preflight

    root = runs[0]
    teacher = root / "teacher.yaml"
    apt = load_train_config(run_yaml(tmp_path, teacher, "apt", recipe="{name: apt}",
                                     data="{size: 4, batch_size: 2, latents: real}"))
    with pytest.raises(ConfigError, match="runs only the high-noise expert of a 2-expert teacher"):
        preflight(apt)
    one = load_train_config(run_yaml(tmp_path, teacher, "one", student=f"{{init: {untrained_wan}}}"))
    with pytest.raises(ConfigError, match="holds 1 expert DiT\\(s\\) but teacher .* has 2"):
        preflight(one)
    wrong = load_train_config(run_yaml(tmp_path, teacher, "wrong", student="{experts: [transformer_3]}"))
    with pytest.raises(ConfigError, match="student.experts: \\['transformer_3'\\] is not a non-empty subset"):
        preflight(wrong)
    gan = load_train_config(run_yaml(tmp_path, teacher, "gan", recipe="{name: dmd2, gan_weight: 0.1}",
                                     data="{size: 4, batch_size: 2, latents: real}"))
    with pytest.raises(ConfigError, match="GAN heads read one DiT's blocks"):
        preflight(gan)


@pytest.mark.slow  # ~2 min: three 2-rank runs
def test_two_ranks_under_zero3_train_both_experts_and_a_killed_run_resumes_exactly(untrained_wan_a14b, tmp_path):
    """Under ZeRO-3 every rank runs both experts in every forward (a one-sample slice times zero where none of its
    samples falls on an expert's side), so the partitioned weights are gathered in the same order everywhere."""
    import signal
    import time

    from tests.distill.test_train import BIN, REPO, env, kill_job, losses, torchrun, train_cmd

    teacher = teacher_yaml(untrained_wan_a14b, tmp_path / "teacher.yaml")
    train = "{steps: 6, log_every: 1, checkpoint_every: 3, validation_prompts: [a red disc], collective_timeout_s: 60}"
    sections = dict(deepspeed="zero3", data="{size: 8, batch_size: 2}", train=train)
    whole = run_yaml(tmp_path, teacher, "whole", **sections)
    proc = torchrun(*train_cmd(whole))
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = losses(tmp_path / "whole")
    student = _latest(tmp_path / "whole") / "student"
    for expert in ("transformer", "transformer_2"):  # each expert of the student moved off its teacher expert
        ours = load_file(student / expert / "diffusion_pytorch_model.safetensors")
        theirs = load_file(untrained_wan_a14b / expert / "diffusion_pytorch_model.safetensors")
        assert any(not torch.equal(ours[k], theirs[k]) for k in ours), expert

    broken = run_yaml(tmp_path, teacher, "broken", **sections)
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--standalone", *train_cmd(broken)]
    job = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    metrics = tmp_path / "broken" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and job.poll() is None:
        if metrics.is_file() and any(json.loads(line)["step"] >= 4 for line in metrics.read_text().splitlines()):
            kill_job(job)  # the whole job: torchrun and both ranks, gone before the resume
            break
        time.sleep(0.05)
    job.wait(30)
    assert job.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    proc = torchrun(*train_cmd(broken, "--resume", "latest"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = losses(tmp_path / "broken")
    for step in range(4, 7):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-9), step


@pytest.mark.slow  # ~30 s
def test_one_run_per_expert_trains_only_the_expert_named(untrained_wan_a14b, tmp_path):
    teacher = teacher_yaml(untrained_wan_a14b, tmp_path / "teacher.yaml")
    config = run_yaml(tmp_path, teacher, "low", student="{experts: [transformer_2], ema_decay: null, export: online}",
                      recipe="{name: consistency, skip: 5, target: online, sampler: {steps: 4}}",
                      train="{steps: 2, log_every: 1, checkpoint_every: 2, validation_prompts: [a red disc]}")
    code = f"from distill.cli import main; import sys; sys.exit(main(['train', {str(config)!r}, '--no-progress']))"
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    student = _latest(tmp_path / "low") / "student"
    for expert, moved in (("transformer", False), ("transformer_2", True)):
        ours = load_file(student / expert / "diffusion_pytorch_model.safetensors")
        theirs = load_file(untrained_wan_a14b / expert / "diffusion_pytorch_model.safetensors")
        assert any(not torch.equal(ours[k], theirs[k]) for k in ours) == moved, expert
