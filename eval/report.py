"""Human-readable views of an `eval.json`: `summary.md` (the scorecard) and `report.html` (side-by-side clips of
the same prompts and seeds, metric tables, a quality-vs-latency plot). Both are made from eval.json alone, plus
the clips when given."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from distill.core.media import write_gif


def _fmt(x, digits=3) -> str:
    if x is None:
        return "–"
    if abs(x) >= 1000:
        return f"{x:.0f}"
    if abs(x) >= 100:
        return f"{x:.1f}"
    return f"{x:.{digits}g}" if abs(x) < 0.01 and x != 0 else f"{x:.{digits}f}"


def _cell(record: dict | None) -> str:
    if record is None:
        return "–"
    text = _fmt(record["value"])
    ci = record.get("ci95")
    if ci and ci[0] is not None:
        text += f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"
    return text


def metric_names(result: dict) -> list[str]:
    order = ("clip_score", "fvd", "flicker", "diversity", "speed")
    seen: list[str] = []
    for model in result["models"].values():
        for k in model["metrics"]:
            if k not in seen:
                seen.append(k)
    return sorted(seen, key=lambda k: (next((i for i, p in enumerate(order) if k.startswith(p)), 99), k))


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
    lines.append("| steps / NFE | " + " | ".join(f"{r['steps']} / {r['nfe']}" for r in models.values()) + " |")
    return "\n".join(lines)


def summary_markdown(result: dict) -> str:
    suite = result["suite"]
    env = result["env"]
    ratios = []
    for name, r in result["models"].items():
        if r["role"] == "teacher":
            continue
        parts = [f"{k}: {_fmt(v['ratio_to_teacher'])}×" for k, v in r["metrics"].items()
                 if v.get("ratio_to_teacher") is not None and not k.startswith("speed")]
        speed = r["metrics"].get("speed.speedup_vs_teacher", {})
        ratios.append(f"- **{name}** ({r['steps']} steps, {r['nfe']} NFE): speedup {_fmt(speed.get('value'))}× "
                      f"(NFE bound {_fmt(speed.get('nfe_ratio'))}×); vs teacher: " + ", ".join(parts))
    return "\n".join([
        f"# Eval: {suite['name']}",
        "",
        f"{suite['n_clips']} clips ({len(suite['prompts'])} prompts × {suite['seeds_per_prompt']} seeds), "
        f"{suite['frames']} frames at {suite['height']}×{suite['width']}; teacher `{suite['teacher']}`; "
        f"device: {env['device']}. Values with 95% bootstrap intervals; ↑ higher is better, ↓ lower is better.",
        "",
        scorecard_markdown(result),
        "",
        "## Each model against the teacher",
        "",
        *(ratios or ["(no students)"]),
        "",
        "## Protocol",
        "",
        suite["speed_protocol"],
        "FVD intervals are bootstrap intervals over clips; resampling shrinks covariances, so they need not "
        "contain the point value. `fvd[...]:noise_floor` is the teacher against itself on other seeds: the FVD a "
        "perfect student would still get at this N.",
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

    key = next((k for k in metric_names(result) if k.startswith("clip_score")), None)
    if key is None:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
    for name, r in result["models"].items():
        rec = r["metrics"][key]
        lo, hi = rec["ci95"]
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
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "eval.json", out_dir / "summary.md", out_dir / "report.html"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(summary_markdown(result))
    paths[2].write_text(report_html(result, clips))
    return paths
