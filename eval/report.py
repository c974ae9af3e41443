"""Human-readable views of an `eval.json`: `summary.md` (the scorecard) and `report.html` (side-by-side clips of
the same prompts and seeds, metric tables, a quality-vs-latency plot). Both are made from eval.json alone, plus
the clips when given."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from distill.core.disk import writing
from distill.core.media import write_gif
from distill.eval.metrics import REGISTRY, family_of
from distill.eval.stats import CI_LEVEL, adjust_family, count_intervals


def _fmt(x, digits=3) -> str:
    if x is None:
        return "–"
    if abs(x) >= 1000:
        return f"{x:.0f}"
    if abs(x) >= 100:
        return f"{x:.1f}"
    return f"{x:.{digits}g}" if abs(x) < 0.01 and x != 0 else f"{x:.{digits}f}"


def _ci(ci) -> str:
    return f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci and ci[0] is not None else ""


def _cell(record: dict | None) -> str:
    if record is None:
        return "–"
    if record.get("value") is None:
        return "skipped" if record.get("skipped") else "–"
    text = _fmt(record["value"]) + _ci(record.get("ci95"))
    if record.get("level") == "timing" and record.get("min") is not None:
        text += f" ({_fmt(record['min'])}–{_fmt(record['max'])})"
    if "n_static" in record:
        text += f" n={record['n_static']}"
    return text


def _order(name: str) -> tuple:
    m = family_of(name)
    return (REGISTRY.index(m) if m is not None else len(REGISTRY), name)


def metric_names(result: dict) -> list[str]:
    seen: list[str] = []
    for model in result["models"].values():
        for k in model["metrics"]:
            if k not in seen:
                seen.append(k)
    return sorted(seen, key=_order)


def scorecard_markdown(result: dict) -> str:
    names = metric_names(result)
    models = result["models"]
    lines = ["| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for m in names:
        arrow = ""
        rec = next((r["metrics"][m] for r in models.values() if m in r["metrics"]), None)
        if rec is not None:
            arrow = " ↑" if rec.get("higher_is_better") else " ↓"
        lines.append(f"| {m}{arrow} | " + " | ".join(_cell(r["metrics"].get(m)) for r in models.values()) + " |")
        if any((r["metrics"].get(m) or {}).get("bias_corrected") for r in models.values()):
            lines.append(f"| {m}, bias-corrected{arrow} | " + " | ".join(
                _cell((r["metrics"].get(m) or {}).get("bias_corrected")) for r in models.values()) + " |")
    lines.append("| steps / NFE | " + " | ".join(f"{r['steps']} / {r['nfe']}" for r in models.values()) + " |")
    return "\n".join(lines)


def vs_teacher_lines(result: dict) -> list[str]:
    """Each model's paired differences vs the teacher (same prompts and seeds), ratios where a ratio means
    something, and the speed-up."""
    lines = []
    for name, r in result["models"].items():
        if r["role"] == "teacher":
            continue
        parts = []
        for k in sorted(r["metrics"], key=_order):
            v = r["metrics"][k]
            d = v.get("paired_diff_vs_teacher")
            if d and d.get("value") is not None and not k.startswith("speed"):
                unit = " points" if k.startswith("clipsim") else " dB" if k == "first_frame.psnr" else ""
                parts.append(f"{k} {d['value']:+.3g}{unit}{_ci(d.get('ci95'))}")
            if v.get("ratio_to_teacher") is not None and not k.startswith("speed"):
                parts.append(f"{k} {_fmt(v['ratio_to_teacher'])}×")
        speed = r["metrics"].get("speed.speedup_vs_teacher", {})
        lines.append(f"- **{name}** ({r['steps']} steps, {r['nfe']} NFE): speed-up {_fmt(speed.get('value'))}× "
                     f"(range {_fmt(speed.get('min'))}–{_fmt(speed.get('max'))}; NFE bound "
                     f"{_fmt(speed.get('nfe_ratio'))}×); model − teacher: " + "; ".join(parts))
    return lines or ["(no students)"]


def model_vs_model_rows(result: dict) -> list[tuple[str, str, str, dict]]:
    """(metric, model A, model B, record) for every paired set-metric difference statistic(A) − statistic(B), each
    pair once (B − A is the same interval negated)."""
    rows, seen = [], set()
    for name, r in result["models"].items():
        for k in sorted(r["metrics"], key=_order):
            for other, d in (r["metrics"][k].get("paired_diff_vs_models") or {}).items():
                if (k, other, name) not in seen:
                    seen.add((k, name, other))
                    rows.append((k, name, other, d))
    return sorted(rows, key=lambda row: (_order(row[0]), row[1], row[2]))


def model_vs_model_markdown(result: dict) -> list[str]:
    rows = model_vs_model_rows(result)
    if not rows:
        return ["(no students to compare)"]
    adjusted = adjust_family([d for *_, d in rows])
    m = adjusted[0]["family_size"]
    lines = ["| metric | A | B | A − B [95% CI] | A − B [Bonferroni 95% of " + str(m) + "] | Holm p | A | B |",
             "|---|---|---|---|---|---|---|---|"]
    for (k, a, b, d), adj in zip(rows, adjusted):
        holm = "–" if adj["p_holm"] is None else f"{adj['p_holm']:.3g}" + (" (resolved)" if adj["resolved_holm"]
                                                                               else "")
        lines.append(f"| {k} | {a} | {b} | {_fmt(d.get('value'))}{_ci(d.get('ci95'))} | "
                     f"{_fmt(d.get('value'))}{_ci(adj['ci95_bonferroni'])} | {holm} | {_fmt(d.get('value_a'))} "
                     f"| {_fmt(d.get('value_b'))} |")
    lines += ["", multiplicity_note(m)]
    return lines


def multiplicity_note(family_size: int, level: float = CI_LEVEL) -> str:
    """What the adjusted columns of a model-vs-model table mean, for a family of `family_size` rows."""
    return (f"The {family_size} rows are one family. Each A − B interval is a marginal {level:.0%} one: with "
            f"{family_size} of them, about {family_size * (1 - level):.1f} are expected to miss their targets by "
            f"chance. **Bonferroni** intervals (each at {1 - (1 - level) / max(family_size, 1):.4g}) cover all "
            f"{family_size} targets together with probability ≥ {level:.0%}; **Holm p** is Holm's step-down "
            f"adjusted p-value of A − B = 0, and \"resolved\" marks a difference that stands at a family-wise "
            f"error rate of {1 - level:.0%} (for any dependence between the rows, which share models and the "
            "reference). Read a ranking from the resolved rows or the Bonferroni column, not from the marginal "
            "intervals alone.")


def interval_count_line(result: dict) -> str:
    """How many intervals eval.json holds, said out loud: each is a marginal 95% interval."""
    total = count_intervals(result["models"])
    pairs = len(model_vs_model_rows(result))
    return (f"**Multiplicity**: this eval holds {total} intervals ({pairs} of them model-vs-model rows), each a "
            f"marginal {CI_LEVEL:.0%} interval: even if every one covers as claimed, about {total * (1 - CI_LEVEL):.0f} "
            "are expected to miss their targets by chance. A claim built on several of them needs an adjusted "
            "interval: the model-vs-model table gives Bonferroni (family-wise) intervals and Holm-adjusted "
            "p-values.")


def bias_warning_lines(result: dict) -> list[str]:
    lines = []
    for name, r in result["models"].items():
        for k in sorted(r["metrics"], key=_order):
            warning = r["metrics"][k].get("bias_warning")
            if warning:
                lines.append(f"- {name}, {k}: {warning}")
    return lines


def static_flicker_lines(result: dict) -> list[str]:
    lines = []
    for name, r in result["models"].items():
        rec = r["metrics"].get("flicker.vbench")
        if rec is None:
            continue
        if rec.get("value") is None:
            lines.append(f"- {name}: skipped: {rec.get('skipped', 'no value')}")
        else:
            lines.append(f"- {name}: {_cell(rec)} on {rec['n_static']} static clips of "
                         f"{rec['n_static_prompt_clips']} clips of static prompts ({rec['n_total']} clips in all)")
    return lines


def first_images_line(suite: dict) -> str:
    """Where an image-to-video suite's conditioning images came from (the first-frame metrics score against them)."""
    fi = suite["first_images"]
    source = ("frame 0 of the toy world's render of each prompt at its first clip's seed" if fi["source"] == "toyworld"
              else "the suite's image files")
    return (f"First images: {fi['n']}, one per prompt, {source} (pixels sha256 {fi['sha256'][:12]}); "
            "`first_frame.*` compares each clip's frame 0 with its prompt's image.")


def speed_lines(result: dict) -> list[str]:
    """Where each model's time goes, and its time to the first frame (a distilled causal decoder streams; the VAE
    gives its first frame with its last)."""
    lines = ["| model | decoder | text | denoise | decode | first frame | latency |", "|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        decoder = "VAE" if not r.get("decoder") else f"`{r['decoder']['path']}`"
        lines.append(f"| {name} | {decoder} | {_fmt(r.get('text_s'))} | "
                     f"{_fmt(r.get('denoise_s'))} | {_fmt(r.get('decode_s'))} | {_fmt(r.get('first_frame_s'))} | "
                     f"{_fmt(r.get('latency_s'))} |")
    return lines


def summary_markdown(result: dict) -> str:
    suite = result["suite"]
    env = result["env"]
    det = suite.get("detector", {})
    return "\n".join([
        f"# Eval: {suite['name']}",
        "",
        f"{suite['n_clips']} clips ({len(suite['prompts'])} prompts × {suite['seeds_per_prompt']} seeds), "
        f"{suite['frames']} frames at {suite['height']}×{suite['width']}; teacher `{suite['teacher']}`; "
        f"device: {env['device']}. Values with 95% intervals (prompts are the independent units); speed as "
        "median (min–max) of the timed clips, no interval; ↑ higher is better, ↓ lower is better.",
        "",
        interval_count_line(result),
        "",
        scorecard_markdown(result),
        "",
        *(["Small-sample bias (the plain value is about this suite size, not the population):", "",
           *bias_warning_lines(result), ""] if bias_warning_lines(result) else []),
        "## Each model against the teacher (paired: same prompts and seeds)",
        "",
        *vs_teacher_lines(result),
        "",
        "## Model vs model: FVD and KVD differences (bias-corrected: population distances; all sets resampled "
        "jointly; negative: A is closer)",
        "",
        *model_vs_model_markdown(result),
        "",
        "## Speed (median of the timed clips, seconds)",
        "",
        *speed_lines(result),
        "",
        "## VBench temporal flickering (static clips only)",
        "",
        *static_flicker_lines(result),
        "",
        "## Protocol",
        "",
        f"Detector `{det.get('name', '?')}` ({det.get('dim', '?')}-d): {det.get('protocol', '?')}.",
        *([first_images_line(suite)] if suite.get("first_images") else []),
        "FVD/KVD intervals: a jackknife over prompts with the model and reference sets deleted jointly. Each "
        "record says its target: the plain FVD/KVD row covers the statistic's expected value at this n (FVD's "
        "small-sample bias included; KVD has none), the bias-corrected row (jackknife bias correction) and every "
        "model-vs-model row cover the population distance, which is what ranks models. `:noise_floor` is the "
        "teacher against itself on other seeds: what a perfect student would still score at this n (population "
        "distance 0). Per-clip means cover the population mean over prompts like these.",
        suite["speed_protocol"],
        "",
    ])


def _gif_b64(video: np.ndarray, fps: int, scale: int = 2) -> str:
    buf = io.BytesIO()
    write_gif(buf, video.repeat(scale, 1).repeat(scale, 2), fps)
    return base64.b64encode(buf.getvalue()).decode()


def _plot_b64(result: dict) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = next((k for k in metric_names(result) if k.startswith("clipsim")), None)
    if key is None:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
    for name, r in result["models"].items():
        rec = r["metrics"][key]
        lo, hi = rec["ci95"] if rec.get("ci95") and rec["ci95"][0] is not None else (rec["value"], rec["value"])
        ax.errorbar(r["latency_s"], rec["value"], yerr=[[rec["value"] - lo], [hi - rec["value"]]], fmt="o",
                    capsize=3)
        ax.annotate(name, (r["latency_s"], rec["value"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("latency per clip (s, log)")
    ax.set_ylabel(key)
    ax.set_title("quality vs latency")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def report_html(result: dict, clips: dict[str, np.ndarray] | None = None, show: int = 6) -> str:
    suite = result["suite"]
    models = list(result["models"])
    parts = [f"<html><head><meta charset='utf-8'><title>eval: {html.escape(suite['name'])}</title><style>"
             "body{font-family:sans-serif;margin:20px} table{border-collapse:collapse} "
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px} img{image-rendering:pixelated}"
             "</style></head><body>", f"<h1>eval: {html.escape(suite['name'])}</h1>",
             f"<p>teacher <code>{html.escape(suite['teacher'])}</code>; device {html.escape(result['env']['device'])}"
             f"; {suite['n_clips']} clips</p>"]
    plot = _plot_b64(result)
    if plot:
        parts.append(f"<img src='data:image/png;base64,{plot}'>")
    parts.append("<h2>Scorecard</h2><table><tr><th>metric</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in models)
                 + "</tr>")
    for m in metric_names(result):
        parts.append(f"<tr><td>{html.escape(m)}</td>" + "".join(
            f"<td>{html.escape(_cell(result['models'][n]['metrics'].get(m)))}</td>" for n in models) + "</tr>")
    parts.append("</table>")
    mvm = model_vs_model_rows(result)
    if mvm:
        adjusted = adjust_family([d for *_, d in mvm])
        parts.append("<h2>Model vs model (FVD, KVD bias-corrected; A − B, negative: A is closer)</h2><table><tr>"
                     "<th>metric</th><th>A</th><th>B</th><th>A − B [95% CI]</th>"
                     f"<th>[Bonferroni 95% of {adjusted[0]['family_size']}]</th></tr>")
        for (k, a, b, d), adj in zip(mvm, adjusted):
            parts.append(f"<tr><td>{html.escape(k)}</td><td>{html.escape(a)}</td><td>{html.escape(b)}</td>"
                         f"<td>{html.escape(_fmt(d.get('value')) + _ci(d.get('ci95')))}</td>"
                         f"<td>{html.escape(_ci(adj['ci95_bonferroni']))}</td></tr>")
        parts.append(f"</table><p>{html.escape(multiplicity_note(adjusted[0]['family_size']))}</p>")
    parts.append("<h2>Each model against the teacher</h2><ul>" + "".join(
        f"<li>{html.escape(line[2:])}</li>" for line in vs_teacher_lines(result)) + "</ul>")
    parts.append("<h2>VBench flicker (static clips only)</h2><ul>" + "".join(
        f"<li>{html.escape(line[2:])}</li>" for line in static_flicker_lines(result)) + "</ul>")
    if clips:
        parts.append("<h2>Same prompt, same seed</h2><table><tr><th>prompt / seed</th>"
                     + "".join(f"<th>{html.escape(m)}</th>" for m in models if m in clips) + "</tr>")
        for i in range(min(show, len(suite["seeds"]))):
            prompt = suite["prompts"][i // suite["seeds_per_prompt"]]
            row = f"<tr><td>{html.escape(prompt)}<br>seed {suite['seeds'][i]}</td>"
            for m in models:
                if m in clips:
                    row += f"<td><img src='data:image/gif;base64,{_gif_b64(clips[m][i], suite['fps'])}'></td>"
            parts.append(row + "</tr>")
        parts.append("</table>")
    parts.append(f"<h2>Protocol</h2><p>{html.escape(suite['speed_protocol'])}</p>")
    parts.append(f"<pre>{html.escape(json.dumps(result['env'], indent=2))}</pre></body></html>")
    return "\n".join(parts)


def write_outputs(result: dict, out_dir: Path, clips: dict[str, np.ndarray] | None = None) -> list[Path]:
    """eval.json, summary.md and report.html, each written whole or not at all: a gate must never read half an
    eval.json, and a full disk ends in one line (DiskFull) with the partial file removed and any earlier one kept."""
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {out_dir / "eval.json": json.dumps(result, indent=2) + "\n",
             out_dir / "summary.md": summary_markdown(result),
             out_dir / "report.html": report_html(result, clips)}
    for path, text in texts.items():
        data = text.encode()
        tmp = path.with_name(f".tmp-{path.name}")
        with writing(tmp, f"the eval's {path.name}", len(data)):
            tmp.write_bytes(data)
        os.replace(tmp, path)
    return list(texts)
