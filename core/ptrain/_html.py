"""One self-contained HTML file per finished run (``report.html``) and per comparison (``compare.html``).

Sections, each an ``<section id=...>``: ``results`` (the table of ``ptrain compare``: the rows the
core and the methods declared, one column per run and per model it measured), ``curves`` (every
number the trainer logged, per step: loss, eval loss, learning rate and whatever a method logs),
``chart`` (the quality / speed / memory chart of ``compare.png``), ``samples`` (held-out rows,
base against trained), ``environment`` and ``recipe``. Images are inline PNGs, styles and the one
small script inline: the file opens anywhere, offline. Nothing heavy is imported.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from ptrain._report import RunSummary, chart_figure, expand, read_run, report_rows, table

SECTIONS = ("results", "curves", "chart", "samples", "environment", "recipe")
MAX_SAMPLES = 20
CURVE_SKIP = {"step", "epoch", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second",
              "num_input_tokens_seen", "num_tokens"}

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#c5cad6}
nav{padding:8px 32px;background:#e9ecf1;position:sticky;top:0}nav a{margin-right:16px;color:#2a5bd7;text-decoration:none}
main{padding:8px 32px 40px;max-width:1400px}section{background:#fff;border-radius:8px;padding:12px 20px;margin:16px 0;
box-shadow:0 1px 2px rgba(0,0,0,.08)}h2{font-size:18px;margin:6px 0 12px}h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px}th,td{border-bottom:1px solid #e3e6eb;padding:4px 10px;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}thead th{background:#f0f2f5}img{max-width:100%;height:auto}
pre{background:#f3f4f7;padding:10px;overflow:auto;font-size:12px}.sample td{text-align:left;font-family:ui-monospace,monospace;
font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere;max-width:520px}.sample th{text-align:left}.ok{color:#157f3b;font-weight:bold}.bad{color:#c0392b;font-weight:bold}
.muted{color:#6b7280}label{font-size:13px}
"""

SCRIPT = """
document.querySelectorAll('input[data-wrong-only]').forEach(function (box) {
  box.addEventListener('change', function () {
    var table = document.getElementById(box.getAttribute('data-wrong-only'));
    table.querySelectorAll('tr[data-correct]').forEach(function (row) {
      row.style.display = box.checked && row.getAttribute('data-correct') === 'true' ? 'none' : '';
    });
  });
});
"""


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def curves(runs: list[RunSummary]) -> dict[str, list[tuple[str, list[tuple[float, float]]]]]:
    """Series logged per step, by name: ``{"loss": [(run label, [(step, value)...]), ...], ...}``."""
    series: dict[str, list[tuple[str, list[tuple[float, float]]]]] = {}
    for run in runs:
        history = _read_json(run.dir / "log_history.json")
        if not isinstance(history, list):
            continue
        points: dict[str, list[tuple[float, float]]] = {}
        for entry in history:
            if not isinstance(entry, dict) or not isinstance(entry.get("step"), (int, float)):
                continue
            for key, value in entry.items():
                if key in CURVE_SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                points.setdefault(key, []).append((entry["step"], float(value)))
        for key, values in points.items():
            if len(values) > 1 or key.startswith("eval_"):
                series.setdefault(key, []).append((run.label, values))
    order = ["loss", "eval_loss"]
    return dict(sorted(series.items(), key=lambda item: (order.index(item[0]) if item[0] in order else 2, item[0])))


def curves_figure(series: dict[str, list[tuple[str, list[tuple[float, float]]]]]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(series))
    rows = (len(series) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.2 * rows), squeeze=False)
    for axis in axes.flat[len(series):]:
        axis.set_visible(False)
    for axis, (name, runs) in zip(axes.flat, series.items(), strict=False):
        for i, (label, points) in enumerate(runs):
            xs, ys = zip(*points, strict=True)
            axis.plot(xs, ys, marker="o" if len(points) < 12 else None, markersize=3, label=label, color=f"C{i % 10}")
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
        if len(runs) > 1:
            axis.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], lines: list[list[str]], attrs: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in line) + "</tr>" for line in lines)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _samples(run: RunSummary, index: int) -> str:
    path = run.dir / "samples.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:MAX_SAMPLES] if line.strip()]
    except (OSError, ValueError):
        rows = []
    if not rows:
        return f"<h3>{_e(run.label)}</h3><p class='muted'>no held-out samples (samples.jsonl)</p>"
    has_base = any("base_generation" in r for r in rows)
    header = ["asked", "expected", *(["base"] if has_base else []), "trained"]
    mark = {True: "<span class='ok'>✓</span> ", False: "<span class='bad'>✗</span> ", None: ""}
    body = []
    for row in rows:
        asked = row.get("input") or row.get("instruction") or row.get("prompt", "")
        cells = [_e(asked), _e(row.get("reference", ""))]
        if has_base:
            cells.append(mark[row.get("base_correct")] + _e(row.get("base_generation", "")))
        cells.append(mark[bool(row.get("correct"))] + _e(row.get("generation", "")))
        body.append(f"<tr data-correct='{str(bool(row.get('correct'))).lower()}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    table_id = f"samples-{index}"
    right = sum(bool(r.get("correct")) for r in rows)
    return (
        f"<h3>{_e(run.label)} <span class='muted'>({right} of {len(rows)} right)</span></h3>"
        f"<label><input type='checkbox' data-wrong-only='{table_id}'> only the wrong answers</label>"
        f"<table class='sample' id='{table_id}'><thead><tr>{''.join(f'<th>{_e(h)}</th>' for h in header)}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _environment(runs: list[RunSummary]) -> str:
    envs = [(run.label, _read_json(run.dir / "env.json")) for run in runs]
    envs = [(label, env) for label, env in envs if isinstance(env, dict)]
    if not envs:
        return "<p class='muted'>no env.json</p>"
    keys = ["python", "platform", "cpu", "cpu_count", "cuda", "world_size", "seed", "git_sha", "started"]
    versions = list(dict.fromkeys(k for _, env in envs for k in (env.get("versions") or {})))
    lines = [[key, *(str(env.get(key, "")) for _, env in envs)] for key in keys]
    lines += [[name, *(str((env.get("versions") or {}).get(name) or "") for _, env in envs)] for name in versions]
    return _table(["", *(label for label, _ in envs)], lines)


def _recipes(runs: list[RunSummary]) -> str:
    parts = []
    for run in runs:
        try:
            text = (run.dir / "recipe.resolved.toml").read_text(encoding="utf-8")
        except OSError:
            text = "(no recipe.resolved.toml)"
        parts.append(f"<h3>{_e(run.label)} <span class='muted'>{_e(run.dir)}</span></h3><pre>{_e(text)}</pre>")
    return "".join(parts)


def render(summaries: list[RunSummary], title: str) -> str:
    """The whole HTML document for these runs."""
    columns = [column for summary in summaries for column in expand(summary)]
    rows = report_rows(summaries)
    header, lines = table(columns, rows)
    series = curves(summaries)
    body = {
        "results": _table(header, lines) if lines else "<p class='muted'>no metrics</p>",
        "curves": f"<img alt='training curves' src='{_png(curves_figure(series))}'>" if series else
        "<p class='muted'>nothing logged during training (no trainer, or log_history.json missing)</p>",
        "chart": f"<img alt='quality, speed and memory' src='{_png(chart_figure(columns, rows))}'>",
        "samples": "".join(_samples(run, i) for i, run in enumerate(summaries)),
        "environment": _environment(summaries),
        "recipe": _recipes(summaries),
    }
    names = {"results": "Results", "curves": "Training curves", "chart": "Quality, speed and memory",
             "samples": "Held-out samples", "environment": "Environment", "recipe": "Recipe"}
    from ptrain import __version__

    subtitle = ", ".join(f"{s.label}: {', '.join(s.get('run.methods') or [])} on {s.get('run.model') or '?'}" for s in summaries)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'><link rel='icon' href='data:,'>"
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p>{_e(subtitle)}</p></header>"
        f"<nav>{''.join(f'<a href=#{key}>{names[key]}</a>' for key in SECTIONS)}</nav><main>"
        + "".join(f"<section id='{key}'><h2>{names[key]}</h2>{body[key]}</section>" for key in SECTIONS)
        + f"<p class='muted'>written by ptrain {_e(__version__)}</p></main><script>{SCRIPT}</script></body></html>\n"
    )


def write_report(summaries: list[RunSummary], path: Path, title: str) -> Path:
    from ptrain._artifacts import write_text

    write_text(path, render(summaries, title))
    return path


def write_run_report(run_dir: Path) -> Path:
    """``report.html`` in a finished run's directory."""
    summary = read_run(run_dir)
    return write_report([summary], Path(run_dir) / "report.html", title=f"ptrain run {summary.label}")


def write_compare_report(run_dirs: list[str], folder: Path) -> Path:
    """``compare.html`` in ``folder``: the runs of ``ptrain compare`` side by side."""
    summaries = [read_run(d) for d in run_dirs]
    labels = [s.label for s in summaries]
    for summary in summaries:
        if labels.count(summary.label) > 1:
            summary.label = f"{summary.label} ({summary.dir})"
    return write_report(summaries, Path(folder) / "compare.html", title="Runs compared")
