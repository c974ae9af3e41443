"""Faults of a run folder: nothing lost. A folder holding checkpoints is a run (refused without --resume); a
missing or dangling `latest` is repaired; one job at a time holds the folder's lock; every checkpoint carries a
manifest that resume verifies, falling back to the newest intact one; a full disk ends in one line and keeps the
last checkpoint; SIGINT and SIGTERM end in one line, 130 and 143.

The cheap tests drive `checkpoint.save` with tiny fake engines; the real trainings are marked slow."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from distill import checkpoint
from distill.core.config import ConfigError
from distill.core.disk import DiskFull
from distill.train_config import load_train_config
from tests.disks import small_tmpfs

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class FakeEngine:
    """Writes what a DeepSpeed engine writes, in the same way (torch's zip writer), `numel` float32s of it."""

    def __init__(self, numel: int = 1000):
        self.numel = numel

    def save_checkpoint(self, save_dir, tag, save_latest):
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"module": torch.arange(self.numel, dtype=torch.float32)}, folder / "mp_rank_00_model_states.pt")


def write_student(folder: Path) -> None:
    (folder / "student").mkdir()
    (folder / "student" / "weights.bin").write_bytes(b"w" * 100)


@pytest.fixture
def cfg(tmp_path):
    return load_train_config(REPO / "configs" / "recipes" / "consistency-tiny.yaml",
                             [f"out={tmp_path / 'run'}", "wandb.mode=disabled"])


def save(run: Path, cfg, step: int, keep: int = 5, engine=None) -> Path:
    return checkpoint.save(run, step, cfg, {"student": engine or FakeEngine()}, torch.Generator(), write_student,
                           {}, keep)


def notes_of(call) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in caught]


# --- manifests and retention -------------------------------------------------------------------------------------
def test_every_checkpoint_carries_a_manifest_of_its_files(tmp_path, cfg):
    run = tmp_path / "run"
    folder = save(run, cfg, 3)
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest) == on_disk and "meta.json" in manifest and "rng/rank0.safetensors" in manifest
    entry = manifest["engines/student/mp_rank_00_model_states.pt"]
    assert entry["size"] == (folder / "engines/student/mp_rank_00_model_states.pt").stat().st_size
    assert len(entry["sha256"]) == 64
    assert checkpoint.verify(folder) == []
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000003"
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_retention_never_deletes_the_checkpoint_just_written(tmp_path, cfg):
    run = tmp_path / "run"
    save(run, cfg, 3)
    save(run, cfg, 6)
    # a resume from step 3 writes step 4 next to the abandoned step 6: by name, step 4 would be the oldest
    save(run, cfg, 4, keep=1)
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-000004"]
    assert (ckpts / "latest").read_text().strip() == "step-000004"
    assert checkpoint.find(run) == ckpts / "step-000004"


def test_rewriting_a_step_sets_the_old_one_aside_until_the_new_one_is_in_place(tmp_path, cfg):
    run = tmp_path / "run"
    save(run, cfg, 3)
    ckpts = run / "checkpoints"
    # a job that died between setting step 3 aside and renaming its successor into place
    os.replace(ckpts / "step-000003", ckpts / ".old-step-000003")
    (ckpts / ".tmp-step-000003").mkdir()
    checkpoint.clean_partial(ckpts)
    assert checkpoint.verify(ckpts / "step-000003") == [] and not list(ckpts.glob(".*-step-*"))
    save(run, cfg, 3)  # the same step again: replaced, never missing
    assert checkpoint.find(run) == ckpts / "step-000003" and not list(ckpts.glob(".*-step-*"))


# --- verification on resume --------------------------------------------------------------------------------------
def test_a_truncated_file_is_named_and_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, cfg):
    run = tmp_path / "run"
    save(run, cfg, 3)
    save(run, cfg, 6)
    damaged = run / "checkpoints" / "step-000006" / "engines" / "student" / "mp_rank_00_model_states.pt"
    os.truncate(damaged, 100)
    folder, notes = notes_of(lambda: checkpoint.find(run))
    assert folder == run / "checkpoints" / "step-000003"
    assert any(str(damaged) in n and "has 100 bytes" in n for n in notes), notes
    assert any("using step-000003, the newest intact checkpoint" in n for n in notes), notes
    with pytest.raises(ConfigError, match=f"{damaged}.*has 100 bytes, its manifest says"):
        checkpoint.find(run, "step-000006")  # an explicit checkpoint is refused, not replaced
    with pytest.raises(ConfigError, match="damaged"):
        checkpoint.find(run / "checkpoints" / "step-000006")


def test_a_flipped_byte_passes_the_size_check_and_fails_the_hash_check(tmp_path, cfg):
    run = tmp_path / "run"
    save(run, cfg, 3)
    save(run, cfg, 6)
    damaged = run / "checkpoints" / "step-000006" / "student" / "weights.bin"
    damaged.write_bytes(b"v" + b"w" * 99)
    assert checkpoint.find(run) == run / "checkpoints" / "step-000006"  # sizes only (export, compare)
    (folder, notes), _ = notes_of(lambda: checkpoint.resolve(run, hashes=True))
    assert folder == run / "checkpoints" / "step-000003"  # what --resume does
    assert any(str(damaged) in n and "sha256" in n for n in notes), notes


def test_missing_or_dangling_latest_falls_back_to_the_newest_intact_checkpoint(tmp_path, cfg):
    run = tmp_path / "run"
    save(run, cfg, 3)
    save(run, cfg, 6)
    latest = run / "checkpoints" / "latest"
    latest.unlink()
    folder, notes = notes_of(lambda: checkpoint.find(run))
    assert folder.name == "step-000006" and any("latest' is missing" in n for n in notes), notes
    latest.write_text("step-000009\n")
    folder, notes = notes_of(lambda: checkpoint.find(run))
    assert folder.name == "step-000006" and any("names 'step-000009', which is missing" in n for n in notes), notes
    for step in ("step-000003", "step-000006"):  # nothing intact: refused, naming each
        os.truncate(run / "checkpoints" / step / "meta.json", 1)
    with pytest.raises(ConfigError, match="no intact checkpoint") as caught:
        checkpoint.find(run)
    assert all(f"{step}/meta.json' has 1 bytes" in str(caught.value) for step in ("step-000003", "step-000006"))


def test_a_checkpoint_from_before_manifests_loads_with_one_note(tmp_path, cfg):
    run = tmp_path / "run"
    folder = save(run, cfg, 3)
    (folder / "manifest.json").unlink()
    assert checkpoint.verify(folder) is None
    found, notes = notes_of(lambda: checkpoint.find(run))
    assert found == folder and len(notes) == 1 and "no manifest.json" in notes[0] and "nothing to verify" in notes[0]
    _, again = notes_of(lambda: checkpoint.find(run))
    assert again == []  # said once


def test_resume_repairs_latest_in_the_run(tmp_path, cfg):
    from distill.train import Run

    run_dir = tmp_path / "run"
    save(run_dir, cfg, 3)
    save(run_dir, cfg, 6)
    os.truncate(run_dir / "checkpoints" / "step-000006" / "student" / "weights.bin", 10)
    run = Run.__new__(Run)  # the claim alone: lock, verification, repair (no networks)
    run.cfg, run.out, run.rank, run.world, run.teacher_hash = cfg, run_dir, 0, 1, None
    run.resume_from, run.meta, run.lock = None, {}, checkpoint.RunLock(run_dir)
    _, notes = notes_of(lambda: run._claim("latest"))
    run.close()
    assert run.resume_from.name == "step-000003" and run.meta["step"] == 3
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000003"
    assert any("repaired: it now names step-000003" in n for n in notes), notes


# --- a folder holding checkpoints is a run ---------------------------------------------------------------------
def test_a_folder_holding_checkpoints_without_latest_needs_resume(tmp_path, capsys):
    from distill.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load((REPO / "configs/recipes/consistency-tiny.yaml").read_text()),
                                      "out": str(tmp_path / "run")}))
    (tmp_path / "run" / "checkpoints" / "step-000003").mkdir(parents=True)
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    assert main(["train", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run (checkpoints step-000003); pass --resume latest" in err[0]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.5}\n'


def test_a_restart_never_deletes_metrics(tmp_path):
    from distill.monitor import set_aside

    metrics = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 6)]
    metrics.write_text("\n".join(rows) + '\n{"step": 6, "lo')  # the last line cut by a kill
    set_aside(metrics, 3)  # resumed from step 3
    assert metrics.read_text().splitlines() == rows[:3]
    assert (tmp_path / "metrics.superseded.jsonl").read_text().splitlines() == [*rows[3:], '{"step": 6, "lo']
    set_aside(metrics, 0)  # a fresh start (a run killed before its first checkpoint)
    assert metrics.read_text() == "" and len((tmp_path / "metrics.superseded.jsonl").read_text().splitlines()) == 6


# --- the run lock ----------------------------------------------------------------------------------------------
HOLD = """
import fcntl, json, os, socket, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
f.seek(0); f.truncate()
f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-01-01T00:00:00"})); f.flush()
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_job_is_refused_naming_the_holder_and_a_killed_holders_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"in use by another training job \\(pid {holder.pid} on "
                                              f"{socket.gethostname()}, started 2026-01-01T00:00:00"):
            checkpoint.RunLock(run).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = checkpoint.RunLock(run)
    note = lock.acquire()  # kill -9 left the file; the kernel dropped the flock
    assert note and "took over the stale lock" in note and f"pid {holder.pid}" in note and "no longer running" in note
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):  # one holder, even within a process
        checkpoint.RunLock(run).acquire()
    lock.release()
    again = checkpoint.RunLock(run)
    assert again.acquire() is None  # released cleanly: nothing stale to report
    again.release()
    checkpoint.check_out_folder(run)  # a folder holding only a released lock is still free for a new run


# --- a full disk ---------------------------------------------------------------------------------------------------
def test_a_full_disk_while_writing_removes_the_partial_checkpoint_and_keeps_the_last(tmp_path, cfg, monkeypatch):
    run = tmp_path / "run"
    save(run, cfg, 3)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save_file", full)  # the RNG states, after DeepSpeed's files
        with pytest.raises(DiskFull, match=r"disk full writing checkpoint step-000006 .*free on .*it needs about"):
            save(run, cfg, 6)
    ckpts = run / "checkpoints"
    assert not list(ckpts.glob(".tmp-*")) and sorted(p.name for p in ckpts.glob("step-*")) == ["step-000003"]
    assert checkpoint.find(run) == ckpts / "step-000003" and checkpoint.verify(ckpts / "step-000003") == []

    class TornWriter(FakeEngine):  # torch's zip writer on a full disk
        def save_checkpoint(self, save_dir, tag, save_latest):
            super().save_checkpoint(save_dir, tag, save_latest)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4416 vs 4310")
    with pytest.raises(DiskFull):
        save(run, cfg, 6, engine=TornWriter())
    assert not list(ckpts.glob(".tmp-*")) and (ckpts / "latest").read_text().strip() == "step-000003"
    assert save(run, cfg, 6) == ckpts / "step-000006"  # space freed: the same save succeeds


def test_a_disk_without_room_for_the_next_checkpoint_stops_before_writing(tmp_path, cfg, monkeypatch):
    run = tmp_path / "run"
    first = save(run, cfg, 3)
    size = sum(e["size"] for e in json.loads((first / "manifest.json").read_text())["files"].values())
    monkeypatch.setattr(checkpoint, "free_bytes", lambda path: size - 1)
    with pytest.raises(DiskFull, match=r"KiB free on .*it needs about") as caught:
        save(run, cfg, 6)
    assert caught.value.needed == size and caught.value.free == size - 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-000003"]


@pytest.fixture
def small_disk(tmp_path):
    with small_tmpfs(tmp_path / "disk", "3m") as disk:
        yield disk


def test_a_real_full_disk_keeps_the_last_checkpoint_and_resumes_once_space_is_freed(small_disk, cfg):
    run = small_disk / "run"
    save(run, cfg, 3, engine=FakeEngine(250_000))  # ~1 MiB
    with pytest.raises(DiskFull) as caught:
        save(run, cfg, 6, engine=FakeEngine(600_000))  # ~2.3 MiB: more than is left
    assert caught.value.mount == small_disk and "disk full writing checkpoint step-000006" in str(caught.value)
    ckpts = run / "checkpoints"
    assert not list(ckpts.glob(".tmp-*")) and checkpoint.verify(ckpts / "step-000003") == []
    assert checkpoint.find(run) == ckpts / "step-000003"
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)  # space freed
    assert save(run, cfg, 6, engine=FakeEngine(600_000), keep=1) == ckpts / "step-000006"
    assert checkpoint.verify(ckpts / "step-000006") == [] and not (ckpts / "step-000003").exists()


# --- several ranks writing one checkpoint ----------------------------------------------------------------------
RANKS = """
import errno, os, sys
import torch, torch.distributed as dist
from pathlib import Path
from distill import checkpoint
from distill.train_config import load_train_config

rank, out = int(sys.argv[1]), Path(sys.argv[2])
dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"file://{out}/.rendezvous")
cfg = load_train_config(sys.argv[3], [f"out={out / 'run'}"])
real_save = checkpoint.save_file
def save_file(tensors, path):  # rank 1 finds the disk full writing its RNG state
    if rank == 1 and "step-000006" in str(path):
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(tensors, path)
checkpoint.save_file = save_file
class Engine:
    def save_checkpoint(self, save_dir, tag, save_latest):
        (Path(save_dir) / tag).mkdir(parents=True, exist_ok=True)
        torch.save(torch.zeros(10), Path(save_dir) / tag / f"rank{rank}.pt")
def weights(folder):
    if rank == 0:
        (folder / "student").mkdir(); (folder / "student" / "w.bin").write_bytes(b"w")
checkpoint.save(out / "run", 3, cfg, {"student": Engine()}, torch.Generator(), weights, {}, 2)
try:
    checkpoint.save(out / "run", 6, cfg, {"student": Engine()}, torch.Generator(), weights, {}, 2)
except Exception as err:
    print(f"rank {rank}: {type(err).__name__}: {err}", flush=True)
    sys.exit(2)
"""


@pytest.mark.slow  # ~45 s on two shared cores: two processes importing torch and a gloo group
def test_every_rank_ends_when_one_rank_finds_the_disk_full(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", RANKS, str(r), str(tmp_path),
                               str(REPO / "configs/recipes/consistency-tiny.yaml")],
                              cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outs
    for rank, (out, _) in enumerate(outs):
        assert f"rank {rank}: DiskFull: disk full writing checkpoint step-000006" in out, outs
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-000003"]
    assert checkpoint.verify(ckpts / "step-000003") == []
    manifest = json.loads((ckpts / "step-000003" / "manifest.json").read_text())["files"]
    assert {"engines/student/rank0.pt", "engines/student/rank1.pt", "rng/rank1.safetensors"} <= set(manifest)


# --- signals -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig,code,line", [(signal.SIGINT, 130, "interrupted"),
                                           (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_a_signal_ends_a_command_with_one_line_and_its_code(monkeypatch, capsys, sig, code, line):
    from distill import cli
    from distill.commands import plan

    def stopped(args):
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler raises before this ends
        return 0
    monkeypatch.setattr(plan, "run", stopped)
    # as in a terminal: a background job (CI's `cmd &`) starts with SIGINT ignored, which the CLI leaves ignored
    previous = signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    try:
        _signal_ends_the_command(cli, capsys, code, line, monkeypatch)
    finally:
        signal.signal(sig, previous)


def _signal_ends_the_command(cli, capsys, code, line, monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["plan", "x.yaml", "--gpus", "1", "--gpu-memory", "80"]) == code
    assert [ln for ln in capsys.readouterr().err.splitlines() if ln] == [f"distill plan: error: {line}"]
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored for an in-process caller
    monkeypatch.setenv("RANK", "1")  # the other ranks of a job stay silent: rank 0 speaks for it
    assert cli.main(["plan", "x.yaml", "--gpus", "1", "--gpu-memory", "80"]) == code
    assert capsys.readouterr().err.strip() == ""


# --- real trainings (slow) ------------------------------------------------------------------------------------------
def run_config(tmp: Path, out: Path, **train) -> Path:
    cfg = {"teacher": "tiny-wan", "recipe": {"name": "consistency", "skip": 5, "sampler": {"steps": 2}},
           "data": {"size": 8, "batch_size": 2, "cache_dir": str(tmp / "cache")}, "deepspeed": "zero2",
           "train": {"steps": 6, "log_every": 1, "checkpoint_every": 3, "validation_prompts": ["a red circle"],
                     "collective_timeout_s": 60, **train},
           "wandb": {"mode": "disabled"}, "out": str(out)}
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("distill train: error:")]


def stop_after(cmd: list[str], metrics: Path, step: int, sig: int) -> subprocess.CompletedProcess:
    """Run `cmd` in its own session and send `sig` to all of it (as a terminal's Ctrl-C does) once `metrics`
    logs `step`."""
    job = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and job.poll() is None:
        if metrics.is_file() and any(json.loads(line)["step"] >= step for line in metrics.read_text().splitlines()
                                     if line.endswith("}")):
            os.killpg(job.pid, sig)
            break
        time.sleep(0.05)
    out, err = job.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, job.returncode, out, err)


@pytest.mark.slow  # ~1.5 min: a single-process run, stopped, then resumed for one step
def test_sigterm_ends_a_run_with_143_one_line_and_its_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    config = run_config(tmp_path, out, steps=40)
    cmd = [sys.executable, "-m", "distill.cli", "train", str(config), "--no-progress"]
    proc = stop_after(cmd, out / "metrics.jsonl", 4, signal.SIGTERM)
    assert proc.returncode == 143, proc.stderr[-3000:]
    lines = errors(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("distill train: error: terminated (SIGTERM); last checkpoint: step-"), \
        proc.stderr[-3000:]
    ckpts = out / "checkpoints"
    kept = (ckpts / "latest").read_text().strip()
    assert kept in lines[0] and checkpoint.verify(ckpts / kept) == [] and not list(ckpts.glob(".tmp-*"))
    assert (out / ".lock").read_text() == ""  # released on the way out
    step = int(kept.split("-")[1])
    resumed = subprocess.run([*cmd, "--resume", "latest", f"train.steps={step + 1}"], cwd=REPO, env=env(),
                             capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, step + 2))


@pytest.mark.slow  # ~2 min: a two-rank run under torchrun, interrupted
def test_ctrl_c_under_torchrun_ends_every_rank_with_one_line_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    config = run_config(tmp_path, out, steps=40)
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--standalone", "-m", "distill.cli", "train", str(config),
           "--no-progress"]
    proc = stop_after(cmd, out / "metrics.jsonl", 4, signal.SIGINT)
    lines = errors(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("distill train: error: interrupted; last checkpoint: step-"), \
        proc.stderr[-3000:]
    # torchrun's own exit code for a job it stopped on a signal is 1 (its SignalException); the ranks end with 130
    assert proc.returncode in (1, 130), proc.returncode
    ckpts = out / "checkpoints"
    kept = (ckpts / "latest").read_text().strip()
    assert kept in lines[0] and checkpoint.verify(ckpts / kept) == [] and not list(ckpts.glob(".tmp-*"))
    checkpoint.RunLock(out).acquire()  # free again


@pytest.mark.slow  # ~2 min: a run whose second checkpoint does not fit its disk, resumed once the disk grows
def test_a_run_on_a_full_disk_stops_in_one_line_and_resumes_once_space_is_freed(tmp_path):
    with small_tmpfs(tmp_path / "disk", "30m") as disk:
        out = disk / "run"
        config = run_config(tmp_path, out, keep_checkpoints=1)  # one checkpoint is ~19 MB
        cmd = [sys.executable, "-m", "distill.cli", "train", str(config), "--no-progress"]
        proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=400)
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = errors(proc.stderr)
        assert len(lines) == 1 and "disk full writing checkpoint step-000006" in lines[0], proc.stderr[-3000:]
        assert f"free on {disk}; it needs about" in lines[0]
        ckpts = out / "checkpoints"
        assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-000003"]
        assert checkpoint.verify(ckpts / "step-000003") == []
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = subprocess.run([*cmd, "--resume", "latest"], cwd=REPO, env=env(), capture_output=True, text=True,
                                 timeout=400)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert (ckpts / "latest").read_text().strip() == "step-000006"
        assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == \
            list(range(1, 7))
