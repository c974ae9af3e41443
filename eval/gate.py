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
    alpha: 0.05                              # optional: family-wise rate of the paired regression tests
    correction: holm                         # optional: holm (default) | none
    rules:
      - metric: "clipsim[domain-clip]"       # exact metric name in eval.json
        models: "student-*"                  # fnmatch pattern (or a list of them) over model names; default "*"
        roles: [student]                     # optional: only models with one of these eval.json roles
        min_paired_diff_vs_teacher: -3.0     # exactly ONE bound per rule, of the kinds below
        interval_aware: false                # see below
        baseline_test: paired                # vs-baseline rules only: paired (default) | population
        required: false                      # every matched model must have the metric (else: skip)
        optional: false                      # the metric (or the models) may be absent from the whole eval
                                             # (else: exit 2)
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
                                    (higher-is-better: value >= base - r|base|; else value <= base + r|base|).
                                    `baseline_test: paired` (the default): the paired fixed-suite test below;
                                    `baseline_test: population`: the point check | fails only if the whole
                                    ci95 (prompts as a sample: the scorecard's view) is beyond that bound
    max_worsening_vs_baseline: d    d >= 0: at most d worse, in the metric's own units (value <= base + d, or
                                    >= base - d): for a distance near its noise floor (FVD vs the teacher of a
                                    good student), where r|base| shrinks below the seed noise as the student
                                    gets better. Tested as max_regression_vs_baseline is (baseline_test likewise).

The paired fixed-suite test (CI's question: did this change make the model worse on OUR suite?). The baseline must
come from the same prompts and seeds (else exit 2, naming the baseline and each difference). Per clip, current
minus baseline (eval.json's `per_clip`: each clip's value for per-clip metrics; for FVD/KVD the statistic with each
clip left out in turn), so what the two runs share cancels. Its standard error holds the prompts fixed and counts
only seed-to-seed noise: the delete-one jackknife within prompts (`seed_level_se`; for a mean, exactly the
within-prompt standard error). One-sided test of "worse by more than r|base|"; every paired check of the gate
(rules x models) is then decided together by Holm's step-down procedure at the policy's family-wise `alpha`
(default 0.05; `correction: none` tests each at alpha). An unchanged model gives identical clips and passes. A
timing has no per-clip values and takes the population view; so does a pair of evals that both predate per-clip
values (said in the message); one with them and one without is an error naming the file that lacks them.
`interval_aware` does not apply to a paired check.

interval_aware. It can only forgive, never be stricter than the point check: a check passes when the point passes
OR the interval reaches the bound ("not significantly worse"). Teacher and baseline values are taken as fixed. A
record without an interval (speed: min/median/max only) falls back to the point check, and the message says so.

required / optional. `required: true`: every matched model must have the metric in the current eval.json (and the
teacher too, for teacher-relative rules), and the pattern must match at least one model; a gap is an error (exit 2).
Otherwise a gap is a skipped check (with the record's own reason when it says why, e.g. VBench flicker skipped
for want of static clips). Independently of both, a metric that NO model in the eval has is a misspelt or stale
rule and an error (a typo must not turn the gate into a no-op), unless `optional: true`; so is a `models` pattern
that matches no model name in the eval (roles that leave no model are a gap, as above). Baseline gaps (no
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

import numpy as np
import yaml
from scipy.special import stdtr
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distill.core.config import ConfigError, format_validation_errors, parse_yaml, yaml_error_line
from distill.core.disk import DiskFull, writing
from distill.core.paths import check_output_dir
from distill.eval.schema import OLD_SCHEMAS, SCHEMA
from distill.teachers.retired import retired_note

GATE_SCHEMA = "distill.gate/1"
PASS, FAIL, ERROR = 0, 1, 2

BOUND_KINDS = ("min", "max", "min_paired_diff_vs_teacher", "max_paired_diff_vs_teacher", "min_ratio_to_teacher",
               "max_ratio_to_teacher", "max_regression_vs_baseline", "max_worsening_vs_baseline")
BASELINE_KINDS = ("max_regression_vs_baseline", "max_worsening_vs_baseline")  # against the same model's baseline
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
    max_worsening_vs_baseline: float | None = Field(None, ge=0)
    baseline_test: Literal["paired", "population"] = "paired"  # vs-baseline rules only; see the module doc
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
        if self.baseline_test != "paired" and self.kind not in BASELINE_KINDS:
            raise ValueError(f"baseline_test applies to {' and '.join(BASELINE_KINDS)} rules only")
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

    def slack(self, baseline: float) -> float:
        """How much worse than the baseline's value a vs-baseline rule allows, in the metric's units."""
        return self.limit * abs(baseline) if self.kind == "max_regression_vs_baseline" else self.limit

    def _allowed(self) -> str:
        return (f"{self.limit:.0%}" if self.kind == "max_regression_vs_baseline" else f"{self.limit:g}") + " worse"

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
            "max_worsening_vs_baseline": f"at most {self.limit:g} worse than baseline",
        }[self.kind] + (" (population view)" if self.baseline_test == "population" else "")
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
            "max_worsening_vs_baseline": (f"at most {self.limit:g} (the metric's units) worse than the baseline's "
                                          "value", "beyond"),
        }[self.kind]
        if self.kind in BASELINE_KINDS and self.baseline_test == "paired":
            return (f"paired fixed-suite test: fails when the model is more than {self._allowed()} than the "
                    "baseline's value on the same prompts and seeds, significantly given seed-to-seed noise alone "
                    "(one-sided, Holm-corrected over every paired check of this gate); an unchanged model passes")
        population = "population view (prompts as a sample of prompts like these): " \
            if self.kind in BASELINE_KINDS else ""
        if not self.interval_aware:
            return f"{population}point check: passes when {point}"
        return (f"{population}interval-aware: passes when {point}, or when the 95% interval reaches the bound; fails only when "
                f"the point and the whole interval lie {side} it (never stricter than the point check)")

class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(min_length=1)
    description: str = ""
    alpha: float = Field(0.05, gt=0, lt=0.5)  # family-wise false-failure rate of the paired regression tests
    correction: Literal["holm", "none"] = "holm"  # across the paired checks (rules x models); "none": each at alpha
    rules: list[Rule] = Field(min_length=1)


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    if not path.is_file():
        raise GateError(f"policy file {str(path)!r} does not exist")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise GateError(f"{path}: not a readable YAML policy: {yaml_error_line(err)}") from None
    except (OSError, UnicodeDecodeError) as err:
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
    level: str | None = None  # "clip", "set", "prompt", "timing" (harness records say; older ones may not)


@dataclass(frozen=True)
class EvalDoc:
    path: str
    models: dict  # model name -> model entry (a dict); unknown keys are kept and ignored
    suite: dict | None = None  # what the eval ran on (prompts, seeds, clip size, detector, ...): harness._suite_record
    per_clip: dict | None = None  # harness per-clip values, for the paired test (absent in evals made before them)

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
        level = rec.get("level")
        return Metric(float(value), _interval(rec.get("ci95"), where), hib,
                      None if paired_value is None else float(paired_value), paired_ci,
                      level if isinstance(level, str) else None)

    def why_absent(self, model: str, metric: str) -> str:
        """The record's own reason for having no value (e.g. "skipped": no static clips), or ''."""
        rec = ((self.models.get(model) or {}).get("metrics") or {}).get(metric)
        reason = rec.get("skipped") if isinstance(rec, dict) else None
        return f" ({reason})" if reason else ""

    def metric_names(self) -> set[str]:
        return {k for e in self.models.values() for k in (e.get("metrics") or {})}

    def prompt_of_clip(self) -> np.ndarray:
        """Each clip's prompt index (the strata of the seed-level standard error), from the per-clip section."""
        ids = (self.per_clip or {}).get("prompt_of_clip")
        if not (isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
            raise GateError(f"{self.path}: 'per_clip.prompt_of_clip' must be a non-empty list of prompt indices, "
                            f"got {_short(ids)}")
        return np.asarray(ids)

    def clip_data(self, model: str, metric: str) -> tuple[str, np.ndarray] | None:
        """("values", per-clip values, NaN where a clip is not scored) for a per-clip metric, or ("leave_one_out",
        the statistic with each clip left out in turn) for a set metric; None when the eval has none for it."""
        entry = ((self.per_clip or {}).get("models") or {}).get(model, {}).get(metric)
        if entry is None:
            return None
        where = f"{self.path}: per_clip model {model!r} metric {metric!r}"
        kinds = [k for k in ("values", "leave_one_out") if isinstance(entry, dict) and k in entry]
        if len(kinds) != 1:
            raise GateError(f"{where}: must be a mapping with one of 'values' or 'leave_one_out'")
        raw = entry[kinds[0]]
        n = len(self.prompt_of_clip())
        if not (isinstance(raw, list) and len(raw) == n and all(v is None or _is_number(v) for v in raw)):
            raise GateError(f"{where}: {kinds[0]!r} must be a list of {n} numbers (one per clip; null where a clip "
                            f"is not scored), got {_short(raw)}")
        arr = np.array([np.nan if v is None else v for v in raw], dtype=np.float64)
        if np.isinf(arr).any() or (kinds[0] == "leave_one_out" and np.isnan(arr).any()):
            raise GateError(f"{where}: {kinds[0]!r} holds non-finite numbers; a malformed record")
        return kinds[0], arr


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
    per_clip = data.get("per_clip")
    if per_clip is not None and not (isinstance(per_clip, dict) and isinstance(per_clip.get("models"), dict)):
        raise GateError(f"{path}: 'per_clip' must be an object with 'prompt_of_clip' and 'models'")
    return EvalDoc(str(path), models, suite, per_clip)


# What makes two evals' numbers comparable: the clips (prompts, seeds, size, length, fps, the first images of an
# image-to-video suite, by their pixels' hash), what scores them (the
# detector and its frame protocol, the CLIP backend, the flow backend, the static filter) and how diversity is
# sampled. Keys of the harness's `suite` record; a difference in any of them makes a baseline another experiment.
SUITE_KEYS = ("prompts", "seeds", "n_clips", "frames", "height", "width", "fps", "real", "detector", "clip_backend",
              "clip", "flow", "static_prompts", "static_filter", "diversity", "noise_floor", "ranks_per_clip", "jedi",
              "first_images")


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
    check_same_teacher(current, baseline)


def check_same_teacher(current: EvalDoc, baseline: EvalDoc) -> None:
    """Refuse a baseline scored against other teacher weights (a retrained built-in teacher, say): every
    vs-teacher number in it measures distance to another model, and its students were distilled from it."""
    hashes = []
    for doc in (current, baseline):
        name = doc.teacher()
        hashes.append((name, (doc.models.get(name) or {}).get("checkpoint_hash") if name else None))
    (cur_name, cur_hash), (base_name, base_hash) = hashes
    if cur_hash and base_hash and cur_hash != base_hash:
        raise GateError(f"baseline {baseline.path} was scored against teacher {base_name!r} with weights hash "
                        f"{base_hash}{retired_note(base_hash)}, but {current.path}'s teacher {cur_name!r} hashes "
                        f"{cur_hash} (the teacher's weights changed); re-run the baseline with this teacher")


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
    test: str | None = None  # vs-baseline rules: "paired" (fixed suite) or "population"
    paired: dict | None = None  # the paired test: diff, se, df, se_kind, tolerance, p, p_adjusted

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
    alpha: float = 0.05
    correction: str = "holm"

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
                "paired_tests": self.paired_summary(),
                "errors": self.errors, "checks": [c.to_json() for c in self.checks]}

    def paired_summary(self) -> dict:
        """How the paired regression checks were decided, as a whole (their family and its correction)."""
        family = sum(c.paired is not None and c.paired.get("p") is not None for c in self.checks)
        return {"family": family, "alpha": self.alpha, "correction": self.correction,
                "about": (f"{family} paired fixed-suite regression test(s) (rules x models), one-sided, "
                          + (f"Holm-corrected (Holm 1979 step-down) to a family-wise false-failure rate of "
                             f"{self.alpha:g}" if self.correction == "holm" else f"each at {self.alpha:g}, "
                                                                                  "uncorrected")
                          + "; teacher-relative, absolute and population checks are marginal and not in the family")}


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
    slack = rule.slack(b.value)
    bound = b.value - slack if higher else b.value + slack
    why = _population_reason(rule, m, cur, base)
    if why is None:
        return paired_regression(rule, model, m, cur, base, higher, check)
    check.test = "population"
    return _finish(check, m.value, m.ci95, bound, higher, rule, f"; baseline {b.value:.4g}; population view{why}")


def _population_reason(rule: Rule, m: Metric, cur: EvalDoc, base: EvalDoc) -> str | None:
    """Why a regression check takes the population view instead of the paired test (None: it is paired)."""
    if rule.baseline_test == "population":
        return ""
    if m.level == "timing":
        return " (a timing: no per-clip values to pair)"
    if cur.per_clip is None and base.per_clip is None:
        return (" (neither eval.json has per-clip values, written before they were recorded; re-run both evals for "
                "the paired fixed-suite test)")
    return None


def seed_level_se(leave_one_out: np.ndarray, prompts: np.ndarray) -> tuple[float, int, str]:
    """(se, degrees of freedom, what it counts) of a statistic over clips, from its leave-one-clip-out values.

    The suite's prompts are held fixed and only the seeds are a sample, so each prompt is a stratum: the
    delete-one jackknife within strata, se² = Σ_h n_h/(n_h − 1)·((N − 1)/N)²·Σ_{i∈h} (θ_(i) − θ̄_h)², which for a
    mean is exactly the within-prompt standard error Σ_h n_h s_h² / N² (`stats.within_prompt_se`), and for a smooth
    statistic (FVD, KVD) the same to first order. With a prompt of one clip there is no within-prompt spread to
    measure: the ordinary delete-one jackknife over clips, which also counts how the change varies from prompt to
    prompt, and is conservative for this question."""
    n = leave_one_out.size
    ids, strata = np.unique(prompts, return_inverse=True)[1], len(np.unique(prompts))
    counts = np.bincount(ids, minlength=strata)
    if counts.min() >= 2:
        means = np.bincount(ids, weights=leave_one_out, minlength=strata) / counts
        within = np.bincount(ids, weights=(leave_one_out - means[ids]) ** 2, minlength=strata)
        var = float(np.sum(counts / (counts - 1) * within)) * ((n - 1) / n) ** 2
        return math.sqrt(var), n - strata, "seed-level (prompts held fixed)"
    var = (n - 1) / n * float(np.sum((leave_one_out - leave_one_out.mean()) ** 2))
    return math.sqrt(var), n - 1, ("clip-level (a prompt with one clip: counts prompt-to-prompt variation too, "
                                   "conservative)")


def _paired_clips(kind: str, cur: np.ndarray, base: np.ndarray, prompts: np.ndarray) -> tuple[float, np.ndarray,
                                                                                                 np.ndarray]:
    """(current − baseline, its leave-one-clip-out values, their prompts) on the clips both scored."""
    if kind == "leave_one_out":
        return math.nan, cur - base, prompts  # the full difference comes from the records
    both = np.isfinite(cur) & np.isfinite(base)
    diff = cur[both] - base[both]
    if diff.size < 2:
        return math.nan, diff, prompts[both]
    return float(diff.mean()), (diff.sum() - diff) / (diff.size - 1), prompts[both]


def paired_regression(rule: Rule, model: str, m: Metric, cur: EvalDoc, base: EvalDoc, higher: bool,
                      check: Check) -> Check:
    """The paired fixed-suite test of one model and metric: current minus baseline on the same clips, against the
    rule's tolerance, with the seed-level standard error. Leaves `status` undecided ("skip") with a p-value in
    `check.paired`: `evaluate` decides every paired check together (Holm)."""
    check.test = "paired"
    data = {}
    for doc in (cur, base):
        got = doc.clip_data(model, rule.metric)
        if got is None:
            return _gap(check, rule, f"{doc.path}: no per-clip values for model {model!r} metric {rule.metric!r} "
                                     "('per_clip' in eval.json), which the paired regression test needs; re-run "
                                     "`distill eval` with this version, or give the rule `baseline_test: "
                                     "population`", required=True)
        data[doc.path] = got
    (kind, c), (kind_b, b) = data[cur.path], data[base.path]
    prompts = cur.prompt_of_clip()
    if kind != kind_b or not np.array_equal(prompts, base.prompt_of_clip()):
        return _gap(check, rule, f"baseline {base.path}: its per-clip values of {model!r} {rule.metric!r} do not "
                                 f"line up with {cur.path}'s (other clips or another kind of metric)", required=True)
    diff, loo, strata = _paired_clips(kind, c, b, prompts)
    b_value = base.metric(model, rule.metric).value
    if kind == "leave_one_out":
        diff = m.value - b_value
    if loo.size < 2:
        return _gap(check, rule, f"{cur.path}: model {model!r} metric {rule.metric!r}: fewer than 2 clips scored "
                                 "in both evals; nothing to pair", required=False)
    se, df, se_kind = seed_level_se(loo, strata)
    worse = -diff if higher else diff  # > 0: the current model is worse
    tolerance = rule.slack(b_value)
    z = worse - tolerance
    if se > 0:
        p = float(stdtr(df, -z / se))
    else:  # no seed-to-seed spread at all (an unchanged model gives identical clips): the point decides
        p = 0.0 if z > 0 else 1.0
    check.observed, check.bound = m.value, (b_value - tolerance if higher else b_value + tolerance)
    check.paired = {"diff": diff, "worse_by": worse, "tolerance": tolerance, "se": se, "df": df, "se_kind": se_kind,
                    "n_clips": int(loo.size), "p": p, "p_adjusted": None}
    return check


def decide_paired(checks: list[Check], alpha: float, correction: str) -> None:
    """Holm's step-down procedure over the paired checks' one-sided p-values: sorted ascending, the i-th (from 0)
    of m fails while p ≤ α/(m − i); the adjusted p-value max_{j≤i} min(1, (m − j)·p_(j)) fails at ≤ α. It keeps
    the chance of failing ANY unchanged model-and-metric at α whatever their dependence (Holm 1979), and is never
    less powerful than Bonferroni."""
    tested = [c for c in checks if c.paired is not None and c.paired.get("p") is not None]
    m = len(tested)
    running = 0.0
    for i, c in enumerate(sorted(tested, key=lambda c: c.paired["p"])):
        factor = (m - i) if correction == "holm" else 1
        running = max(running, min(1.0, factor * c.paired["p"]))
        c.paired["p_adjusted"] = running
    for c in tested:
        t = c.paired
        failed = t["p_adjusted"] <= alpha
        c.status = "fail" if failed else "pass"
        side = "worse" if t["worse_by"] > 0 else "better"
        c.message = (f"paired vs baseline on {t['n_clips']} clips: {abs(t['worse_by']):.4g} {side} "
                     f"(tolerance {t['tolerance']:.4g}; {t['se_kind']} se {t['se']:.3g}, df {t['df']}); "
                     f"one-sided p {t['p']:.3g}, {correction}-adjusted {t['p_adjusted']:.3g} over {m} paired "
                     f"check(s) {'<=' if failed else '>'} alpha {alpha:g}")


def unknown_metric_message(rule: Rule, index: int, current: EvalDoc) -> str:
    known = sorted(current.metric_names())
    close = difflib.get_close_matches(rule.metric, known, n=3, cutoff=0.5)
    hint = (f"closest known: {', '.join(close)}" if close else
            f"known metrics: {', '.join(known[:8])}{', ...' if len(known) > 8 else ''}")
    return (f"rules[{index}] ({rule.describe()}): no model in {current.path} has metric {rule.metric!r}; {hint} "
            "(a rule on a metric that may be absent says `optional: true`)")


def evaluate(policy: Policy, current: EvalDoc, baseline: EvalDoc | None) -> GateResult:
    result = GateResult(policy=policy.name, current=current.path, baseline=baseline.path if baseline else None,
                        alpha=policy.alpha, correction=policy.correction)
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
        named = [m for m in current.models if any(fnmatch.fnmatchcase(m, p) for p in rule.models)]
        models = [m for m in named if rule.roles is None or current.models[m].get("role") in rule.roles]
        if not named and not rule.optional:  # a misspelt pattern, like a misspelt metric, is not a no-op
            check = Check(label, ",".join(rule.models), rule.metric, rule.kind, "error", meaning=rule.meaning())
            check.message = (f"rules[{i}] ({rule.describe()}): models {rule.models} match no model in "
                             f"{current.path} (models: {', '.join(current.models) or 'none'}); a rule for models "
                             "that may be absent says `optional: true`")
            result.checks.append(check)
            continue
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
                check.status, check.message, check.paired = "error", str(err), None
            result.checks.append(check)
    decide_paired(result.checks, policy.alpha, policy.correction)
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
    paired = result.paired_summary()
    if paired["family"]:
        lines += [f"- paired regression tests: {paired['about']}", ""]
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
