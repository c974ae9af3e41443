"""Tries more faults and bad input through the real `distill` entry point and prints docs/faults.md's rows.

Every try calls `distill.cli.main(argv)` (what the `distill` command runs) in this one process, so the imports are
paid once; each is a refusal that should end before any weights load or any clip is sampled. As a fail-safe, the
expensive step each command would take next (a run's networks built, an eval's sampling, a sample's teacher load)
is replaced by one that fails with "got past the checks": a try that reaches it shows a defect in its row, and
costs nothing. The tries that need a run folder copy one (`--run DIR`, a finished `distill train` run of the tiny
teacher), or train one of 1 step first.

    PYTHONPATH=. python scripts/try_more_faults.py [--run RUN] [--work DIR] | grep '^|' > rows.md

About 2 minutes on a free 2-core CPU with --run (plus a few minutes to train the 1-step run without it). Each
row: fault | command | exit | line printed (stderr, scratch paths shortened) | what was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "teachers" / "builtin" / "tiny-wan"
CONFIG = REPO / "configs" / "recipes" / "consistency-tiny.yaml"
SMALL_RUN = ["teacher: tiny-wan", "recipe: {name: consistency, skip: 5, sampler: {steps: 4}}",
             "data: {size: 4, batch_size: 2}", "deepspeed: zero2",
             "train: {steps: 1, log_every: 1, checkpoint_every: 1, validate_every: 1}", "wandb: {mode: disabled}"]
HANG_S = 120  # a try still running after this is a hang (a hub lookup without network, say)


class GotPastTheChecks(AssertionError):
    pass


def got_past(*args, **kwargs):
    raise GotPastTheChecks("got past the checks (the fail-safe stopped the work)")


class Tries:
    def __init__(self, work: Path):
        self.work, self.rows = work, []

    def short(self, text: str) -> str:
        return str(text).replace(str(self.work) + "/", "").replace(str(self.work), "W").replace(str(REPO) + "/", "")

    def run(self, label: str, argv: list, lost, patches=(), shown_argv: str | None = None) -> int:
        """One try: `distill ARGV`; `lost()` says what the fault destroyed, looked at after it ended."""
        err = io.StringIO()

        def hang(signum, frame):
            raise TimeoutError(f"still running after {HANG_S} s: a hang")

        from distill.cli import main
        previous = signal.signal(signal.SIGALRM, hang)
        signal.alarm(HANG_S)
        try:
            with contextlib.ExitStack() as stack:
                for p in patches:
                    stack.enter_context(p)
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    try:
                        code = main([str(a) for a in argv])
                    except SystemExit as exit:  # argparse's own refusals (usage line, then the error)
                        code = exit.code
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", err.getvalue())  # a progress bar's cursor moves
        lines = [line.strip() for line in re.split(r"[\r\n]+", text)  # not the libraries' own log lines
                 if line.strip() and "[WARNING]" not in line and not re.match(r"[IWE]\d{4} ", line)
                 and "%|" not in line and not re.search(r"\[\d\d:\d\d", line)]  # nor progress bars
        shown = " / ".join(lines) if len(lines) <= 3 else " / ".join(lines[:3]) + f" (+{len(lines) - 3} lines)"
        command = shown_argv or ("distill " + shlex.join(str(a) for a in argv))
        self.rows.append((label, self.short(command), code, self.short(shown), lost()))
        print(f"[{len(self.rows)}] {label}: {code}: {self.short(shown)[:300]}", file=sys.stderr)
        return code

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    def markdown(self) -> str:
        esc = lambda s: str(s).replace("|", "\\|")
        return "".join(f"| {esc(label)} | `{esc(cmd)}` | {code} | {esc(shown)} | {esc(lost)} |\n"
                       for label, cmd, code, shown, lost in self.rows)


def tree_digest(folder: Path, skip=(".lock",)) -> str:
    """Every file under `folder` (path, bytes): equal digests before and after a try mean nothing changed."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in skip:
            h.update(str(p.relative_to(folder)).encode() + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def unchanged(folder: Path, what: str):
    before = tree_digest(folder)
    return lambda: f"nothing: {what} unchanged (every file's bytes)" if tree_digest(folder) == before else \
        f"{what} CHANGED"


def absent(path: Path, what: str = "nothing written"):
    return lambda: what if not path.exists() else f"{path} was written!"


def finished_run(t: Tries, given: Path | None) -> Path:
    """A finished 1-step run of the tiny teacher: a copy of `given`, or trained here (a few minutes)."""
    run = t.work / "run"
    if given is not None:
        shutil.copytree(given, run, symlinks=True)
        return run
    from distill.cli import main
    config = t.write("small-run.yaml", "\n".join(SMALL_RUN + [f"out: {run}"]) + "\n")
    if main(["train", str(config), "--no-progress"]) != 0:
        raise SystemExit("could not train the 1-step run the tries need")
    return run


# --- the tries ------------------------------------------------------------------------------------------------------
def train_config_tries(t: Tries) -> None:
    import distill.train as train_mod

    no_build = [mock.patch.object(train_mod.Run, "_build", got_past)]
    out = t.work / "new"
    nothing = absent(out)
    run = lambda label, argv, **kw: t.run(label, ["train", *argv], kw.pop("lost", nothing), no_build, **kw)
    base = [CONFIG, f"out={out}"]
    run("train: a typo in an override's key (`train.stepz`)", [*base, "train.stepz=3"])
    typo = t.write("typo.yaml", CONFIG.read_text().replace("optim:", "optimizer:"))
    run("train: a typo in the YAML's section name (`optimizer:` for `optim:`)", [typo, f"out={out}"])
    run("train: a wrong type (`train.steps=abc`)", [*base, "train.steps=abc"])
    run("train: `train.steps=0`", [*base, "train.steps=0"])
    run("train: a negative learning rate (`optim.lr=-1e-4`)", [*base, "optim.lr=-1e-4"])
    run("train: `train.checkpoint_every=0`", [*base, "train.checkpoint_every=0"])
    run("train: `data.batch_size=-2`", [*base, "data.batch_size=-2"])
    run("train: a NaN learning rate (`optim.lr=nan`)", [*base, "optim.lr=nan"])
    bad_yaml = t.write("syntax.yaml", "teacher: tiny-wan\nrecipe: {name: consistency\ntrain: {steps: 3}\n")
    run("train: a YAML syntax error (an unclosed `{`)", [bad_yaml, f"out={out}"])
    empty = t.write("empty.yaml", "")
    run("train: an empty config file", [empty, f"out={out}"])
    listed = t.write("list.yaml", "- teacher: tiny-wan\n")
    run("train: a config file that is a YAML list, not a mapping", [listed, f"out={out}"])
    run("train: a config file that does not exist", [t.work / "nope.yaml", f"out={out}"])
    run("train: a config path that is a folder", [t.work, f"out={out}"])
    run("train: an override without `=` (`train.steps 3`)", [*base, "train.steps", "3"])
    run("train: an unknown recipe (`recipe.name=nope`)", [*base, "recipe.name=nope"])
    run("train: a value outside its choices (`teacher_dtype=float64`)", [*base, "teacher_dtype=float64"])
    run("train: a section overridden by a scalar (`optim=3`)", [*base, "optim=3"])
    run("train: a key set inside a scalar (`train.steps.max=3`)", [*base, "train.steps.max=3"])
    twice = t.write("twice.yaml", CONFIG.read_text() + "teacher: tiny-wan-a14b\n")
    run("train: a key given twice in the YAML (`teacher:` twice)", [twice, f"out={out}"])
    run("train: an unknown teacher name (`teacher=nope`)", [*base, "teacher=nope"])
    run("train: a teacher folder that does not exist", [*base, f"teacher={t.work / 'no-teacher'}"])
    a_file = t.write("teacher.txt", "not a folder\n")
    run("train: a teacher path that is a regular file", [*base, f"teacher={a_file}"])
    no_vae = t.work / "no-vae"
    shutil.copytree(TINY, no_vae)
    shutil.rmtree(no_vae / "vae")
    run("train: a teacher folder without its `vae/` component", [*base, f"teacher={no_vae}"])
    run("train: a hub id with no network (`teacher=acme/video-model`)", [*base, "teacher=acme/video-model"])
    run("train: a DeepSpeed config that does not exist", [*base, "deepspeed=zero9.json"])
    run("train: `data.source` a file that does not exist", [*base, f"data.source={t.work / 'prompts.txt'}"])
    run("train: `out=` an existing regular file", [CONFIG, f"out={t.work / 'a-file'}"])
    locked = t.work / "read-only"
    locked.mkdir()
    # root writes into a folder whatever its mode: a read-only file system stops root too
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(locked)],
                             capture_output=True).returncode == 0
    if not mounted:
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        run("train: `out=` inside a read-only " + ("file system (a tmpfs mounted ro)" if mounted else "folder"),
            [CONFIG, f"out={locked / 'run'}"], lost=absent(locked / "run"))
    finally:
        if mounted:
            subprocess.run(["umount", str(locked)])


def resume_tries(t: Tries, run: Path) -> None:
    import distill.train as train_mod

    no_build = [mock.patch.object(train_mod.Run, "_build", got_past)]
    config = run / "config.yaml"
    keep = unchanged(run, "the run")
    t.run("train: `--resume` a folder that is not a checkpoint (the teacher's folder)",
          ["train", config, f"out={run}", "--resume", TINY], keep, no_build)
    t.run("train: `--resume` a path that does not exist",
          ["train", config, f"out={run}", "--resume", t.work / "nope"], keep, no_build)
    t.run("train: resume with a changed student shape (`student.lora.rank=4`, the run is a full student)",
          ["train", config, f"out={run}", "--resume", "latest", "student.lora.rank=4"], keep, no_build)
    t.run("train: resume with a changed recipe setting (`recipe.skip=2`)",
          ["train", config, f"out={run}", "--resume", "latest", "recipe.skip=2"], keep, no_build)
    t.run("train: resume with a changed learning rate (`optim.lr=1e-3`)",
          ["train", config, f"out={run}", "--resume", "latest", "optim.lr=1e-3"], keep, no_build)


def export_tries(t: Tries, run: Path) -> None:
    keep = unchanged(run, "the run")
    empty_run = t.work / "no-ckpt"
    (empty_run / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.yaml", empty_run / "config.yaml")
    t.run("export: a run folder with no checkpoints", ["export", empty_run, "--out", t.work / "exp"],
          absent(t.work / "exp"))
    t.run("export: `--checkpoint step-000999` (not in the run)",
          ["export", run, "--checkpoint", "step-000999", "--out", t.work / "exp"], absent(t.work / "exp"))
    t.run("export: `--decoder` a path that does not exist",
          ["export", run, "--decoder", t.work / "no-decoder", "--out", t.work / "exp"], absent(t.work / "exp"))
    t.run("export: `--steps 0`", ["export", run, "--steps", "0", "--out", t.work / "exp"], absent(t.work / "exp"))
    ckpt = next((run / "checkpoints").glob("step-*"))
    t.run("export: `--out` a checkpoint folder of the run, with `--overwrite`",
          ["export", run, "--out", ckpt, "--overwrite"], keep)
    t.run("export: `--out` the run folder itself, with `--overwrite`", ["export", run, "--out", run, "--overwrite"],
          keep)
    other = t.work / "notes"
    t.write("notes/todo.txt", "my notes\n")
    t.run("export: `--overwrite` onto a folder of other files (not an export)",
          ["export", run, "--out", other, "--overwrite"],
          lambda: "nothing: notes/todo.txt kept" if (other / "todo.txt").read_text() == "my notes\n" else "DELETED")
    t.run("export: `--out` an existing regular file", ["export", run, "--out", t.work / "a-file"],
          lambda: "nothing: the file kept" if (t.work / "a-file").read_text() == "x\n" else "file CHANGED")
    t.run("export: a run path that does not exist", ["export", t.work / "no-run", "--out", t.work / "exp"],
          absent(t.work / "exp"))


def killed_export_try(t: Tries, run: Path) -> None:
    """`kill -9` of an export while it writes its staging folder, then the same export again."""
    import time

    out = t.work / "exp-killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "distill.cli", "export", str(run), "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    staging = []
    while proc.poll() is None and not staging:  # kill it once its staging folder holds a file
        staging = [p for p in out.parent.glob(f".tmp-{out.name}-*") if any(p.rglob("*"))]
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in out.parent.glob(f".tmp-{out.name}-*"))
    files = sum(1 for p in out.parent.glob(f".tmp-{out.name}-*/**/*") if p.is_file())
    killed = f"the killed export left {left} ({files} files), no {out.name}/" if left and not out.exists() else \
        f"the kill came too late (left {left}, {out.name} exists: {out.exists()})"

    def lost():
        after = sorted(p.name for p in out.parent.glob(f".tmp-{out.name}-*"))
        whole = (out / "model_index.json").is_file() and (out / "transformer").is_dir()
        return (f"nothing: {killed}; the rerun wrote a whole export" + ("" if whole else " (NOT whole!)") +
                (f", and {after} are still there" if after else ", and no staging folder is left"))
    t.run("export: killed with `kill -9` while writing its staging folder, then run again",
          ["export", run, "--out", out], lost,
          shown_argv=f"distill export run --out exp-killed & kill -9 PID; distill export run --out exp-killed")


def killed_eval_try(t: Tries) -> None:
    """`kill -9` of a real eval (the tiny teacher at 2 steps, 3 held-out prompts, 5 frames) once it has cached two
    clips, then the same eval again: the clips cached before the kill are reused, not sampled again. 30 s (free
    cores) to 3 min (a training job beside it) on 2 cores."""
    import time

    suite = t.write("kill-suite.yaml", "name: kill\ntoyworld_split: held_out\nmax_prompts: 3\nframes: 5\n"
                                       "noise_floor: false\n"
                                       "diversity: {prompts: 0}\nspeed: {clips: 1, warmup: 0}\nbatch_size: 1\n")
    out = t.work / "ev-killed"
    argv = ["eval", "--suite", suite, "--model", "teacher@2", "--out", out]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "distill.cli", *map(str, argv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    entries = lambda: sorted((out / "cache").glob("*.npy")) if (out / "cache").is_dir() else []
    while proc.poll() is None and len([p for p in entries() if not p.name.endswith(".tmp.npy")]) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in entries()}
    whole = [n for n in before if not n.endswith(".tmp.npy")]
    partial = [n for n in before if n.endswith(".tmp.npy")]
    killed = (f"the killed eval left {len(whole)} cache entries, {len(partial)} partial (.tmp.npy), no eval.json"
              if not (out / "eval.json").exists() else "the kill came too late (eval.json written)")

    def lost():
        after = {p.name: p.stat().st_mtime_ns for p in entries()}
        reused = [n for n in whole if after.get(n) == before[n]]
        left = [n for n in after if n.endswith(".tmp.npy")]
        return (f"nothing: {killed}; the rerun reused {len(reused)} of them (not sampled again), wrote eval.json"
                + ("" if (out / "eval.json").is_file() else " (NOT!)")
                + (f", and {left} are left" if left else ", and no partial entry is left"))
    t.run("eval: killed with `kill -9` after caching two clips, then run again (a real eval: the tiny teacher at 2 "
          "steps, 3 held-out prompts, 5 frames)", argv, lost,
          shown_argv="distill eval --suite kill-suite.yaml --model teacher@2 --out ev-killed & kill -9 PID; "
                     "distill eval --suite kill-suite.yaml --model teacher@2 --out ev-killed")


def eval_tries(t: Tries) -> None:
    from distill.eval import harness

    no_sampling = [mock.patch.object(harness.Harness, "run", got_past)]
    out = t.work / "ev"
    nothing = absent(out / "eval.json", "nothing sampled or written")
    ok = t.write("ok-suite.yaml", "name: ok\nprompts: [a red circle moving left, a blue square moving up, "
                                  "a green triangle moving down]\nframes: 17\nheight: 64\nwidth: 64\n")
    run = lambda label, argv, lost=nothing: t.run(label, ["eval", *argv], lost, no_sampling)
    run("eval: a suite file that does not exist", ["--suite", t.work / "no-suite.yaml", "--out", out])
    run("eval: a suite name that does not exist", ["--suite", "no-such-suite", "--out", out])
    unknown = t.write("unknown-key.yaml", ok.read_text() + "metrics: [fvd, sharpness]\n")
    run("eval: a suite with an unknown key (`metrics:`)", ["--suite", unknown, "--out", out])
    bad_detector = t.write("bad-detector.yaml", ok.read_text() + "detector: inception-v9\n")
    run("eval: a suite naming an unknown detector", ["--suite", bad_detector, "--out", out])
    run("eval: `--model` a folder that does not exist", ["--suite", ok, "--model", f"s={t.work / 'no-model'}@4",
                                                        "--out", out])
    (t.work / "empty-folder").mkdir()
    run("eval: `--model` an empty folder (not a model)", ["--suite", ok, "--model", f"s={t.work / 'empty-folder'}@4",
                                                         "--out", out])
    run("eval: the same model name given twice", ["--suite", ok, "--model", f"s={TINY}@4", "--model", f"s={TINY}@2",
                                                  "--out", out])
    run("eval: `--out` an existing regular file", ["--suite", ok, "--out", t.work / "a-file"],
        lambda: "nothing: the file kept" if (t.work / "a-file").read_text() == "x\n" else "file CHANGED")
    t.write("empty.txt", "")
    empty = t.write("empty-prompts.yaml", "name: e\nprompts_file: empty.txt\n")
    run("eval: an empty prompts file", ["--suite", empty, "--out", out])
    t.write("blank.txt", "\n   \n\t\n")
    blank = t.write("blank-prompts.yaml", "name: b\nprompts_file: blank.txt\n")
    run("eval: a prompts file of blank lines only", ["--suite", blank, "--out", out])
    run("eval: a suite override with an unknown key (`seeds_per_promt=2`)", ["--suite", ok, "--out", out,
                                                                            "seeds_per_promt=2"])
    run("eval: `seeds_per_prompt=0`", ["--suite", ok, "--out", out, "seeds_per_prompt=0"])
    run("eval: `--cache` an existing regular file", ["--suite", ok, "--out", out, "--cache", t.work / "a-file"])
    run("eval: `--sequence 0`", ["--suite", ok, "--out", out, "--sequence", "0"])
    twice = t.write("twice-suite.yaml", ok.read_text() + "frames: 33\n")
    run("eval: a suite YAML giving `frames:` twice", ["--suite", twice, "--out", out])


def gate_tries(t: Tries) -> None:
    kvd = "kvd[domain-video-net,17f]:vs_teacher"
    suite = {"prompts": ["a red circle", "a blue square", "a green triangle"], "seeds": [0, 1000, 2000],
             "n_clips": 3, "frames": 17, "height": 64, "width": 64, "fps": 8,
             "detector": {"name": "domain-video-net", "dim": 64, "protocol": "17 consecutive frames"}}
    record = {"value": 5.0, "ci95": [4.0, 6.0], "n": 3, "higher_is_better": False}
    doc = {"schema": "distill.eval/2", "suite": suite,
           "models": {"teacher@50": {"role": "teacher", "metrics": {kvd: {**record, "value": 0.0, "ci95": [0, 0]}}},
                      "student-cd@4": {"role": "student", "metrics": {kvd: record}}}}
    cur = t.write("cur.json", json.dumps(doc))
    out = t.work / "gate"
    nothing = lambda: "nothing (read-only inputs" + (f"; {out.name}/ holds {sorted(p.name for p in out.iterdir())})"
                                                     if out.exists() else ")")
    good = f"name: p\nrules:\n  - metric: '{kvd}'\n    max: 20\n"
    policy = t.write("policy.yaml", good)
    run = lambda label, current, pol: t.run(label, ["gate", "--current", current, "--policy", pol, "--out", out],
                                            nothing)
    run("gate: a policy rule on a metric no eval writes (`kvdd[...]`)", cur,
        t.write("p-metric.yaml", good.replace("kvd[", "kvdd[")))
    run("gate: a policy rule with an unknown key (`maximum: 20`)", cur,
        t.write("p-key.yaml", good.replace("max: 20", "maximum: 20")))
    run("gate: a policy whose only rule matches no model (`models: 'nope-*'`)", cur,
        t.write("p-models.yaml", good + "    models: 'nope-*'\n"))
    run("gate: a policy file that does not exist", cur, t.work / "no-policy.yaml")
    run("gate: a policy YAML syntax error", cur, t.write("p-syntax.yaml", "name: p\nrules: [\n"))
    run("gate: `--current` truncated to half", t.write("half.json", cur.read_text()[: len(cur.read_text()) // 2]),
        policy)
    run("gate: `--current` is not JSON (a YAML file)", policy, policy)
    run("gate: `--current` of another schema version (`distill.eval/1`)",
        t.write("v1.json", json.dumps({**doc, "schema": "distill.eval/1"})), policy)
    run("gate: `--current` a JSON list", t.write("list.json", "[]"), policy)
    run("gate: `--current` a file that does not exist", t.work / "no-eval.json", policy)
    t.run("gate: `--baseline` a file that does not exist", ["gate", "--current", cur, "--baseline",
                                                            t.work / "no-base.json", "--policy", policy, "--out", out],
          nothing)
    t.run("gate: `--out` an existing regular file", ["gate", "--current", cur, "--policy", policy, "--out",
                                                     t.work / "a-file"],
          lambda: "nothing: the file kept" if (t.work / "a-file").read_text() == "x\n" else "file CHANGED")
    run("gate: `--current` a metric value that is a string", t.write("str.json", json.dumps(
        {**doc, "models": {**doc["models"], "student-cd@4": {"role": "student",
                                                               "metrics": {kvd: {**record, "value": "5"}}}}})), policy)


def compare_tries(t: Tries) -> None:
    out = t.work / "cmp"
    nothing = absent(out, "nothing trained or written")
    base = "teacher: tiny-wan\nsuite: toyworld-held-out\nnproc: 1\nruns:\n"
    cd = "  cd:\n    recipe: consistency-tiny.yaml\n    models: {cd-4step: 4}\n"
    run = lambda label, text, extra=(): t.run(label, ["compare", t.write(f"cmp-{len(t.rows)}.yaml", text), "--out",
                                                      out, "--dry-run", *extra], nothing)
    run("compare: a run that references an unknown run (`{runs.nope}`)",
        base + cd + "  apt:\n    recipe: apt-tiny.yaml\n    overrides: ['student.init={runs.nope}/export']\n"
                    "    models: {apt-1step: 1}\n")
    run("compare: two runs that reference each other (a cycle)",
        base + "  a:\n    recipe: consistency-tiny.yaml\n    overrides: ['student.init={runs.b}/export']\n"
               "    models: {a-4: 4}\n  b:\n    recipe: consistency-tiny.yaml\n"
               "    overrides: ['student.init={runs.a}/export']\n    models: {b-4: 4}\n")
    run("compare: a run's recipe file that does not exist", base + cd.replace("consistency-tiny", "nope-tiny"))
    run("compare: a run's override with an unknown key", base + cd + "    overrides: [train.stepz=3]\n")
    run("compare: two runs giving the same model name", base + cd + cd.replace("  cd:", "  cd2:"))
    t.run("compare: a config name that does not exist", ["compare", "no-such-compare", "--out", out, "--dry-run"],
          nothing)


def sample_tries(t: Tries) -> None:
    import distill.teachers.config as tconfig

    no_load = [mock.patch.object(tconfig, "load_teacher", got_past)]
    clip = t.work / "clip.mp4"
    run = lambda label, argv, out=clip: t.run(label, ["sample", *argv, "--out", out], absent(out), no_load)
    run("sample: `--steps 0`", ["--prompt", "a red circle", "--steps", "0"])
    run("sample: `--steps -3`", ["--prompt", "a red circle", "--steps", "-3"])
    run("sample: an empty prompt (`--prompt ''`)", ["--prompt", ""])
    run("sample: `--out` with an unknown extension (`clip.xyz`)", ["--prompt", "a red circle"], t.work / "clip.xyz")
    deeper = t.work / "no-folder" / "deeper" / "clip.png"  # accepted: tried for real (1 step, 5 frames, cheap)
    t.run("sample: `--out` in a folder that does not exist (sampled for real: 1 step, 5 frames)",
          ["sample", "--prompt", "a red circle", "--steps", "1", "--frames", "5", "--no-cond-cache", "--formats", "png",
           "--out", deeper],
          lambda: f"nothing: the folders were made and {deeper.name} written" if deeper.is_file() else "no clip!")
    run("sample: `--frames 18` (not 4k+1)", ["--prompt", "a red circle", "--frames", "18"])
    run("sample: `--height 0`", ["--prompt", "a red circle", "--height", "0"])
    run("sample: `--guidance nan`", ["--prompt", "a red circle", "--guidance", "nan"])
    run("sample: `--batch-size 0`", ["--prompt", "a red circle", "--batch-size", "0"])
    run("sample: `--image` for a text-to-video teacher",
        ["--prompt", "a red circle", "--image", TINY / "model_index.json"])


def plan_tries(t: Tries) -> None:
    nothing = lambda: "nothing (read-only inputs)"
    t.run("plan: a config that does not exist", ["plan", t.work / "no.yaml", "--gpus", "8", "--gpu-memory", "80"],
          nothing)
    t.run("plan: `--gpus 0`", ["plan", CONFIG, "--gpus", "0", "--gpu-memory", "80"], nothing)
    t.run("plan: `--gpu-memory -1`", ["plan", CONFIG, "--gpus", "8", "--gpu-memory", "-1"], nothing)
    t.run("plan: `--gpus eight` (not a number)", ["plan", CONFIG, "--gpus", "eight", "--gpu-memory", "80"], nothing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a finished run of the tiny teacher to copy (else one is trained)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/distill-try-more-faults"))
    parser.add_argument("--only", help="comma-separated groups: train,resume,export,eval,gate,compare,sample,plan "
                                       "(and kill-eval)")
    parser.add_argument("--kill-eval", action="store_true", help="also kill a real eval and run it again (0.5-3 min)")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    t = Tries(args.work.resolve())
    t.write("a-file", "x\n")  # a regular file where a folder is expected
    only = set(args.only.split(",")) if args.only else None
    want = lambda group: only is None or group in only
    for group, tries in (("train", train_config_tries), ("eval", eval_tries), ("gate", gate_tries),
                         ("compare", compare_tries), ("sample", sample_tries), ("plan", plan_tries)):
        if want(group):
            tries(t)
    if want("resume") or want("export"):
        run = finished_run(t, args.run)
        if want("resume"):
            resume_tries(t, run)
        if want("export"):
            export_tries(t, run)
            killed_export_try(t, run)
    if args.kill_eval or (only is not None and "kill-eval" in only):
        killed_eval_try(t)
    sys.stdout.write(t.markdown())
    print(f"{len(t.rows)} rows", file=sys.stderr)


if __name__ == "__main__":
    main()
