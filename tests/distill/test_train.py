"""The training engine with two processes on CPU (torchrun, gloo), under ZeRO-2 and ZeRO-3: the loss falls, ranks
agree, a killed run resumes exactly, LoRA trains only its adapters, a dying rank fails the job, bad input is refused
before any work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from distill.core.config import ConfigError
from distill.students import registry
from distill.train_config import load_train_config

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("train_worker.py")
BIN = Path(sys.executable).parent


def write_config(tmp: Path, name: str = "run", **sections) -> Path:
    cfg = {"teacher": "tiny-wan",
           "recipe": {"name": "consistency", "skip": 5, "sampler": {"steps": 2}},
           "data": {"size": 8, "batch_size": 2, "cache_dir": str(tmp / "cache")},
           "optim": {"lr": 3e-4},
           "deepspeed": "zero2",
           "train": {"steps": 6, "log_every": 1, "checkpoint_every": 3, "validation_prompts": ["a red disc"],
                     "collective_timeout_s": 60},
           "wandb": {"mode": "disabled"},
           "out": str(tmp / name)}
    for key, value in sections.items():
        merge = isinstance(value, dict) and key != "recipe"  # a recipe section replaces the default one
        cfg[key] = {**cfg.get(key, {}), **value} if merge else value
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def torchrun(*args, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), "--standalone", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


def kill_job(job: subprocess.Popen) -> None:
    """SIGKILL a whole torchrun job, as `kill -9` of every process of it does, and wait until none of them runs.
    torchrun starts each rank in a session of its own, so killing torchrun's process group leaves the ranks
    running (and rank 0 holding the run's lock: an immediate `--resume` would rightly be refused as a second job);
    the ranks are found as torchrun's descendants before it dies."""
    family = [job.pid, *descendants(job.pid)]
    os.killpg(job.pid, signal.SIGKILL)
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job.wait(30)
    deadline = time.time() + 30
    while running := [pid for pid in family if state(pid) not in (None, "Z", "X")]:
        assert time.time() < deadline, f"processes {running} of the job still run 30 s after SIGKILL"
        time.sleep(0.05)


def state(pid: int) -> str | None:
    """A process's state letter from /proc (None: gone). Its fields after "pid (comm)": state, ppid, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def train_cmd(config: Path, *extra) -> list[str]:
    return ["-m", "distill.cli", "train", str(config), "--no-progress", *extra]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def worker(tmp: Path, config: Path, *overrides) -> dict:
    report = tmp / "report.json"
    proc = torchrun(WORKER, config, report, *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(report.read_text())


# Both stages are slow-only (make test's budget): ZeRO-2 trains in many tests below (resume, LoRA, APT, a NaN), and two
# ZeRO-3 ranks train in make test's kill-and-resume test, whose exact resume needs them to agree
@pytest.mark.parametrize("stage", [pytest.param("zero2", marks=pytest.mark.slow),
                                   pytest.param("zero3", marks=pytest.mark.slow)])
def test_two_ranks_train_and_agree(tmp_path, stage):
    config = write_config(tmp_path, deepspeed=stage, optim={"lr": 1e-3}, train={"steps": 40, "checkpoint_every": 40})
    report = worker(tmp_path, config)
    run = tmp_path / "run"
    trace = losses(run)
    # a student that starts as the teacher starts with a small, noisy loss: compare ten-step sums
    first, last = [trace[s] for s in range(1, 11)], [trace[s] for s in range(31, 41)]
    assert sum(last) < 0.8 * sum(first), (first, last)
    # Every rank holds the same student and the same EMA after the steps.
    assert len({r["digest"] for r in report["ranks"]}) == 1
    assert len({r["ema_digest"] for r in report["ranks"]}) == 1
    assert len(report["changed"]) == len(report["all_weights"])  # full fine-tuning moves every weight
    ckpt = run / "checkpoints" / "step-000040"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000040"
    assert (ckpt / "student" / "diffusion_pytorch_model.safetensors").is_file()
    assert sorted(p.name for p in (ckpt / "rng").iterdir()) == ["rank0.safetensors", "rank1.safetensors"]
    assert len(list((run / "validation" / "step-000040").glob("*.mp4"))) == 1


@pytest.mark.slow  # ~22 s (make test's budget): the LoRA export tests train and check an adapter run
def test_lora_trains_only_adapter_weights(tmp_path):
    # with gradient checkpointing on, as the Wan recipes run
    config = write_config(tmp_path, student={"lora": {"rank": 4, "alpha": 4}, "gradient_checkpointing": True},
                          train={"steps": 3})
    report = worker(tmp_path, config)
    assert report["trainable"] and all("lora_" in n for n in report["trainable"])
    assert report["changed"] and set(report["changed"]) <= set(report["trainable"])
    assert any("lora_A" in n for n in report["changed"]) and any("lora_B" in n for n in report["changed"])
    assert len(report["all_weights"]) > len(report["trainable"])
    assert (tmp_path / "run" / "checkpoints" / "step-000003" / "lora" / "pytorch_lora_weights.safetensors").is_file()


APT = {"recipe": {"name": "apt", "sampler": {"steps": 1}, "alarms": {"every": 2}},
       "optim": {"name": "rmsprop", "lr": 1e-5}, "student": {"ema_decay": 0.995}}


# DMD2 with two critic updates per generator update and a 2-step student (backward simulation through its sampler)
# and a fresh batch per phase (the data positions a resumed run must continue from)
DMD2 = {"recipe": {"name": "dmd2", "critic_steps": 2, "critic_lr": 1e-4, "sampler": {"steps": 2},
                   "fresh_critic_batch": True}}
# rCM: two sCM-only warm-up steps, then one critic update per student update (sCM + DMD), so the resume at step 3
# crosses into the critic's phases; its JVP runs under both ranks' ZeRO-2 engine
RCM = {"recipe": {"name": "rcm", "tangent_warmup": 2, "dmd": {"critic_steps": 1, "critic_lr": 1e-4},
                  "sampler": {"steps": 2}}}


# All slow (make test's budget): make test keeps the exact-resume check through the second family
# (tests/distill/test_ltx_students.py, consistency on 2 ranks killed between checkpoints); Wan under ZeRO-2/3, APT's
# two engines, DMD2's critic and rCM resume here in the slow runs
@pytest.mark.parametrize("stage,recipe", [pytest.param("zero2", "consistency", marks=pytest.mark.slow),
                                          pytest.param("zero3", "consistency", marks=pytest.mark.slow),
                                          pytest.param("zero2", "apt", marks=pytest.mark.slow),
                                          pytest.param("zero2", "dmd2", marks=pytest.mark.slow),  # ~2-4 min
                                          pytest.param("zero2", "rcm", marks=pytest.mark.slow)])
def test_killed_run_resumes_with_the_same_losses(tmp_path, stage, recipe):
    sections = {"apt": APT, "dmd2": DMD2, "rcm": RCM}.get(recipe, {})
    whole = write_config(tmp_path, "whole", deepspeed=stage, **sections)
    proc = torchrun(*train_cmd(whole))
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = losses(tmp_path / "whole")

    broken = write_config(tmp_path, "broken", deepspeed=stage, **sections)
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--standalone", *train_cmd(broken)]
    job = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    metrics = tmp_path / "broken" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and job.poll() is None:
        if metrics.is_file() and any(json.loads(line)["step"] >= 5 for line in metrics.read_text().splitlines()):
            kill_job(job)  # the whole job, mid-way between checkpoints 3 and 6
            break
        time.sleep(0.05)
    job.wait(30)
    assert job.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    ckpts = tmp_path / "broken" / "checkpoints"
    # step 3's checkpoint, or step 4's when an APT alarm went off there (an alarm keeps the state it fired in)
    latest = (ckpts / "latest").read_text().strip()
    assert latest == "step-000003" or (recipe == "apt" and latest == "step-000004"), latest

    proc = torchrun(*train_cmd(broken, "--resume", "latest"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = losses(tmp_path / "broken")
    assert sorted(resumed) == list(range(1, 7))
    for step in range(4, 7):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-9), step
    if recipe in ("apt", "dmd2", "rcm"):  # every logged figure, the second network's included, continues exactly
        rows = {r["step"]: r for r in map(json.loads, (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines())}
        again = {r["step"]: r for r in map(json.loads, (tmp_path / "broken" / "metrics.jsonl").read_text().splitlines())}
        keys = {"apt": ("discriminator", "d_real", "d_fake", "r1"), "dmd2": ("critic", "dmd_grad_rms"),
                "rcm": ("critic", "dmd_grad_rms", "scm", "scm_g_norm", "dmd")}[recipe]
        for key in keys:
            assert again[6][key] == pytest.approx(rows[6][key], rel=1e-6, abs=1e-9), key


@pytest.mark.slow  # ~28 s (make test's budget)
def test_apt_alternates_discriminator_and_generator_updates(tmp_path):
    config = write_config(tmp_path, deepspeed="zero2", train={"steps": 3, "checkpoint_every": 3},
                          **{**APT, "recipe": {**APT["recipe"], "d_steps": 2}})
    report = worker(tmp_path, config)
    assert report["engine_steps"] == {"discriminator": 6, "student": 3}  # two D updates per G update
    assert len({r["digest"] for r in report["ranks"]}) == 1
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all({"discriminator", "r1", "g_gan"} <= set(r) for r in rows) and all(r["r1"] > 0 for r in rows)
    engines = tmp_path / "run" / "checkpoints" / "step-000003" / "engines"
    assert sorted(p.name for p in engines.iterdir() if p.is_dir()) == ["discriminator", "student"]


def test_a_dying_rank_fails_the_job_fast(tmp_path):
    config = write_config(tmp_path, train={"steps": 10_000, "checkpoint_every": 10_000})
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--standalone", *train_cmd(config)]
    job = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.1)
    workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[-1]), signal.SIGKILL)
    start = time.time()
    try:
        job.wait(90)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode not in (0, None)
    assert time.time() - start < 90


# --- refused before any work -------------------------------------------------------------------------------------
def test_unknown_recipe_is_refused_naming_it(tmp_path):
    config = write_config(tmp_path, recipe={"name": "progressive"})
    with pytest.raises(ConfigError, match="recipe.name.*'progressive'"):
        load_train_config(config)


def test_missing_deepspeed_config_is_refused(tmp_path):
    config = write_config(tmp_path, deepspeed="configs/deepspeed/zero9.json")
    with pytest.raises(ConfigError, match="zero9.json"):
        load_train_config(config)


def test_bad_deepspeed_json_is_refused(tmp_path):
    from distill.networks import deepspeed_config

    bad = tmp_path / "ds.json"
    bad.write_text('{"train_micro_batch_size_per_gpu": 16, "zero_optimization": {"stage": 2}}')
    cfg = load_train_config(write_config(tmp_path, deepspeed=str(bad)))
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu.*data.batch_size"):
        deepspeed_config(cfg)


def test_student_of_another_shape_is_refused(tmp_path, untrained_wan):
    from distill.preflight import preflight

    config = json.loads((untrained_wan / "transformer" / "config.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "in_channels": 4, "out_channels": 4}))
    cfg = load_train_config(write_config(tmp_path, student={"init": str(other)}))
    with pytest.raises(ConfigError, match="in_channels is 4"):
        preflight(cfg)


def test_missing_student_init_is_refused_naming_it(tmp_path):
    from distill.preflight import preflight

    cfg = load_train_config(write_config(tmp_path, student={"init": str(tmp_path / "no-export")}))
    with pytest.raises(ConfigError, match="student.init.*no-export.*does not exist"):
        preflight(cfg)


def test_an_unregistered_family_is_refused_naming_the_registered_ones(tmp_path, capsys):
    from distill.cli import main

    teacher = tmp_path / "teacher.yaml"
    teacher.write_text("name: t\nsource: builtin:tiny-wan\nfamily: hunyuan\n")
    config = write_config(tmp_path, teacher=str(teacher))
    assert main(["train", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown teacher family 'hunyuan'; registered families: [" in err[0] and "'wan'" in err[0]
    assert not (tmp_path / "run").exists()  # refused before any work


def test_resume_from_another_config_is_refused(tmp_path):
    from distill.checkpoint import check_compatible

    first = load_train_config(write_config(tmp_path))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    from distill.train_config import fingerprint_hash

    (folder / "meta.json").write_text(json.dumps({"fingerprint": fingerprint_hash(first), "world_size": 2}))
    (folder / "config.yaml").write_text(yaml.safe_dump(first.model_dump(mode="json")))
    check_compatible(folder, first, 2)  # the same config resumes
    longer = load_train_config(write_config(tmp_path), ["train.steps=100"])
    check_compatible(folder, longer, 2)  # running longer is allowed
    other = load_train_config(write_config(tmp_path), ["optim.lr=0.1"])
    with pytest.raises(ConfigError, match="another config.*optim.lr"):
        check_compatible(folder, other, 2)
    with pytest.raises(ConfigError, match="written by 2 ranks"):
        check_compatible(folder, first, 4)


def test_resume_against_changed_teacher_weights_is_refused(tmp_path):
    from distill.checkpoint import check_compatible
    from distill.train_config import fingerprint_hash

    cfg = load_train_config(write_config(tmp_path))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    meta = {"fingerprint": fingerprint_hash(cfg), "world_size": 2, "teacher": "tiny-wan", "teacher_hash": "aaaa"}
    (folder / "meta.json").write_text(json.dumps(meta))
    check_compatible(folder, cfg, 2, "aaaa")  # the same weights resume
    with pytest.raises(ConfigError, match="hash aaaa, but that teacher now hashes bbbb"):
        check_compatible(folder, cfg, 2, "bbbb")
    # a checkpoint of a retired built-in teacher is refused by that teacher's name, not only by two hashes
    (folder / "meta.json").write_text(json.dumps({**meta, "teacher_hash": "c198cebf10ba6637"}))
    with pytest.raises(ConfigError, match="retired builtin:tiny-wan of the first toy world"):
        check_compatible(folder, cfg, 2, "bbbb")


def test_an_existing_run_folder_needs_resume(tmp_path):
    from distill.cli import main

    config = write_config(tmp_path)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-000003\n")
    assert main(["train", str(config), "--no-progress"]) == 2


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    import re

    # the explosion guard off, so that only the NaN (a few steps into lr 10) stops the run
    config = write_config(tmp_path, optim={"lr": 10.0, "grad_clip": None},
                          train={"steps": 20, "checkpoint_every": 1, "explode_ratio": None})
    proc = torchrun(*train_cmd(config), nproc=1)
    assert proc.returncode != 0
    stopped = re.search(r"step (\d+): the loss is nan; stopped\. Last good checkpoint: step-(\d+)", proc.stderr)
    assert stopped, proc.stderr[-3000:]
    bad, good = int(stopped[1]), int(stopped[2])
    assert good == bad - 1 and bad < 20
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == f"step-{good:06d}"
    assert sorted(p.name for p in ckpts.glob("step-*")) == [f"step-{s:06d}" for s in range(1, good + 1)]


def test_the_loss_guard_stops_a_nan_and_an_explosion_but_not_noise():
    from distill.monitor import LossGuard, TrainingAborted

    guard = LossGuard(ratio=10.0, warmup=3)
    for step, loss in enumerate([1.0, 0.8, 1.5, 0.9, 2.0], start=1):  # noisy, never 10x its running mean
        guard.check(step, loss)
    with pytest.raises(TrainingAborted, match="step 6: the loss 50 exploded"):
        guard.check(6, 50.0)
    with pytest.raises(TrainingAborted, match="step 7: the loss is nan"):
        LossGuard(ratio=None, warmup=0).check(7, float("nan"))
    LossGuard(ratio=None, warmup=0).check(1, 1e9)  # without a ratio only non-finite losses stop a run


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipe_configs_validate(path):
    from distill.networks import deepspeed_config

    cfg = load_train_config(path)
    assert cfg.recipe.name in registry.names() and cfg.train.steps > 0
    ds = deepspeed_config(cfg)
    assert ds["train_micro_batch_size_per_gpu"] == cfg.data.batch_size


def test_missing_prompt_file_is_refused_before_any_work(tmp_path):
    from distill.preflight import preflight

    cfg = load_train_config(write_config(tmp_path, data={"source": str(tmp_path / "nope.txt"), "latents": "teacher"}))
    with pytest.raises(ConfigError, match="data.source.*nope.txt"):
        preflight(cfg)


def test_the_engine_names_no_recipe():
    """Recipes are plug-ins: no recipe's name appears in the engine's code. The exceptions: the multistep
    consistency *sampler* (teachers/samplers.py), which export writes into a scheduler and the CLI offers, and a
    recipe named after a part of every evaluated model (the `decoder` recipe trains what an eval model spec's
    `decoder` names): that word may appear, but no code compares a recipe's name with a literal."""
    import re

    from distill.eval.suite import ModelSpec

    names = registry.names()
    assert {"consistency", "apt", "dmd2", "decoder"} <= set(names)
    words = [n for n in names if n not in ModelSpec.model_fields]
    assert words and "decoder" not in words
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)
    by_literal = re.compile(r"recipe(\.name|_name)?\s*(==|!=|in)\s*[(\[{]?\s*[\"']")
    hits = []
    for path in sorted((REPO / "distill").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in ("distill/export.py",) or rel.startswith("distill/commands/"):
            continue  # the sampler's name, and config file names in help examples
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) or by_literal.search(line):
                hits.append(f"{rel}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)


@pytest.mark.slow  # ~1 min: one 2-rank ZeRO-3 run
def test_zero3_partitioned_build_gives_the_ema_the_students_own_random_init(tmp_path):
    """Under ZeRO-3 the EMA is built a second time from the student's random state rather than copied whole: a LoRA
    student's randomly initialised adapter must come out the same in both. With a learning rate too small to move
    a weight, the checkpoint's EMA (ema.safetensors) equals the online student's adapter (lora/, export: online)."""
    config = write_config(tmp_path, deepspeed="zero3", optim={"lr": 1e-30}, train={"steps": 2, "checkpoint_every": 2},
                          student={"lora": {"rank": 4, "alpha": 4}, "ema_decay": 0.5,
                                   "export": "online"})  # lora/ holds the online student, not the EMA
    proc = torchrun(*train_cmd(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "step-000002"
    ema = load_file(ckpt / "ema.safetensors")
    lora = load_file(ckpt / "lora" / "pytorch_lora_weights.safetensors")
    a = sorted(k for k in ema if "lora_A" in k)
    assert a and any(float(ema[k].abs().max()) > 0 for k in a)  # a random init, not zeros
    student = {k.removeprefix("transformer.").replace(".lora_A.weight", ".lora_A.default.weight"): v
               for k, v in lora.items()}
    for k in a:
        assert torch.equal(ema[k], student[k]), k
