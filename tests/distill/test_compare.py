"""`distill compare`: the config is refused before any work when it cannot run; runs go in dependency order; finished
runs are reused and partial ones resumed, with their wall time measured across resumes; the comparison table prints
only intervals that contain their points, and no cost it did not measure. No training here: the training process is
mocked."""

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from distill import compare
from distill.cli import main
from distill.core.config import CONFIG_DIR, ConfigError

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "configs" / "recipes"
FAST = ["train.steps=4", "train.checkpoint_every=2", "train.validate_every=null", "data.size=32"]


def write_config(tmp_path, runs: dict, **extra) -> Path:
    path = tmp_path / "cmp.yaml"
    path.write_text(json.dumps({"baselines": ["teacher@1"], "runs": runs, **extra}))  # JSON is YAML
    return path


def two_runs(first_overrides=(), second_overrides=("student.init={runs.first}/export",)) -> dict:
    return {"first": {"recipe": "consistency-tiny.yaml", "overrides": [*FAST, *first_overrides],
                      "models": {"a-4": 4, "a-1": 1}},
            "second": {"recipe": "apt-tiny", "overrides": [*FAST, *second_overrides], "models": {"b-1": 1}}}


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if anything is trained, exported or scored."""
    def work(*args, **kwargs):
        raise AssertionError("work started before the config was checked")
    monkeypatch.setattr(compare, "_launch", work)
    monkeypatch.setattr(compare, "eval_stage", work)
    monkeypatch.setattr("distill.export.export", work)


# --- the config, refused before any work --------------------------------------------------------------------------
@pytest.mark.parametrize("runs,shown", [
    (two_runs(second_overrides=["student.init={runs.nope}/export"]),
     ["runs.second.overrides", "{runs.nope}", "['first', 'second']"]),
    (two_runs(first_overrides=["student.init={runs.second}/export"]),
     ["cycle", "first -> second -> first"]),
    ({**two_runs(), "third": {"recipe": "no-such-recipe.yaml", "models": {"c": 1}}},
     ["runs.third.recipe", "no-such-recipe.yaml", "consistency-tiny.yaml"]),
    (two_runs(second_overrides=["student.init={runs.first}/export", "train.stepz=4"]),
     ["runs.second", "apt-tiny.yaml", "train.stepz"]),
    (two_runs(second_overrides=["student.init={runs.first}/export", "train.steps=-1"]),
     ["runs.second", "train.steps"]),
    (two_runs(second_overrides=["student.init={runs.first}/export", "teacher=wan2.1-t2v-1.3b"]),
     ["runs.second", "distils teacher 'wan2.1-t2v-1.3b'", "'tiny-wan'"]),
])
def test_a_config_that_cannot_run_is_refused_naming_the_key(tmp_path, capsys, no_work, runs, shown):
    path = write_config(tmp_path, runs)
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        compare.plan(path, out=out)
    for text in shown:
        assert text in str(err.value)
    assert str(path) in str(err.value)
    # the command: one line, exit 2, nothing created
    assert main(["compare", str(path), "--out", str(out)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("distill compare: error: ") and shown[0] in line
    assert not out.exists()


def test_config_keys_and_model_names_are_checked(tmp_path, no_work):
    with pytest.raises(ConfigError, match=r"cmp.yaml: unknown key 'runs.first.model'"):
        compare.plan(write_config(tmp_path, {"first": {"recipe": "consistency-tiny", "model": {"a": 4}}}))
    with pytest.raises(ConfigError, match=r"'a-1' is given twice"):
        compare.plan(write_config(tmp_path, two_runs(), baselines=["a-1=teacher@1"]), out=tmp_path / "o")
    with pytest.raises(ConfigError, match=r"'teacher@50' is the eval's reference"):
        compare.plan(write_config(tmp_path, two_runs(), baselines=["teacher@50"]), out=tmp_path / "o")
    with pytest.raises(ConfigError, match=r"baselines.0.*SOURCE@STEPS"):
        compare.plan(write_config(tmp_path, two_runs(), baselines=["teacher"]), out=tmp_path / "o")
    with pytest.raises(ConfigError, match=r"no compare config 'nope'.*demo"):
        compare.resolve_config("nope")


def test_runs_go_in_dependency_order_and_references_become_run_folders(tmp_path):
    spec = compare.RunSpec
    runs = {"late": spec(recipe="x", overrides=["a={runs.early}/export", "b={runs.mid}"]),
            "mid": spec(recipe="x", fast_overrides=["c={runs.early}"]),
            "early": spec(recipe="x"), "alone": spec(recipe="x", overrides=["recipe.sampler={steps: 2}"])}
    assert compare.run_order(runs, "cfg") == ["early", "mid", "late", "alone"]
    assert compare.references(runs["late"]) == ["early", "mid"]

    p = compare.plan(write_config(tmp_path, {"second": two_runs()["second"], "first": two_runs()["first"]}),
                     out=tmp_path / "out", nproc=3)
    assert [r.name for r in p.runs] == ["first", "second"]  # the config lists them the other way round
    second = p.runs[1]
    assert second.needs == ("first",)
    assert f"student.init={tmp_path / 'out' / 'first'}/export" in second.overrides
    assert second.cfg.student.init == str(tmp_path / "out" / "first" / "export")
    assert second.cfg.data.cache_dir == str(tmp_path / "out" / "data-cache")
    assert second.cfg.out == str(tmp_path / "out" / "second")
    assert p.nproc == 3
    assert [(s.name, s.steps, s.role) for s in p.specs] == [("teacher@1", 1, "baseline"), ("a-4", 4, "student"),
                                                             ("a-1", 1, "student"), ("b-1", 1, "student")]
    assert p.specs[3].source == str(tmp_path / "out" / "second" / "export")


def test_a_model_decoded_by_a_decoder_run_gets_its_folder(tmp_path, no_work, capsys):
    runs = {"first": {**two_runs()["first"], "models": {"a-4": 4, "a-4-dec": {"steps": 4,
                                                                                "decoder": "{runs.dec}/export"}}},
            "dec": {"recipe": "decoder-tiny", "overrides": FAST}}
    p = compare.plan(write_config(tmp_path, runs), out=tmp_path / "out")
    decoded = next(s for s in p.specs if s.name == "a-4-dec")
    assert (decoded.steps, decoded.decoder) == (4, str(tmp_path / "out" / "dec" / "export"))
    assert next(s for s in p.specs if s.name == "a-4").decoder is None
    assert "a-4-dec (4 steps, decoded by" in compare.describe(p)
    runs["first"]["models"]["a-4-dec"]["decoder"] = "{runs.nope}/export"
    with pytest.raises(ConfigError, match=r"runs.first.models.a-4-dec.decoder.*\{runs.nope\}"):
        compare.plan(write_config(tmp_path, runs), out=tmp_path / "out")


def test_the_shipped_compare_configs_plan(tmp_path):
    demo = compare.plan("demo", out=tmp_path / "demo", fast=True, what="demo")
    assert [r.name for r in demo.runs] == ["consistency", "apt"]
    assert [s.name for s in demo.specs] == ["teacher@4", "teacher@1", "cd-4step", "cd-1step", "apt-1step"]
    assert demo.runs[1].cfg.train.steps == 4 and "recipe.alarms.every=2" in demo.runs[1].overrides
    assert "max_prompts=6" in demo.suite_overrides
    toyworld = compare.plan("toyworld", out=tmp_path / "toy")
    assert [r.name for r in toyworld.runs][:2] == ["cd", "apt"] and toyworld.runs[1].needs == ("cd",)
    assert {s.name for s in toyworld.specs} >= {"cd-4", "cd-1", "apt-1", "dmd2-4", "teacher@4", "teacher@1"}
    short = compare.plan("toyworld-short", out=tmp_path / "short")  # the demo's runs (same folder names) plus DMD2
    assert [r.name for r in short.runs] == ["consistency", "apt", "dmd2"] and short.runs[1].needs == ("consistency",)
    assert [r.cfg.train.steps for r in short.runs] == [300, 400, 200]
    configs = {name: yaml.safe_load((CONFIG_DIR / "compare" / f"{name}.yaml").read_text())["runs"]
               for name in ("demo", "toyworld-short")}
    assert {k: configs["toyworld-short"][k] for k in ("consistency", "apt")} == configs["demo"]  # reused runs stay the demo's


def test_no_recipe_name_in_the_compare_and_demo_code():
    for file in ("distill/compare.py", "distill/demo.py", "distill/commands/compare.py"):
        text = (REPO / file).read_text().lower()
        for name in ("consistency", "apt", "dmd2"):
            assert not re.search(rf"\b{name}\b", text), (file, name)


# --- reuse, resume, and the measured cost --------------------------------------------------------------------------
def fake_checkpoint(run: Path, step: int, **meta) -> None:
    folder = run / "checkpoints" / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").write_text(json.dumps({"step": step, "world_size": 2, **meta}))
    (run / "checkpoints" / "latest").write_text(folder.name)


@pytest.fixture
def planned(tmp_path):
    return compare.plan(write_config(tmp_path, two_runs()), out=tmp_path / "out")


class FakeTrainer:
    """Stands in for `torchrun ... distill train`: writes the checkpoint a run of `reach` steps would leave."""

    def __init__(self, reach: int | None = None, code: int = 0):
        self.calls, self.reach, self.code = [], reach, code

    def __call__(self, cmd, env):
        self.calls.append(cmd)
        out = Path(next(c for c in cmd if c.startswith("out="))[4:])
        steps = int(next(c for c in cmd if c.startswith("train.steps="))[12:])
        fake_checkpoint(out, self.reach or steps)
        return self.code


def test_a_finished_run_is_reused_a_partial_one_resumed_and_a_new_one_started(planned, monkeypatch):
    first = planned.runs[0]
    launch = FakeTrainer()
    monkeypatch.setattr(compare, "_launch", launch)

    assert compare.train_stage(first, 2) == "trained"
    (cmd,) = launch.calls
    assert "--resume" not in cmd and cmd[cmd.index("--nproc_per_node") + 1] == "2"
    assert f"out={first.folder}" in cmd and str(first.recipe_file) in cmd

    assert compare.train_stage(first, 2) == "reused"  # step 4 >= train.steps
    assert len(launch.calls) == 1

    fake_checkpoint(first.folder, 2)  # a run stopped at step 2 of 4
    assert compare.train_stage(first, 2) == "resumed"
    assert launch.calls[-1][-2:] == ["--resume", "latest"]

    cost = json.loads((first.folder / compare.COST_FILE).read_text())
    assert [(s["from_step"], s["to_step"], s["exit_code"]) for s in cost["segments"]] == [(0, 4, 0), (2, 4, 0)]
    assert cost["wall_s"] == pytest.approx(sum(s["wall_s"] for s in cost["segments"]))
    c = compare.run_cost(first)
    assert c["wall_measured"] == "all" and c["training_processes"] == 2 and c["step_reached"] == 4


def test_a_failed_training_is_timed_and_reported(planned, monkeypatch):
    monkeypatch.setattr(compare, "_launch", FakeTrainer(reach=2, code=3))
    with pytest.raises(RuntimeError, match=r"run 'first': training exited with code 3.*rerun to resume"):
        compare.train_stage(planned.runs[0], 2)
    (segment,) = compare.read_cost(planned.runs[0].folder)["segments"]
    assert (segment["to_step"], segment["exit_code"]) == (2, 3)

    def interrupted(cmd, env):
        fake_checkpoint(planned.runs[0].folder, 3)
        raise KeyboardInterrupt
    monkeypatch.setattr(compare, "_launch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compare.train_stage(planned.runs[0], 2)  # Ctrl-C: the time it ran still counts
    segments = compare.read_cost(planned.runs[0].folder)["segments"]
    assert [(s["from_step"], s["to_step"], s["exit_code"]) for s in segments] == [(0, 2, 3), (2, 3, 130)]

    # a process that failed before it made its folder a run leaves no file there (the next start would refuse it)
    second = planned.runs[1]
    monkeypatch.setattr(compare, "_launch", lambda cmd, env: 2)
    with pytest.raises(RuntimeError, match=r"run 'second': training exited with code 2"):
        compare.train_stage(second, 2)
    assert not second.folder.exists()


def test_a_run_from_other_teacher_weights_is_not_reused(planned, monkeypatch):
    monkeypatch.setattr(compare, "_launch", FakeTrainer())
    fake_checkpoint(planned.runs[0].folder, 4, teacher_hash="0000000000000000")
    with pytest.raises(ConfigError, match=r"hash 0000000000000000"):
        compare.train_stage(planned.runs[0], 2)


def test_cost_of_runs_trained_elsewhere_or_partly_here(planned):
    first = planned.runs[0]
    fake_checkpoint(first.folder, 4)
    c = compare.run_cost(first)
    assert (c["wall_s"], c["wall_measured"], c["passes_per_step"]) == (None, "none", None)
    (first.folder / compare.COST_FILE).write_text(json.dumps(
        {"segments": [{"from_step": 2, "to_step": 4, "wall_s": 90.0, "ranks": 2, "exit_code": 0}]}))
    (first.folder / "metrics.jsonl").write_text('{"step": 1, "loss": 1}\n{"step": 2, "passes": 3}\n'
                                                '{"step": 3, "passes": 5}\n{"step": 4, "pas')  # last line cut
    c = compare.run_cost(first)
    assert (c["wall_s"], c["wall_measured"], c["measured_from_step"]) == (90.0, "partial", 2)
    assert c["passes_per_step"] == {"mean": 4.0, "min": 3.0, "max": 5.0, "n_logged": 2}


def test_an_export_of_an_older_checkpoint_is_replaced(planned, monkeypatch):
    first = planned.runs[0]
    calls = []
    monkeypatch.setattr("distill.export.export", lambda run, out, overwrite=False: calls.append(overwrite))
    fake_checkpoint(first.folder, 4)
    compare.export_stage(first)
    assert calls == [False]
    first.export.mkdir(parents=True)
    (first.export / "model_index.json").write_text("{}")
    (first.export / "distill_export.json").write_text(json.dumps({"step": 4}))
    compare.export_stage(first)
    assert calls == [False]  # up to date
    fake_checkpoint(first.folder, 6)
    compare.export_stage(first)
    assert calls == [False, True]


# --- the comparison table -------------------------------------------------------------------------------------------
def est(value, lo, hi, **extra):
    return {"value": value, "ci95": [lo, hi], "n": 8, **extra}


def fake_result() -> dict:
    """An eval.json of schema distill.eval/2 in miniature, with metric names of other backends than the toy
    world's (the table reads them from the file)."""
    clip, fvd_t, fvd_r = "clipsim[my-clip]", "fvd[i3d,16f]:vs_teacher", "fvd[i3d,16f]:vs_real"

    def speed(median):
        return {"speed.latency_s": {"value": median, "ci95": None, "min": median * 0.9, "max": median * 1.2,
                                    "n": 3, "level": "timing"},
                "speed.speedup_vs_teacher": {"value": 2.0 / median, "ci95": None, "min": 1.5 / median,
                                             "max": 2.2 / median, "n": 3, "level": "timing"}}

    def student(diff, fvd, others):
        return {clip: {**est(40.0 + diff, 35.0, 47.0), "paired_diff_vs_teacher": est(diff, diff - 2, diff + 2)},
                fvd_t: {**est(fvd, fvd - 5, fvd + 5), "higher_is_better": False,
                        "paired_diff_vs_models": others},
                fvd_r: {**est(fvd + 30, fvd + 20, fvd + 40), "higher_is_better": False,
                        "paired_diff_vs_teacher": est(-3.0, -9.0, 3.0)},
                "flicker.hf_energy": est(0.2, 0.1, 0.3)}

    models = {
        "teacher@50": {"role": "teacher", "steps": 50, "nfe": 100,
                       "metrics": {clip: est(40.0, 36.0, 44.0), fvd_r: est(33.0, 25.0, 41.0), **speed(2.0)}},
        "teacher@4": {"role": "baseline", "steps": 4, "nfe": 8,
                      "metrics": {**student(-5.0, 80.0, {}), **speed(0.5)}},
        "s-4": {"role": "student", "steps": 4, "nfe": 4, "metrics": {
            **student(1.5, 12.0, {"teacher@4": est(-68.0, -80.0, -50.0, value_a=12.0, value_b=80.0),
                                  "s-1": est(-9.0, -15.0, -2.0, value_a=12.0, value_b=21.0)}), **speed(0.4)}},
        "s-1": {"role": "student", "steps": 1, "nfe": 1, "metrics": {
            **student(0.25, 21.0, {"teacher@4": est(-59.0, -70.0, -40.0, value_a=21.0, value_b=80.0),
                                   "s-4": est(9.0, 2.0, 15.0, value_a=21.0, value_b=12.0)}), **speed(0.3)}},
    }
    # an interval that does not contain its point (never produced by the eval; the table must not print it)
    models["s-1"]["metrics"][fvd_r] = {**est(51.0, 52.0, 60.0), "higher_is_better": False}
    return {"schema": "distill.eval/2", "models": models, "env": {"device": "cpu"},
            "suite": {"name": "mini", "n_clips": 8, "prompts": ["a", "b", "c", "d"], "teacher": "builtin:x"}}


def costs() -> list[dict]:
    base = {"recipe_config": "configs/recipes/x.yaml", "recipe": "x", "builds_on": [], "steps": 4,
            "step_reached": 4, "ranks": 2, "measured_from_step": 0, "training_processes": 1}
    return [{**base, "run": "r4", "models": ["s-4"], "wall_s": 150.0, "wall_measured": "all",
             "passes_per_step": {"mean": 3.0, "min": 3.0, "max": 3.0, "n_logged": 2}},
            {**base, "run": "r1", "models": ["s-1"], "builds_on": ["r4"], "wall_s": None, "wall_measured": "none",
             "measured_from_step": None, "training_processes": 0, "passes_per_step": None}]


def test_the_comparison_table_prints_only_intervals_that_contain_their_points():
    comp = compare.comparison(fake_result(), costs(), "cmp.yaml")
    text = compare.comparison_markdown(comp)
    printed = re.findall(r"([+-]?\d+\.\d+) \[([+-]?\d+\.\d+), ([+-]?\d+\.\d+)\]", text)
    assert len(printed) == 10  # 3 models x 3 columns, less the withheld one and the reference cells, + 1 pair
    for point, lo, hi in printed:
        assert float(lo) <= float(point) <= float(hi), (point, lo, hi)
    assert "51.00 (interval withheld" in text and "[52.00, 60.00]" not in text
    assert comp["models"][3]["quality"]["fvd[i3d,16f]:vs_real"]["ci95"] is None

    # columns named after eval.json's metrics; the clip metric as the paired difference, in points
    header = next(line for line in text.splitlines() if line.startswith("| model |"))
    assert "clipsim[my-clip] − teacher (points)" in header and "fvd[i3d,16f]:vs_teacher" in header
    assert "hf_energy" not in header
    s4 = next(line for line in text.splitlines() if line.startswith("| s-4 |"))
    assert ("| r4 | 4 | 4 | 0.400 (0.360–0.480) | 5.00 (3.75–5.50) | +1.50 [-0.50, +3.50] | 12.00 [7.00, 17.00]"
            in s4)
    teacher = next(line for line in text.splitlines() if line.startswith("| teacher@50 |"))
    assert "reference" in teacher and "33.00 [25.00, 41.00]" in teacher

    # model vs model: the compared students only, each pair once, read off the interval
    (pair,) = [p for p in comp["pairs"] if p["metric"] == "fvd[i3d,16f]:vs_teacher"]
    assert (pair["a"], pair["b"], pair["reading"]) == ("s-4", "s-1", "s-4 better")
    assert "teacher@4 better" not in text and "-68.00" not in text

    # the cost: measured, not measured, no passes logged
    assert "| r4 | configs/recipes/x.yaml | x | s-4 | – | 4 (4) | 2 | 2.5 min | 3 |" in text
    assert "| r1 | configs/recipes/x.yaml | x | s-1 | r4 | 4 (4) | 2 | not measured | – |" in text
    assert "wall time" in text and "DiT passes / step" in text and "Columns:" in text


def test_run_compare_trains_in_order_then_scores_once_and_writes_the_comparison(planned, monkeypatch):
    launch = FakeTrainer()
    monkeypatch.setattr(compare, "_launch", launch)

    def export(run, out, overwrite=False):
        out.mkdir(parents=True)
        (out / "model_index.json").write_text("{}")
    monkeypatch.setattr("distill.export.export", export)
    scored = []

    def eval_stage(p):
        scored.append([s.name for s in p.specs])
        result = fake_result()
        result["models"] = {"teacher@50": result["models"]["teacher@50"], "a-4": result["models"]["s-4"]}
        return result
    monkeypatch.setattr(compare, "eval_stage", eval_stage)

    compare.run_compare(planned)
    assert [next(c for c in cmd if c.startswith("out=")) for cmd in launch.calls] == \
        [f"out={planned.out / 'first'}", f"out={planned.out / 'second'}"]
    assert scored == [["teacher@1", "a-4", "a-1", "b-1"]]
    comp = json.loads((planned.out / "comparison.json").read_text())
    assert comp["schema"] == "distill.compare/1" and [c["run"] for c in comp["runs"]] == ["first", "second"]
    assert comp["runs"][1]["builds_on"] == ["first"] and comp["runs"][0]["wall_measured"] == "all"
    assert "| a-4 | first |" in (planned.out / "comparison.md").read_text()


def test_dry_run_prints_the_plan(tmp_path, capsys, no_work):
    assert main(["compare", str(write_config(tmp_path, two_runs())), "--out", str(tmp_path / "o"), "--dry-run",
                 "nproc=1"]) == 0
    text = capsys.readouterr().out
    assert "1 rank per run" in text and "2. second" in text and "after first" in text
    assert not (tmp_path / "o").exists()


def test_a_sigterm_stops_the_training_process_and_counts_as_an_interruption(tmp_path):
    """`kill` of `distill compare` (a scheduler's stop) reaches the training process, and the stage ends as
    interrupted, so train_stage records the time it ran."""
    import signal
    import subprocess
    import sys
    import textwrap

    marker = tmp_path / "child-got-sigterm"
    child = textwrap.dedent(f"""
        import pathlib, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(marker)!r}).touch(), sys.exit(143)))
        pathlib.Path({str(tmp_path / 'child-started')!r}).touch()
        time.sleep(60)
    """)
    parent = textwrap.dedent(f"""
        import sys
        from distill import compare
        try:
            compare._launch([sys.executable, "-c", {child!r}], {{}})
        except KeyboardInterrupt:
            sys.exit(130)
        sys.exit(0)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent])
    deadline = time.time() + 60
    while not (tmp_path / "child-started").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 130  # interrupted, after the child stopped
    assert marker.exists()
