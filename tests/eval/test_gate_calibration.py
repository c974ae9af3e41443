"""scripts/calibrate_gate.py's trial logic on synthetic trials (no model sampled): who poses as the current model,
how the tolerance is tuned on tuning trials only, the exact bounds it prints, and seeds no trial shares."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from distill.core.config import ConfigError
from distill.eval.gate import Policy
from tests.eval.test_gate_paired import CLIP, doc

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("calibrate_gate", REPO / "scripts" / "calibrate_gate.py")
calibrate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(calibrate)

PROMPTS = np.repeat(np.arange(12), 4)
POLICY = Policy.model_validate({"name": "p", "rules": [{"metric": CLIP, "roles": ["student"],
                                                        "max_regression_vs_baseline": 0.0}]})


def trial(seed: int) -> dict:
    """One synthetic trial: the retrained student is 0.3 points worse on every clip (within any sensible
    tolerance, significant at r = 0); the regressions are 10 and 2 points worse; the collapsed student repeats
    each prompt's first clip, which no per-clip metric can see."""
    rng = np.random.default_rng(seed)
    base = 30 + rng.normal(0, 3, 12)[PROMPTS] + rng.normal(0, 1, PROMPTS.size)
    return doc({"student": base, "null": base - 0.3 + rng.normal(0, 0.01, base.size),
                "teacher-2step": base - 10, "student-below": base - 2 + rng.normal(0, 0.3, base.size),
                "collapsed": base[(PROMPTS * 4)]}, PROMPTS)


def test_posing_moves_the_model_and_its_per_clip_values_into_the_students_place():
    d = trial(0)
    posed = calibrate.posing(d, "teacher-2step")
    assert set(posed["models"]) == {"teacher@50", "student"}
    assert posed["per_clip"]["models"]["student"] == d["per_clip"]["models"]["teacher-2step"]
    assert posed["models"]["student"]["metrics"] == d["models"]["teacher-2step"]["metrics"]


def test_the_tolerance_is_tuned_on_the_tuning_trials_and_measured_on_others(tmp_path):
    tuning, measuring = [trial(s) for s in range(2)], [trial(s) for s in range(10, 13)]
    chosen, trade = calibrate.tune(POLICY, tuning, [0.0, 0.02, 0.1], tmp_path)
    assert chosen == 0.02  # r = 0 fails the retrained student (0.3 points worse, significantly) on both
    assert [counts["false alarm"] for _, counts, _ in trade] == [2, 0, 0]
    res = calibrate.outcomes(calibrate.with_tolerance(POLICY, chosen), measuring, tmp_path)
    counts = {kind: sum(bool(f) for f in fails) for kind, fails in res.items()}
    assert counts == {"false alarm": 0, "teacher-2step": 3, "student-below": 3, "collapsed": 0}
    text = "\n".join(calibrate.table(res))
    assert "≤ 0.632 (one-sided)" in text  # 0 of 3: 1 - 0.05^(1/3)
    assert f"{CLIP} (3)" in text


def test_exact_bounds():
    assert calibrate.upper_bound(0, 60) == pytest.approx(1 - 0.05 ** (1 / 60)) and calibrate.upper_bound(0, 60) < 0.05
    assert calibrate.upper_bound(0, 20) > 0.13  # why 20 clean trials do not show <= 5%
    assert calibrate.upper_bound(3, 3) == 1.0
    lo, hi = calibrate.exact_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10))


def test_trial_seeds_are_disjoint_from_each_other_and_from_the_replication():
    seeds = 4
    offsets = [set(range(calibrate.trial_seed(t, seeds), calibrate.trial_seed(t, seeds) + seeds)) for t in range(80)]
    assert sum(map(len, offsets)) == len(set().union(*offsets))
    # scripts/replicate_eval.py: set j at offset seeds * j (+ the noise floor's next block), 20 sets
    assert min(map(min, offsets)) > seeds * 21
    with pytest.raises(ConfigError, match="past 999"):
        calibrate.trial_seed(100, seeds)


def test_a_block_of_minutes_starts_no_trial_the_last_ones_time_says_would_end_past_it():
    now = calibrate.time.time()
    assert not calibrate.out_of_time(now, None, 1e9)  # no block: never out of time
    assert not calibrate.out_of_time(now, 10, None)  # nothing timed yet, nothing spent
    assert not calibrate.out_of_time(now - 60, 10, 300)  # 1 min spent + 5 min trial <= 10
    assert calibrate.out_of_time(now - 360, 10, 300)  # 6 + 5 > 10: the trial would end past the block
    assert calibrate.out_of_time(now - 601, 10, None)  # spent before the first trial


def args_for(tune: int, trials: int):
    return calibrate.argparse.Namespace(tune=tune, trials=trials, tolerances="0,0.02", policy=Path("p.yaml"),
                                        seeds=4)


def test_an_incomplete_calibration_reports_what_is_in_and_says_it_is_interim(tmp_path):
    # 2 of 3 tuning trials: the trade-off so far, no measurement table, no tolerance claimed as chosen
    lines, record = calibrate.report(args_for(3, 5), [trial(s) for s in range(2)], POLICY, tmp_path)
    text = "\n".join(lines)
    assert "INTERIM: 2 of 3 tuning and 0 of 5 measurement trials" in text and "continues from trial 2" in text
    assert "Chosen on the tuning trials so far: r = 0.02." in text and "Measured on" not in text
    assert record["interim"] and record["tuned"] is None and record["shipped"] == {}
    assert [row["failed"]["false alarm"] for row in record["trade_off"]] == [2, 0]
    # all tuning trials and 1 of 5 measurement trials: the measurement as far as it goes, still interim
    lines, record = calibrate.report(args_for(2, 5), [trial(s) for s in range(3)], POLICY, tmp_path)
    text = "\n".join(lines)
    assert "INTERIM: 2 of 2 tuning and 1 of 5 measurement trials" in text
    assert record["tuned"]["teacher-2step"] == [[CLIP]] and record["measure_trials"] == 1
    # complete: no interim line
    lines, record = calibrate.report(args_for(1, 1), [trial(s) for s in range(2)], POLICY, tmp_path)
    assert not record["interim"] and not any("INTERIM" in line for line in lines)


def test_trials_of_another_protocol_are_refused_naming_the_trial_and_the_difference():
    docs = [trial(s) for s in range(3)]
    for d in docs:
        d["models"]["student"].update(source="runs/cd/export", steps=4, checkpoint_hash="aaaa")
        d["suite"]["seed"] = 600 + 2 * docs.index(d)  # trials differ in their seeds: that is the design
    paths = [Path(f"out/trials/trial-{t:03d}.json") for t in range(3)]
    calibrate.check_trials(docs, paths)
    docs[2]["models"]["student"]["checkpoint_hash"] = "bbbb"  # the student retrained between two blocks
    with pytest.raises(SystemExit, match=r"trial-002.json: not the protocol of trial-000.json "
                                         r"\(student.checkpoint_hash: 'aaaa' in trial-000.json, 'bbbb' here\)"):
        calibrate.check_trials(docs, paths)
    docs[2]["models"]["student"]["checkpoint_hash"] = "aaaa"
    docs[1]["suite"]["frames"] = 9
    with pytest.raises(SystemExit, match=r"trial-001.json: .*suite\.frames"):
        calibrate.check_trials(docs, paths)


def test_tuning_sets_the_tolerance_in_each_rules_own_form(tmp_path):
    absolute = Policy.model_validate({"name": "p", "rules": [{"metric": CLIP, "roles": ["student"],
                                                              "max_worsening_vs_baseline": 0.0}]})
    assert calibrate.default_grid(POLICY) == calibrate.RELATIVE_GRID
    assert calibrate.default_grid(absolute) == calibrate.ABSOLUTE_GRID
    assert calibrate.with_tolerance(absolute, 2.0).rules[0].max_worsening_vs_baseline == 2.0
    assert calibrate.with_tolerance(POLICY, 0.1).rules[0].max_regression_vs_baseline == 0.1
    # the retrained student is 0.3 points worse: 0.25 points is too little (significant), 0.5 enough
    chosen, trade = calibrate.tune(absolute, [trial(s) for s in range(2)], [0.0, 0.25, 0.5], tmp_path)
    assert chosen == 0.5 and [counts["false alarm"] for _, counts, _ in trade] == [2, 2, 0]


def test_the_table_gives_wilson_intervals_beside_the_exact_ones():
    text = "\n".join(calibrate.table({"false alarm": [[]] * 60, "teacher-2step": [[CLIP]] * 60}))
    assert "| false alarm | 0 / 60 | 0.000 | ≤ 0.049 (one-sided) | [0.000, 0.060] |" in text
    assert "| teacher-2step | 60 / 60 | 1.000 | [0.94, 1.00] | [0.940, 1.000] |" in text


def test_the_null_statistic_of_an_equivalent_retraining_has_mean_0_and_sd_1(tmp_path):
    """An honest seed-level se: a retraining that differs from the baseline only by per-clip noise gives t with
    mean 0 and SD about 1 over trials; one that is worse on every clip moves the mean."""
    def equivalent(seed: int, shift: float) -> dict:
        rng = np.random.default_rng(seed)
        base = 30 + rng.normal(0, 3, 12)[PROMPTS] + rng.normal(0, 1, PROMPTS.size)
        d = doc({"student": base, "null": base - shift + rng.normal(0, 1, base.size)}, PROMPTS)
        d["calibration"] = {"trial": seed}
        return d

    same = calibrate.null_statistics(POLICY, [equivalent(s, 0.0) for s in range(40)], tmp_path)[CLIP]
    ts = np.array([r["t"] for r in same])
    assert len(ts) == 40 and abs(ts.mean()) < 0.5 and 0.7 < ts.std(ddof=1) < 1.4
    worse = calibrate.null_statistics(POLICY, [equivalent(s, 1.0) for s in range(40)], tmp_path)[CLIP]
    tw = np.array([r["t"] for r in worse])
    assert tw.mean() > 3  # 1 point worse on every clip against a seed-level se of about 0.2
    line = calibrate.spread_table({CLIP: same}, 0.05)[2]
    assert line.startswith(f"| {CLIP} | 40 | ") and line.endswith(" / 40 |")
    sd = float(line.split("|")[5].split()[0])
    assert sd == pytest.approx(ts.std(ddof=1), abs=0.006)


def test_kept_trials_travel_with_the_repository_and_restore_byte_for_byte(tmp_path):
    out, keep = tmp_path / "out" / "trials", tmp_path / "keep"
    out.mkdir(parents=True)
    for t in range(2):
        (out / f"trial-{t:03d}.json").write_text(calibrate.json.dumps(trial(t)))
    assert calibrate.sync_kept(out, keep) == (0, 2)  # an older run's trials are kept too
    packed = (keep / "trial-001.json.gz").read_bytes()
    calibrate.keep_trial(out / "trial-001.json", keep)
    assert (keep / "trial-001.json.gz").read_bytes() == packed  # no timestamp: a rerun changes nothing in git
    fresh = tmp_path / "new-machine" / "trials"  # an empty runs/: every kept trial comes back as it was
    assert calibrate.sync_kept(fresh, keep) == (2, 0)
    assert (fresh / "trial-000.json").read_bytes() == (out / "trial-000.json").read_bytes()
    (fresh / "trial-001.json").write_text("{}")  # a record in both is left alone: the protocol check judges it
    assert calibrate.sync_kept(fresh, keep) == (0, 0) and (fresh / "trial-001.json").read_text() == "{}"


def test_a_new_trial_with_other_weights_than_the_kept_ones_is_refused_before_it_is_written(tmp_path, monkeypatch):
    first = trial(0)
    first["models"]["student"]["checkpoint_hash"] = "aaaa"  # a restored trial, made with the first training
    (tmp_path / "trials").mkdir()
    (tmp_path / "trials" / "trial-000.json").write_text(calibrate.json.dumps(first))

    class Retrained:  # this machine's student came out with other weights
        items = ()

        def __init__(self, *a, **k):
            pass

        def run(self, specs):
            d = trial(1)
            d["models"]["student"]["checkpoint_hash"] = "bbbb"
            return d

    monkeypatch.setattr(calibrate, "CollapsingHarness", Retrained)
    monkeypatch.setattr(calibrate, "suite_prompts", lambda *a: [])
    monkeypatch.setattr(calibrate, "real_clips_for", lambda *a: None)
    args = calibrate.argparse.Namespace(student="teacher@4", null_student=None, below_steps=None, seeds=2, tune=1,
                                        prompts=None, out=tmp_path, cache=tmp_path / "cache", minutes=None,
                                        keep=tmp_path / "keep")
    with pytest.raises(SystemExit, match=r"trial-001.json: not the protocol of trial-000.json.*'aaaa'.*'bbbb'"):
        calibrate.run_trials(args, 2)
    assert not (tmp_path / "trials" / "trial-001.json").exists() and not (tmp_path / "keep").exists()
