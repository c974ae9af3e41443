"""Quality gate: check an `eval.json` against a policy of rules, optionally against a baseline `eval.json`.

    exit 0  every check passed (skipped checks do not fail a gate)
    exit 1  at least one check failed: a regression
    exit 2  the gate could not judge: a file missing, unreadable or not valid JSON, a schema other than
            "distill.eval/2" (the older "distill.eval/1" is refused by name: its FVD intervals and protocols are
            not comparable), an invalid policy, a rule naming a metric no model in the eval has (unless the rule
            says `optional: true`; the message names the closest known metrics), a required model or metric
            missing, no teacher for a teacher-relative rule, a malformed metric record (a non-finite value or
            ci95, or lo > hi: an infinite interval would forgive any value), a baseline made on another suite or
            protocol (other prompts, seeds, clip size, detector, ...: the message names each difference), an
            output folder that cannot be written, or any unexpected error. Always one line per cause, never a
            traceback.

A policy (YAML, e.g. configs/eval/gates/toyworld.yaml):

    name: toyworld
    description: "..."                       # optional
    rules:
      - metric: "clipsim[domain-clip]"       # exact metric name in eval.json
        models: "student-*"                  # fnmatch pattern (or a list of them) over model names; default "*"
        roles: [student]                     # optional: only models with one of these eval.json roles
        min_paired_diff_vs_teacher: -3.0     # exactly ONE bound per rule, of the kinds below
        interval_aware: false                # see below
        required: false                      # every matched model must have the metric (else: skip)
        optional: false                      # the metric may be absent from the whole eval (else: exit 2)
        name: "..."                          # optional label for reports

Rule kinds. The point check, and (after "|") what `interval_aware: true` does with the record's interval:

    min: b                          value >= b | fails only if the whole ci95 is below b (hi < b)
    max: b                          value <= b | fails only if the whole ci95 is above b (lo > b)
    min_paired_diff_vs_teacher: b   (model - teacher) on the same prompts and seeds >= b, in the metric's own
                                    units (points for clipsim) | fails only if the whole paired ci95 is below b
    max_paired_diff_vs_teacher: b   (model - teacher) <= b | fails only if the whole paired ci95 is above b
    min_ratio_to_teacher: r         value / teacher's value >= r (the teacher: the model with role "teacher" in
                                    the same eval.json; only for metrics with a true zero: warp error, speed)
                                    | the ratio's interval (t + d_lo)/t .. (t + d_hi)/t from the record's paired
                                    difference when present, else ci95 / t; fails only if it is all below r
    max_ratio_to_teacher: r         value / teacher's value <= r | likewise, fails only if all above r
    max_regression_vs_baseline: r   r >= 0: at most r (relative) worse than the same model in the baseline
                                    eval.json, the direction from the record's `higher_is_better`
                                    (higher-is-better: value >= base - r|base|; else value <= base + r|base|)
                                    | fails only if the whole ci95 is on the wrong side of that bound

interval_aware. It can only forgive, never be stricter than the point check: a check passes when the point passes
OR the interval reaches the bound ("not significantly worse"). Teacher and baseline values are taken as fixed. A
record without an interval (speed: min/median/max only) falls back to the point check, and the message says so.

required / optional. `required: true`: every matched model must have the metric in the current eval.json (and the
teacher too, for teacher-relative rules), and the pattern must match at least one model; a gap is an error (exit 2).
Otherwise a gap is a skipped check (with the record's own reason when it says why, e.g. VBench flicker skipped
for want of static clips). Independently of both, a metric that NO model in the eval has is a misspelt or stale
rule and an error (a typo must not turn the gate into a no-op), unless `optional: true`. Baseline gaps (no
baseline given, the model or metric not in it: a new model has no history) are always skips.

Outputs in out_dir: gate.json (every check, with its rule's meaning), gate.junit.xml (one testsuite, one testcase
per rule x model), gate.md (a summary line, then a table).
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import math
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distill.core.config import ConfigError, format_validation_errors
from distill.core.disk import DiskFull, writing
from distill.core.paths import check_output_dir
from distill.eval.schema import OLD_SCHEMAS, SCHEMA

GATE_SCHEMA = "distill.gate/1"
PASS, FAIL, ERROR = 0, 1, 2

BOUND_KINDS = ("min", "max", "min_paired_diff_vs_teacher", "max_paired_diff_vs_teacher", "min_ratio_to_teacher",
               "max_ratio_to_teacher", "max_regression_vs_baseline")
LOWER_BOUNDS = ("min", "min_paired_diff_vs_teacher", "min_ratio_to_teacher")  # observed >= bound


class GateError(ValueError):
    """An input the gate cannot judge (exit 2); the message names the file, and the model/metric/key."""


# ---------------------------------------------------------------------------------------------------- policy


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    metric: str = Field(min_length=1)
    models: list[str] = ["*"]
    roles: list[str] | None = None  # and only models whose eval.json role is one of these (student, baseline, ...)
    min: float | None = None
    max: float | None = None
    min_paired_diff_vs_teacher: float | None = None
    max_paired_diff_vs_teacher: float | None = None
    min_ratio_to_teacher: float | None = Field(None, gt=0)
    max_ratio_to_teacher: float | None = Field(None, gt=0)
    max_regression_vs_baseline: float | None = Field(None, ge=0)
    interval_aware: bool = False
    required: bool = False
    optional: bool = False
    name: str | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _one_pattern_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _exactly_one_bound(self):
        given = [k for k in BOUND_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one bound of {', '.join(BOUND_KINDS)}; got "
                             f"{', '.join(given) if given else 'none'} (write two rules for a range)")
        if self.required and self.optional:
            raise ValueError("a rule cannot be both required (every model must have the metric) and optional "
                             "(the metric may be absent)")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in BOUND_KINDS if getattr(self, k) is not None)

    @property
    def limit(self) -> float:
        return getattr(self, self.kind)

    def describe(self) -> str:
        if self.name:
            return self.name
        text = {
            "min": f">= {self.limit:g}",
            "max": f"<= {self.limit:g}",
            "min_paired_diff_vs_teacher": f"- teacher >= {self.limit:g} (paired)",
            "max_paired_diff_vs_teacher": f"- teacher <= {self.limit:g} (paired)",
            "min_ratio_to_teacher": f">= {self.limit:g} x teacher",
            "max_ratio_to_teacher": f"<= {self.limit:g} x teacher",
            "max_regression_vs_baseline": f"regresses <= {self.limit:.0%} vs baseline",
        }[self.kind]
        return f"{self.metric} {text}" + (" (interval-aware)" if self.interval_aware else "")

    def meaning(self) -> str:
        """What passing this rule means, in words (written next to every check in gate.json and gate.md)."""
        b = f"{self.limit:g}"
        point, side = {
            "min": (f"the value is at least {b}", "below"),
            "max": (f"the value is at most {b}", "above"),
            "min_paired_diff_vs_teacher": (f"model minus teacher on the same prompts and seeds is at least {b}",
                                           "below"),
            "max_paired_diff_vs_teacher": (f"model minus teacher on the same prompts and seeds is at most {b}",
                                           "above"),
            "min_ratio_to_teacher": (f"model / teacher is at least {b}", "below"),
            "max_ratio_to_teacher": (f"model / teacher is at most {b}", "above"),
            "max_regression_vs_baseline": (f"at most {self.limit:.0%} worse than the baseline's value", "beyond"),
        }[self.kind]
        if not self.interval_aware:
            return f"point check: passes when {point}"
        return (f"interval-aware: passes when {point}, or when the 95% interval reaches the bound; fails only when "
                f"the point and the whole interval lie {side} it (never stricter than the point check)")

class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(min_length=1)
    description: str = ""
    rules: list[Rule] = Field(min_length=1)


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    if not path.is_file():
        raise GateError(f"policy file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise GateError(f"{path}: not a readable YAML policy: {err}") from None
    if not isinstance(data, dict):
        raise GateError(f"{path}: the top level must be a mapping with 'name' and 'rules', "
                        f"not a {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        raise GateError(format_validation_errors(err, str(path))) from None


# --------------------------------------------------------------------------------------------- eval.json input


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class Metric:
    """The parts of one eval.json metric record the gate reads."""

    value: float
    ci95: tuple[float, float] | None
    higher_is_better: bool | None
    paired_diff: float | None
    paired_diff_ci95: tuple[float, float] | None


@dataclass(frozen=True)
class EvalDoc:
    path: str
    models: dict  # model name -> model entry (a dict); unknown keys are kept and ignored
    suite: dict | None = None  # what the eval ran on (prompts, seeds, clip size, detector, ...): harness._suite_record

    def teacher(self) -> str | None:
        """The model with role "teacher"; without any roles in the file, the one model named teacher*."""
        by_role = [m for m, e in self.models.items() if e.get("role") == "teacher"]
        if len(by_role) > 1:
            raise GateError(f"{self.path}: {len(by_role)} models have role 'teacher' ({', '.join(by_role)}); "
                            "ratio rules need exactly one")
        if by_role:
            return by_role[0]
        if any("role" in e for e in self.models.values()):
            return None
        by_name = [m for m in self.models if m.startswith("teacher")]
        return by_name[0] if len(by_name) == 1 else None

    def metric(self, model: str, metric: str) -> Metric | None:
        """The record, or None when the model, the metric or its value (null: not computable) is absent."""
        entry = self.models.get(model)
        if entry is None:
            return None
        rec = (entry.get("metrics") or {}).get(metric)
        if rec is None:
            return None
        where = f"{self.path}: model {model!r} metric {metric!r}"
        if not isinstance(rec, dict):
            raise GateError(f"{where}: the record must be a mapping, not a {type(rec).__name__}")
        value = rec.get("value")
        if value is None:
            return None
        if not _is_number(value) or not math.isfinite(value):
            raise GateError(f"{where}: 'value' must be a finite number, got {value!r}")
        hib = rec.get("higher_is_better")
        if hib is not None and not isinstance(hib, bool):
            raise GateError(f"{where}: 'higher_is_better' must be true or false, got {hib!r}")
        paired = rec.get("paired_diff_vs_teacher")
        paired_value = paired_ci = None
        if paired is not None:
            if not isinstance(paired, dict):
                raise GateError(f"{where}: 'paired_diff_vs_teacher' must be a mapping, not a {type(paired).__name__}")
            paired_value = paired.get("value")
            if paired_value is not None and (not _is_number(paired_value) or not math.isfinite(paired_value)):
                raise GateError(f"{where}: 'paired_diff_vs_teacher.value' must be a finite number, "
                                f"got {paired_value!r}")
            paired_ci = _interval(paired.get("ci95"), f"{where} paired_diff_vs_teacher")
        return Metric(float(value), _interval(rec.get("ci95"), where), hib,
                      None if paired_value is None else float(paired_value), paired_ci)

    def why_absent(self, model: str, metric: str) -> str:
        """The record's own reason for having no value (e.g. "skipped": no static clips), or ''."""
        rec = ((self.models.get(model) or {}).get("metrics") or {}).get(metric)
        reason = rec.get("skipped") if isinstance(rec, dict) else None
        return f" ({reason})" if reason else ""

    def metric_names(self) -> set[str]:
        return {k for e in self.models.values() for k in (e.get("metrics") or {})}


def _interval(ci, where: str) -> tuple[float, float] | None:
    if ci is None:
        return None
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2):
        raise GateError(f"{where}: 'ci95' must be [lo, hi], got {ci!r}")
    if any(c is None for c in ci):  # an interval that could not be computed (NaN written as null)
        return None
    if not all(_is_number(c) for c in ci):
        raise GateError(f"{where}: 'ci95' must hold numbers, got {ci!r}")
    # An infinite interval "reaches" every bound, so an interval-aware rule would forgive any value: it is a
    # broken record, never evidence.
    if not all(math.isfinite(c) for c in ci):
        raise GateError(f"{where}: 'ci95' {list(ci)!r} is not finite; a malformed record (an interval that could "
                        f"not be computed is written as null)")
    if ci[0] > ci[1]:
        raise GateError(f"{where}: 'ci95' {list(ci)!r} has lo > hi; a malformed record")
    return (float(ci[0]), float(ci[1]))


def load_eval(path: str | Path, what: str = "eval.json") -> EvalDoc:
    path = Path(path)
    if not path.is_file():
        raise GateError(f"{what} file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GateError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise GateError(f"{path}: the top level must be an object, not a {type(data).__name__}")
    schema = data.get("schema")
    if schema in OLD_SCHEMAS:
        raise GateError(f"{path}: schema {schema!r} is no longer read by this gate, which reads {SCHEMA!r}: "
                        f"{OLD_SCHEMAS[schema]}")
    if schema != SCHEMA:
        raise GateError(f"{path}: schema is {schema!r}; this gate reads {SCHEMA!r}")
    models = data.get("models")
    if not isinstance(models, dict):
        raise GateError(f"{path}: 'models' must be an object of model name -> entry")
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise GateError(f"{path}: model {name!r} must be an object, not a {type(entry).__name__}")
        if not isinstance(entry.get("metrics", {}), dict):
            raise GateError(f"{path}: model {name!r}: 'metrics' must be an object of metric name -> record")
    suite = data.get("suite")
    if suite is not None and not isinstance(suite, dict):
        raise GateError(f"{path}: 'suite' must be an object, not a {type(suite).__name__}")
    return EvalDoc(str(path), models, suite)


# What makes two evals' numbers comparable: the clips (prompts, seeds, size, length, fps), what scores them (the
# detector and its frame protocol, the CLIP backend, the flow backend, the static filter) and how diversity is
# sampled. Keys of the harness's `suite` record; a difference in any of them makes a baseline another experiment.
SUITE_KEYS = ("prompts", "seeds", "n_clips", "frames", "height", "width", "fps", "real", "detector", "clip_backend",
              "clip", "flow", "static_prompts", "static_filter", "diversity", "noise_floor", "ranks_per_clip")


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def suite_differences(current: EvalDoc, baseline: EvalDoc) -> list[str]:
    """What differs between the suites the two evals ran on (empty: the same suite and protocol)."""
    a, b = current.suite or {}, baseline.suite or {}
    out = []
    for key in SUITE_KEYS:
        if key not in a and key not in b:
            continue
        va, vb = a.get(key, "(not recorded)"), b.get(key, "(not recorded)")
        if va == vb:
            continue
        if isinstance(va, list) and isinstance(vb, list):
            first = next((i for i, (x, y) in enumerate(zip(va, vb)) if x != y), min(len(va), len(vb)))
            detail = (f"{len(vb)} in the baseline vs {len(va)} here; first difference at [{first}]: "
                      f"{_short(vb[first]) if first < len(vb) else '(none)'} vs "
                      f"{_short(va[first]) if first < len(va) else '(none)'}")
        elif isinstance(va, dict) and isinstance(vb, dict):
            keys = sorted(k for k in {*va, *vb} if va.get(k) != vb.get(k))
            detail = "; ".join(f"{k}: {_short(vb.get(k))} in the baseline vs {_short(va.get(k))} here" for k in keys)
        else:
            detail = f"{_short(vb)} in the baseline vs {_short(va)} here"
        out.append(f"{key} ({detail})")
    return out


def check_same_suite(current: EvalDoc, baseline: EvalDoc) -> None:
    """Refuse a baseline from another suite or protocol: its numbers are another experiment's, and a regression
    rule against them would pass or fail by accident."""
    if baseline.suite is None or current.suite is None:
        which = baseline.path if baseline.suite is None else current.path
        raise GateError(f"{which}: no 'suite' record, so the baseline cannot be shown to come from the same "
                        f"prompts, seeds and protocol; re-run `distill eval` to write it")
    diffs = suite_differences(current, baseline)
    if diffs:
        raise GateError(f"baseline {baseline.path} was made on another suite than {current.path}: "
                        f"{'; '.join(diffs)}; re-run the baseline on this suite")


# ------------------------------------------------------------------------------------------------------ checks


Status = Literal["pass", "fail", "skip", "error"]


@dataclass
class Check:
    rule: str  # "rules[i]: <description>"
    model: str
    metric: str
    kind: str
    status: Status
    observed: float | None = None
    bound: float | None = None
    interval: tuple[float, float] | None = None
    message: str = ""
    meaning: str = ""

    @property
    def passed(self) -> bool | None:
        return {"pass": True, "fail": False}.get(self.status)

    def to_json(self) -> dict:
        d = asdict(self)
        d["interval"] = list(self.interval) if self.interval else None
        d["passed"] = self.passed
        return d


@dataclass
class GateResult:
    policy: str
    current: str
    baseline: str | None
    checks: list[Check] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # errors before any check could run (files, policy)

    def count(self, status: Status) -> int:
        return sum(c.status == status for c in self.checks)

    @property
    def exit_code(self) -> int:
        if self.errors or self.count("error"):
            return ERROR
        return FAIL if self.count("fail") else PASS

    @property
    def verdict(self) -> str:
        return {PASS: "PASS", FAIL: "FAIL", ERROR: "ERROR"}[self.exit_code]

    def summary(self) -> str:
        parts = [f"{self.count('pass')} passed", f"{self.count('fail')} failed", f"{self.count('skip')} skipped",
                 f"{self.count('error') + len(self.errors)} errors"]
        return f"gate {self.policy}: {self.verdict} ({', '.join(parts)})"

    def to_json(self) -> dict:
        return {"schema": GATE_SCHEMA, "policy": self.policy, "current": self.current, "baseline": self.baseline,
                "verdict": self.verdict, "exit_code": self.exit_code,
                "counts": {s: self.count(s) for s in ("pass", "fail", "skip", "error")},
                "errors": self.errors, "checks": [c.to_json() for c in self.checks]}


def _compare(observed: float, interval, bound: float, lower: bool, interval_aware: bool) -> tuple[bool, str]:
    """Is `observed` on the right side of `bound` (lower: observed >= bound)? Interval-aware, the interval may
    rescue a failing point but never fail a passing one (see the module doc)."""
    op = ">=" if lower else "<="
    point_ok = observed >= bound if lower else observed <= bound
    if interval_aware and interval is not None:
        lo, hi = interval
        reach_ok = hi >= bound if lower else lo <= bound
        if point_ok:
            return True, f"{observed:.4g} {op} {bound:.4g} (interval-aware; ci95 [{lo:.4g}, {hi:.4g}])"
        if reach_ok:
            edge = f"ci95 hi {hi:.4g}" if lower else f"ci95 lo {lo:.4g}"
            return True, f"{edge} {op} {bound:.4g} (interval-aware; value {observed:.4g} is not)"
        return False, (f"{observed:.4g} and its whole ci95 [{lo:.4g}, {hi:.4g}] are "
                       f"{'below' if lower else 'above'} {bound:.4g}")
    note = " (no ci95 in the record: point check)" if interval_aware else ""
    return point_ok, (f"{observed:.4g} {op} {bound:.4g}{note}" if point_ok else
                      f"{observed:.4g} is not {op} {bound:.4g}{note}")


def _finish(check: Check, observed, interval, bound, lower: bool, rule: Rule, context: str = "") -> Check:
    ok, msg = _compare(observed, interval, bound, lower, rule.interval_aware)
    check.status, check.observed, check.bound, check.interval = ("pass" if ok else "fail"), observed, bound, interval
    check.message = msg + context
    return check


def _gap(check: Check, rule: Rule, message: str, required: bool | None = None) -> Check:
    """A missing input: an error if the rule is required (or `required` says so), else a skip."""
    check.status = "error" if (rule.required if required is None else required) else "skip"
    check.message = message
    return check


def check_absolute(rule: Rule, model: str, cur: EvalDoc, check: Check) -> Check:
    m = cur.metric(model, rule.metric)
    if m is None:
        return _gap(check, rule, f"{cur.path}: model {model!r} has no metric {rule.metric!r}"
                                 f"{cur.why_absent(model, rule.metric)}")
    return _finish(check, m.value, m.ci95, rule.limit, rule.kind == "min", rule)


def check_paired_diff_vs_teacher(rule: Rule, model: str, cur: EvalDoc, check: Check) -> Check:
    m = cur.metric(model, rule.metric)
    if m is None:
        return _gap(check, rule, f"{cur.path}: model {model!r} has no metric {rule.metric!r}"
                                 f"{cur.why_absent(model, rule.metric)}")
    if m.paired_diff is None:
        return _gap(check, rule, f"{cur.path}: model {model!r} metric {rule.metric!r} has no "
                                 "'paired_diff_vs_teacher' (is it the teacher, or a set metric?)")
    return _finish(check, m.paired_diff, m.paired_diff_ci95, rule.limit,
                   rule.kind == "min_paired_diff_vs_teacher", rule, f"; {model} - teacher, value {m.value:.4g}")


def check_ratio_to_teacher(rule: Rule, model: str, cur: EvalDoc, check: Check) -> Check:
    teacher = cur.teacher()
    if teacher is None:
        return _gap(check, rule, f"{cur.path}: no model with role 'teacher' for the ratio rule on "
                                 f"{rule.metric!r}", required=True)
    m = cur.metric(model, rule.metric)
    if m is None:
        return _gap(check, rule, f"{cur.path}: model {model!r} has no metric {rule.metric!r}"
                                 f"{cur.why_absent(model, rule.metric)}")
    t = cur.metric(teacher, rule.metric)
    if t is None:
        return _gap(check, rule, f"{cur.path}: teacher {teacher!r} has no metric {rule.metric!r}")
    if t.value <= 0:
        return _gap(check, rule, f"{cur.path}: teacher {teacher!r} metric {rule.metric!r} is {t.value:g}; a ratio "
                                 "needs a positive teacher value", required=True)
    if m.paired_diff_ci95 is not None:
        interval = ((t.value + m.paired_diff_ci95[0]) / t.value, (t.value + m.paired_diff_ci95[1]) / t.value)
    elif m.ci95 is not None:
        interval = (m.ci95[0] / t.value, m.ci95[1] / t.value)
    else:
        interval = None
    context = f"; {model} {m.value:.4g} / {teacher} {t.value:.4g}"
    return _finish(check, m.value / t.value, interval, rule.limit, rule.kind in LOWER_BOUNDS, rule, context)


def check_regression_vs_baseline(rule: Rule, model: str, cur: EvalDoc, base: EvalDoc | None,
                                 check: Check) -> Check:
    m = cur.metric(model, rule.metric)
    if m is None:
        return _gap(check, rule, f"{cur.path}: model {model!r} has no metric {rule.metric!r}"
                                 f"{cur.why_absent(model, rule.metric)}")
    if base is None:
        return _gap(check, rule, "no baseline eval.json given", required=False)
    b = base.metric(model, rule.metric)
    if b is None:
        return _gap(check, rule, f"{base.path}: baseline has no {rule.metric!r} for model {model!r}",
                    required=False)
    higher = m.higher_is_better if m.higher_is_better is not None else b.higher_is_better
    if higher is None:
        return _gap(check, rule, f"{cur.path}: model {model!r} metric {rule.metric!r} has no 'higher_is_better'; "
                                 "a regression rule needs the direction", required=True)
    slack = rule.limit * abs(b.value)
    bound = b.value - slack if higher else b.value + slack
    return _finish(check, m.value, m.ci95, bound, higher, rule, f"; baseline {b.value:.4g}")


def unknown_metric_message(rule: Rule, index: int, current: EvalDoc) -> str:
    known = sorted(current.metric_names())
    close = difflib.get_close_matches(rule.metric, known, n=3, cutoff=0.5)
    hint = (f"closest known: {', '.join(close)}" if close else
            f"known metrics: {', '.join(known[:8])}{', ...' if len(known) > 8 else ''}")
    return (f"rules[{index}] ({rule.describe()}): no model in {current.path} has metric {rule.metric!r}; {hint} "
            "(a rule on a metric that may be absent says `optional: true`)")


def evaluate(policy: Policy, current: EvalDoc, baseline: EvalDoc | None) -> GateResult:
    result = GateResult(policy=policy.name, current=current.path, baseline=baseline.path if baseline else None)
    known = current.metric_names()
    for i, rule in enumerate(policy.rules):
        label = f"rules[{i}]: {rule.describe()}"
        if rule.metric not in known:
            check = Check(label, ",".join(rule.models), rule.metric, rule.kind, "skip", meaning=rule.meaning())
            check.status = "skip" if rule.optional else "error"
            check.message = (f"{current.path}: no model has {rule.metric!r} (optional rule)" if rule.optional
                             else unknown_metric_message(rule, i, current))
            result.checks.append(check)
            continue
        models = [m for m in current.models if any(fnmatch.fnmatchcase(m, p) for p in rule.models)
                  and (rule.roles is None or current.models[m].get("role") in rule.roles)]
        if not models:
            check = Check(label, ",".join(rule.models), rule.metric, rule.kind, "skip", meaning=rule.meaning())
            result.checks.append(_gap(check, rule, f"{current.path}: no model matches {rule.models} "
                                                   f"(models: {', '.join(current.models) or 'none'})"))
            continue
        for model in models:
            check = Check(label, model, rule.metric, rule.kind, "skip", meaning=rule.meaning())
            try:
                if rule.kind in ("min", "max"):
                    check_absolute(rule, model, current, check)
                elif rule.kind in ("min_paired_diff_vs_teacher", "max_paired_diff_vs_teacher"):
                    check_paired_diff_vs_teacher(rule, model, current, check)
                elif rule.kind in ("min_ratio_to_teacher", "max_ratio_to_teacher"):
                    check_ratio_to_teacher(rule, model, current, check)
                else:
                    check_regression_vs_baseline(rule, model, current, baseline, check)
            except GateError as err:  # a malformed record: this check cannot be judged
                check.status, check.message = "error", str(err)
            result.checks.append(check)
    return result


# ----------------------------------------------------------------------------------------------------- reports


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def write_json(result: GateResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_json(), indent=2) + "\n")


def write_junit(result: GateResult, path: Path) -> None:
    errors = result.count("error") + len(result.errors)
    tests = len(result.checks) + len(result.errors)
    root = ET.Element("testsuites", name="distill.gate", tests=str(tests), failures=str(result.count("fail")),
                      errors=str(errors), skipped=str(result.count("skip")))
    suite = ET.SubElement(root, "testsuite", name=f"gate.{result.policy}", tests=str(tests),
                          failures=str(result.count("fail")), errors=str(errors), skipped=str(result.count("skip")))
    for message in result.errors:
        case = ET.SubElement(suite, "testcase", classname=f"gate.{result.policy}", name="inputs")
        ET.SubElement(case, "error", message=message, type="GateError").text = message
    for c in result.checks:
        case = ET.SubElement(suite, "testcase", classname=f"gate.{result.policy}.{c.model}", name=c.rule)
        detail = (f"model={c.model} metric={c.metric} observed={_fmt(c.observed)} bound={_fmt(c.bound)} "
                  f"interval={list(c.interval) if c.interval else None}\n{c.message}")
        if c.status == "fail":
            ET.SubElement(case, "failure", message=c.message, type="regression").text = detail
        elif c.status == "error":
            ET.SubElement(case, "error", message=c.message, type="GateError").text = detail
        elif c.status == "skip":
            ET.SubElement(case, "skipped", message=c.message)
        else:
            ET.SubElement(case, "system-out").text = detail
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_markdown(result: GateResult, path: Path) -> None:
    lines = [f"# Gate `{result.policy}`: **{result.verdict}**", "", result.summary(), "",
             f"- current: `{result.current}`", f"- baseline: `{result.baseline or 'none'}`", ""]
    lines += [f"- ERROR: {_md_cell(e)}" for e in result.errors]
    if result.checks:
        lines += ["| status | rule | model | metric | observed | bound | message | meaning |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in result.checks:
            lines.append(f"| {c.status.upper()} | {_md_cell(c.rule)} | `{_md_cell(c.model)}` | `{_md_cell(c.metric)}` "
                         f"| {_fmt(c.observed)} | {_fmt(c.bound)} | {_md_cell(c.message)} | {_md_cell(c.meaning)} |")
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------------- run_gate


def gate(current: str | Path, baseline: str | Path | None, policy: str | Path) -> GateResult:
    """Load the inputs and evaluate; input errors become `result.errors` (exit 2) instead of raising, and so does
    anything unexpected (the gate then cannot judge: exit 2, never 1)."""
    name = Path(policy).stem
    result = GateResult(policy=name, current=str(current), baseline=None if baseline is None else str(baseline))
    try:
        pol = load_policy(policy)
        cur = load_eval(current, "current eval.json")
        base = None if baseline is None else load_eval(baseline, "baseline eval.json")
        if base is not None:
            check_same_suite(cur, base)
        return evaluate(pol, cur, base)
    except GateError as err:
        result.errors.append(str(err))
    except Exception as err:  # a bug or an input nobody foresaw: still "cannot judge", in one line
        result.errors.append(f"unexpected {type(err).__name__} while gating {current}: {err}")
    return result


def check_out_dir(out_dir: str | Path) -> Path:
    """The folder for gate.* exists or can be made, and takes new files; GateError (one line) otherwise."""
    out = Path(out_dir)
    try:
        check_output_dir(out)
        out.mkdir(parents=True, exist_ok=True)
    except (ConfigError, OSError) as err:
        raise GateError(str(err) if isinstance(err, ConfigError) else
                        f"--out {str(out)!r} cannot be written: {err.strerror or err}") from None
    return out


def run_gate(current: str | Path, baseline: str | Path | None, policy: str | Path,
             out_dir: str | Path, quiet: bool = False) -> int:
    """Gate `current` by `policy` (and `baseline`), write gate.json, gate.junit.xml and gate.md into `out_dir`,
    print a summary with every failure and error to stderr, and return the exit code (0 pass, 1 fail, 2 error).
    Never raises: an output folder that cannot be written is one line on stderr and exit 2."""
    try:
        out = check_out_dir(out_dir)
    except GateError as err:
        print(f"gate: error: {err}", file=sys.stderr)
        return ERROR
    result = gate(current, baseline, policy)
    try:
        for writer, name in ((write_json, "gate.json"), (write_junit, "gate.junit.xml"), (write_markdown, "gate.md")):
            tmp = out / f".tmp-{name}"  # whole or not at all: CI may read the reports of a failed write
            with writing(tmp, f"the gate's {name}"):
                writer(result, tmp)
            os.replace(tmp, out / name)
    except (OSError, DiskFull) as err:
        cause = str(err) if isinstance(err, DiskFull) else f"writing the reports into {str(out)!r} failed: " \
                                                           f"{err.strerror or err}"
        print(f"gate: error: {cause}", file=sys.stderr)
        return ERROR
    if not quiet:
        print(result.summary(), file=sys.stderr)
        for e in result.errors:
            print(f"  ERROR {e}", file=sys.stderr)
        for c in result.checks:
            if c.status in ("fail", "error"):
                print(f"  {c.status.upper()} {c.rule} [{c.model}]: {c.message}", file=sys.stderr)
        print(f"  reports: {out / 'gate.md'}, {out / 'gate.json'}, {out / 'gate.junit.xml'}", file=sys.stderr)
    return result.exit_code
