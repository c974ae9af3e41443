"""Checkpoints: everything a run needs to continue exactly, written atomically.

    RUN/checkpoints/step-000200/
        engines/<network>/    each trainable network's DeepSpeed engine: weights, optimiser, LR schedule
        student/              the exported weights as a diffusers transformer folder (full runs), or
        lora/                 the adapter in diffusers' LoRA format (LoRA runs)
        ema.safetensors       the EMA of the trainable weights (unless student/ already holds exactly that)
        rng/rank{r}.safetensors   torch (and CUDA) RNG states and the loop's generator, per rank
        config.yaml, meta.json    the resolved config, step, data position, fingerprint, code version
        manifest.json             every other file's size and sha256, written last
    RUN/checkpoints/latest    the name of the newest complete checkpoint
    RUN/.lock                 held (flock) by the training job's rank 0 for its lifetime: host, pid, start time

A checkpoint is written into `.tmp-step-N/`, and renamed only when every rank has finished writing; `latest` is
replaced atomically after that. A crash or kill at any moment leaves the previous checkpoint intact, and a full disk
removes the partial folder (distill.core.disk). Retention never deletes the checkpoint just written.

Reading one back verifies its manifest: the sizes always (a stat per file, so every `find` does it), the sha256s
on resume (a full read, shared over the job's ranks; a resume reads most of it anyway). A damaged file is named, and
`--resume latest` falls back to the newest intact checkpoint, saying so; checkpoints from before manifests load
unverified, with a note.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file, save_file

from distill.core.config import ConfigError
from distill.core.disk import DiskFull, free_bytes, is_disk_full, mount_of, remove, size_of
from distill.core.dist import barrier, gather_dict, rank_world
from distill.core.env import code_version, environment
from distill.train_config import ADDED_SINCE_CHECKPOINTS, TrainConfig, fingerprint, fingerprint_hash, with_legacy_values
from distill.teachers.retired import retired_note


def step_name(step: int) -> str:
    return f"step-{step:06d}"


# --- RNG --------------------------------------------------------------------------------------------------------
def rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "loop": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loop"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --- writing ----------------------------------------------------------------------------------------------------
MANIFEST = "manifest.json"


def save(root: Path, step: int, cfg: TrainConfig, engines: dict, generator: torch.Generator, write_weights,
         meta: dict, keep: int) -> Path:
    """Write checkpoint `step` under root/checkpoints (every rank calls this; collectives inside).

    `write_weights(folder)` writes student/ or lora/ and ema.safetensors (collective under ZeRO-3).

    A full disk: when the last checkpoint says how much the next one needs (the same shapes, so the same bytes) and
    any rank's disk lacks it, every rank stops before writing a byte. A disk that fills up during the write removes
    the partial folder. Inside DeepSpeed's own collectives a failing rank can only end (the launcher stops the
    others); in our own writes every rank reports, so no rank waits in a collective for one that has failed."""
    rank = rank_world()[0]
    ckpts = root / "checkpoints"
    final = ckpts / step_name(step)
    tmp = ckpts / f".tmp-{step_name(step)}"
    what = f"checkpoint {final.name}"
    needed = _last_size(ckpts)
    free = min(gather_dict({rank: free_bytes(ckpts)}).values())
    if needed and free < needed:
        raise DiskFull(tmp, mount_of(ckpts), free, needed, what)

    def make_folder():
        remove(tmp)
        (tmp / "rng").mkdir(parents=True)

    def write_meta():
        (tmp / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        full_meta = {"step": step, "fingerprint": fingerprint_hash(cfg), "code_version": code_version(),
                     "environment": environment(),
                     "world_size": dist.get_world_size() if dist.is_initialized() else 1,
                     "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta}
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=1))

    try:
        _together(tmp, what, needed, make_folder if rank == 0 else lambda: None)  # and every rank waits for it
        try:
            for name, engine in engines.items():
                engine.save_checkpoint(str(tmp / "engines"), tag=name, save_latest=False)
            write_weights(tmp)
        except Exception as err:
            if is_disk_full(err):
                written = size_of(tmp)
                if rank == 0:
                    remove(tmp)  # first, so that the line says what is free once it is gone
                raise _full(tmp, what, needed or written) from err
            raise
        _together(tmp, what, needed, lambda: save_file(rng_state(generator), tmp / "rng" / f"rank{rank}.safetensors"))
        _together(tmp, what, needed, write_meta if rank == 0 else lambda: None)
        entries = hash_files(tmp)  # collective; it only reads
        _together(tmp, what, needed, (lambda: write_manifest(tmp, entries)) if rank == 0 else lambda: None)
    except BaseException:  # a full disk, an error, Ctrl-C: the partial folder goes, the last checkpoint stays
        if rank == 0:
            remove(tmp)
        raise
    if rank == 0:
        _publish(tmp, final)
        _retire(ckpts, final, keep)
    barrier()
    return final


def _together(tmp: Path, what: str, needed: int | None, write) -> None:
    """Run this rank's part of a write, then learn every rank's outcome: if any failed, all raise and rank 0
    removes the partial folder (only then: a rank that removed it alone would break its peers' writes). A full
    disk anywhere is the cause every rank reports (the others' errors follow from it)."""
    rank, world = rank_world()
    error = None
    try:
        write()
    except Exception as err:  # noqa: BLE001 (re-raised below, once every rank knows)
        error = err
    outcome = None if error is None else (str(error), is_disk_full(error), size_of(tmp))
    failed = {r: e for r, e in gather_dict({rank: outcome}).items() if e}
    if not failed:
        return
    full = [e for e in failed.values() if e[1]]
    if full:
        written = max(e[2] for e in full)
    if rank == 0:
        remove(tmp)
    if full:
        raise _full(tmp, what, needed or written or None) from error
    if error is not None:
        raise error
    first = min(failed)
    raise RuntimeError(f"{what} not written: rank {first} failed: {failed[first][0]}")


def _full(tmp: Path, what: str, needed: int | None) -> DiskFull:
    return DiskFull(tmp, mount_of(tmp), free_bytes(tmp), needed or size_of(tmp) or None, what)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def hash_files(folder: Path) -> dict[str, dict]:
    """Every file's size and sha256, on every rank (collective: each rank hashes a share)."""
    rank, world = rank_world()
    files = _files(folder)
    mine = {f: {"size": (folder / f).stat().st_size, "sha256": _sha256(folder / f)} for f in files[rank::world]}
    return gather_dict(mine)


def write_manifest(folder: Path, entries: dict[str, dict]) -> None:
    part = folder / f".{MANIFEST}.tmp"
    part.write_text(json.dumps({"files": {f: entries[f] for f in sorted(entries)}}, indent=1))
    os.replace(part, folder / MANIFEST)


def verify(folder: Path, hashes: bool = True) -> list[str] | None:
    """What is wrong with a checkpoint's files against its manifest (empty when intact), or None when it has no
    manifest (written before manifests). Collective when a process group is up: each rank checks a share."""
    rank, world = rank_world()
    path = folder / MANIFEST
    problems: dict[str, str] = {}
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as err:
        return [f"{str(path)!r} is unreadable ({type(err).__name__})"]
    for name in sorted(files)[rank::world]:
        file, want = folder / name, files[name]
        if not file.is_file():
            problems[name] = f"{str(file)!r} is missing"
        elif (size := file.stat().st_size) != want["size"]:
            problems[name] = f"{str(file)!r} has {size} bytes, its manifest says {want['size']}"
        elif hashes and _sha256(file) != want["sha256"]:
            problems[name] = f"{str(file)!r} does not match its sha256 in the manifest"
    problems = gather_dict(problems)
    return [problems[name] for name in sorted(problems)]


def _last_size(ckpts: Path) -> int | None:
    """The bytes of the newest checkpoint by its manifest: what the next one will need."""
    latest = ckpts / "latest"
    try:
        files = json.loads((ckpts / latest.read_text().strip() / MANIFEST).read_text())["files"]
        return sum(entry["size"] for entry in files.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished folder into place and point `latest` at it. A checkpoint of the same step (a resume from
    an older one) is set aside first, never deleted before its successor is in place."""
    aside = final.parent / f".old-{final.name}"
    if final.exists():
        remove(aside)
        os.replace(final, aside)
    os.replace(tmp, final)
    write_latest(final.parent, final.name)
    remove(aside)


def clean_partial(ckpts: Path) -> None:
    """What a job that died while saving left behind (its lock holder calls this): partial `.tmp-step-*` folders
    are removed, and a checkpoint set aside by `_publish` goes back in place if its successor never arrived."""
    if not ckpts.is_dir():
        return
    for aside in ckpts.glob(".old-step-*"):
        final = ckpts / aside.name[len(".old-"):]
        if final.exists():
            remove(aside)
        else:
            os.replace(aside, final)
    for partial in [*ckpts.glob(".tmp-step-*"), ckpts / ".latest.tmp"]:
        remove(partial)


def write_latest(ckpts: Path, name: str) -> None:
    part = ckpts / ".latest.tmp"
    part.write_text(name + "\n")
    os.replace(part, ckpts / "latest")


def _retire(ckpts: Path, final: Path, keep: int) -> None:
    """Keep `final` and the `keep - 1` newest others (newest by when they were written, not by name: after a resume
    from an older checkpoint, a higher step may be an abandoned one)."""
    others = sorted((p for p in complete(ckpts) if p != final), key=_written, reverse=True)
    for old in others[keep - 1:]:
        shutil.rmtree(old, ignore_errors=True)


# --- finding and checking -------------------------------------------------------------------------------------------
RUN_MARKERS = ("checkpoints", "config.yaml", "metrics.jsonl")  # what a run writes into its out folder first
LOCK = ".lock"


def check_out_folder(out: str | Path) -> None:
    """A run writes into a folder that is missing, empty, or a run already (to resume, or refused later as taken);
    never into someone's non-empty folder, whose files it would mix with its own."""
    out = Path(out).expanduser()
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"out: {str(out)!r} is a file, not a folder; choose another out=")
    if any(p.name != LOCK for p in out.iterdir()) and not any((out / name).exists() for name in RUN_MARKERS):
        raise ConfigError(f"out: {str(out)!r} exists, is not empty and is not a training run (none of "
                          f"{', '.join(RUN_MARKERS)}); choose another out= or empty it")


def complete(ckpts: Path) -> list[Path]:
    """The checkpoint folders under `ckpts` that were renamed into place (they have meta.json)."""
    return sorted(p for p in ckpts.glob("step-*") if (p / "meta.json").is_file()) if ckpts.is_dir() else []


def _written(folder: Path) -> tuple[str, int]:
    """When a checkpoint was written (its meta's time, then its step): survives copies that reset mtimes."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        return str(meta.get("time", "")), int(meta.get("step", 0))
    except (OSError, ValueError, TypeError):
        return "", 0


_UNVERIFIED: set[str] = set()  # checkpoints without a manifest already noted in this process


def resolve(run: str | Path, checkpoint: str = "latest", hashes: bool = False) -> tuple[Path, list[str]]:
    """`find`, returning the notes (a repaired `latest`, a fallback, an unverified checkpoint) instead of warning
    them, so that a job can print them from one rank (collective when a process group is up: see `verify`)."""
    root = Path(run).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{str(root)!r} does not exist or is not a folder; give a run folder (the `out` of "
                          f"`distill train`) or one of its checkpoints/step-N folders")
    notes: list[str] = []

    def intact(folder: Path) -> list[str]:
        problems = verify(folder, hashes)
        if problems is None and str(folder) not in _UNVERIFIED:
            _UNVERIFIED.add(str(folder))
            notes.append(f"checkpoint {str(folder)!r} has no {MANIFEST} (written before manifests): nothing to "
                         f"verify, loading it as it is")
        return problems or []

    def refuse_damaged(folder: Path, problems: list[str]) -> ConfigError:
        return ConfigError(f"checkpoint {str(folder)!r} is damaged: {'; '.join(problems)}")

    if (root / "meta.json").is_file():
        if checkpoint != "latest":
            raise ConfigError(f"{str(root)!r} is already a checkpoint folder; a checkpoint name ({checkpoint!r}) "
                              f"applies to run folders only")
        if problems := intact(root):
            raise refuse_damaged(root, problems)
        return root, notes
    ckpts = root / "checkpoints"
    found = complete(ckpts)
    if checkpoint != "latest":
        folder = ckpts / checkpoint
        if not (folder / "meta.json").is_file():
            raise ConfigError(f"checkpoint {str(folder)!r} named by {checkpoint!r} is missing or incomplete (no "
                              f"meta.json); complete checkpoints there: {[p.name for p in found]}")
        if problems := intact(folder):
            raise refuse_damaged(folder, problems)
        return folder, notes
    latest = ckpts / "latest"
    named = latest.read_text().strip() if latest.is_file() else None
    if not found and named:
        raise ConfigError(f"{str(latest)!r} names {named!r}, which is missing or incomplete, and there is no other "
                          f"complete checkpoint under {str(ckpts)!r}")
    if not found:
        raise ConfigError(f"no checkpoint under {str(root)!r} (neither a checkpoints/latest file nor a "
                          f"meta.json); has `distill train` written a checkpoint there yet?")
    candidates = sorted(found, key=_written, reverse=True)
    if named is None:
        notes.append(f"{str(latest)!r} is missing")
    elif ckpts / named in candidates:
        candidates.remove(ckpts / named)
        candidates.insert(0, ckpts / named)
    else:
        notes.append(f"{str(latest)!r} names {named!r}, which is missing or incomplete")
    damaged = []
    for folder in candidates:
        if problems := intact(folder):
            damaged.append(f"{folder.name} ({'; '.join(problems)})")
            notes.append(f"checkpoint {str(folder)!r} is damaged: {'; '.join(problems)}")
            continue
        if folder.name != named:
            notes.append(f"using {folder.name}, the newest intact checkpoint under {str(ckpts)!r}")
        return folder, notes
    dangling = (f"{str(latest)!r} names {named!r}, which is missing or incomplete, and "
                if named is not None and ckpts / named not in found else "")
    raise ConfigError(f"{dangling}no intact checkpoint under {str(ckpts)!r}: {', '.join(damaged)}")


def find(run: str | Path, checkpoint: str = "latest", hashes: bool = False) -> Path:
    """A checkpoint folder: `run` itself when it is one, else the run folder's `latest` or its checkpoint named
    `checkpoint` (e.g. step-000200), verified against its manifest (sizes; sha256s too with `hashes`).

    A missing, dangling or damaged `latest` falls back to the newest intact checkpoint, with a warning; a named
    checkpoint that fails verification is refused, naming the file."""
    folder, notes = resolve(run, checkpoint, hashes)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return folder


# --- the run lock ---------------------------------------------------------------------------------------------------
class RunLock:
    """RUN/.lock, held with flock by one training job for its lifetime; the file says who holds it.

    flock belongs to the open file, so the kernel drops it when the holder dies however it dies (kill -9 included):
    a lock file that is not locked is stale, whatever it says, and is taken over."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK
        self.file = None

    def acquire(self) -> str | None:
        """Take the lock, or raise ConfigError naming its holder; returns a note when a stale one was taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read()
            f.close()
            raise ConfigError(f"out: {str(self.path.parent)!r} is in use by another training job "
                              f"({_holder(holder, stale=False)}, lock {str(self.path)!r}); wait for it to end or "
                              f"choose another out=") from None
        f.seek(0)
        previous = f.read().strip()
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        f.flush()
        self.file = f
        if previous:
            return (f"out: took over the stale lock {str(self.path)!r} of a job that ended without releasing it "
                    f"({_holder(previous, stale=True)})")
        return None

    def release(self) -> None:
        if self.file is not None:
            self.file.seek(0)
            self.file.truncate()
            self.file.close()  # closing drops the flock
            self.file = None


def _holder(text: str, stale: bool) -> str:
    try:
        who = json.loads(text)
        where = f"pid {who['pid']} on {who['host']}, started {who['started']}"
    except (ValueError, KeyError, TypeError):
        return f"holder unknown: {text.strip()[:80]!r}" if text.strip() else "holder not yet written"
    if stale and who["host"] == socket.gethostname():
        try:
            os.kill(int(who["pid"]), 0)
        except ProcessLookupError:
            where += ", no longer running"
        except (OSError, ValueError):
            pass
    return where


def check_compatible(folder: Path, cfg: TrainConfig, world_size: int, teacher_hash: str | None = None) -> dict:
    """Refuse to resume from a checkpoint of a different config (naming the keys that differ), of another world
    size, or trained against other teacher weights (`teacher_hash`: the teacher folder's `checkpoint_hash`)."""
    meta = json.loads((folder / "meta.json").read_text())
    check_teacher(folder, meta, teacher_hash, "--resume")
    if meta["fingerprint"] != fingerprint_hash(cfg):
        saved = TrainConfig.model_validate(with_legacy_values(yaml.safe_load((folder / "config.yaml").read_text())))
        a, b = fingerprint(saved), fingerprint(cfg)
        a = {**{k: v for k, v in ADDED_SINCE_CHECKPOINTS.items() if k in b}, **a}  # a dropped key held its legacy value
        diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        shown = ", ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in diff[:6])
        raise ConfigError(f"--resume: checkpoint {str(folder)!r} comes from another config ({shown}); "
                          f"start a new run folder or use the same config")
    if meta["world_size"] != world_size:
        raise ConfigError(f"--resume: checkpoint {str(folder)!r} was written by {meta['world_size']} ranks, this job "
                          f"has {world_size}; exact resume needs the same number (consolidate with `distill export` "
                          f"and start a new run from it with student.init)")
    return meta


def load_rng(folder: Path, generator: torch.Generator) -> None:
    set_rng_state(load_file(folder / "rng" / f"rank{rank_world()[0]}.safetensors"), generator)


def check_teacher(folder: Path, meta: dict, teacher_hash: str | None, what: str) -> None:
    """A student belongs to the teacher weights it was distilled from: same name, other weights is refused."""
    if teacher_hash is not None and meta.get("teacher_hash") not in (None, teacher_hash):
        raise ConfigError(f"{what}: checkpoint {str(folder)!r} was distilled from teacher {meta.get('teacher')!r} "
                          f"with weights hash {meta['teacher_hash']}{retired_note(meta['teacher_hash'])}, but that "
                          f"teacher now hashes {teacher_hash} (its weights or configs changed); start a new run folder")
