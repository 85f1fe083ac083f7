"""Reporting runs: the end-of-run table and ``ptrain compare RUN_DIR...`` (terminal table, Markdown, PNG chart).

The rows are what the core and the run's plugins declared through ``report_rows`` (saved in each
run's ``metrics.json`` under ``report``); the columns are the runs, each followed by the other
models it measured (``Run.record_model``: a teacher, a baseline, quantized variants). This module
names no method: a third-party method's rows appear exactly like the built-ins'. A measurement a
run lacks is a blank cell, never an error. Nothing heavy is imported.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ptrain._errors import UsageError
from ptrain._types import ReportRow


@dataclass
class RunSummary:
    """One column: a run (or a model a run measured) and its metrics."""

    label: str
    dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        node: Any = self.metrics
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


def read_run(path: str | Path) -> RunSummary:
    """A run directory's metrics and resolved recipe; a UsageError naming the directory if they are unusable."""
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a run directory; give directories written by `ptrain run`")
    summary = RunSummary(label=folder.name, dir=folder)
    metrics_file, recipe_file = folder / "metrics.json", folder / "recipe.resolved.toml"
    if not metrics_file.is_file() and not recipe_file.is_file():
        raise UsageError(f"{folder}: no metrics.json or recipe.resolved.toml; is it a directory written by `ptrain run`?")
    try:
        if metrics_file.is_file():
            summary.metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        if recipe_file.is_file():
            summary.recipe = tomllib.loads(recipe_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as err:
        raise UsageError(f"{folder}: cannot read its metrics or recipe ({err}); rerun it or leave it out") from None
    except RecursionError:  # json nests 100 000 levels deep before it says so
        raise UsageError(f"{metrics_file}: nested too deep to be ptrain's metrics (more than Python's recursion limit); "
                         "rerun it or leave it out") from None
    if not isinstance(summary.metrics, dict):
        raise UsageError(f"{metrics_file}: not a JSON object of metrics; rerun it or leave it out")
    check_metrics(summary.metrics, metrics_file)
    run = summary.metrics.setdefault("run", {}) if isinstance(summary.metrics.get("run", {}), dict) else {}
    run.setdefault("methods", summary.recipe.get("methods"))
    run.setdefault("model", (summary.recipe.get("model") or {}).get("name"))
    summary.label = str(summary.recipe.get("name") or folder.name)
    if "artifacts" not in summary.metrics:  # stopped, failed or still running: say so in every column title
        summary.label += " (unfinished)"
    return summary


MAX_DEPTH = 32
"""Nesting deeper than this is no ptrain ``metrics.json`` (it nests four or five levels)."""


def check_metrics(metrics: dict[str, Any], path: Path) -> None:
    """A UsageError naming ``path`` and the entry at fault for what ``compare`` would trip on: nesting past
    :data:`MAX_DEPTH`, a ``report`` entry that is no row (fields of the wrong type), ``models`` or ``run`` not tables."""
    stack: list[tuple[Any, int]] = [(metrics, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UsageError(f"{path}: nested more than {MAX_DEPTH} levels deep, which no ptrain run writes; rerun it or leave it out")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    for name in ("models", "run", "final", "base", "train"):
        if name in metrics and not isinstance(metrics[name], dict):
            raise UsageError(f"{path}: {name!r} is a {type(metrics[name]).__name__}, not a table; rerun it or leave it out")
    report = metrics.get("report")
    if report is None:
        return
    if not isinstance(report, list):
        raise UsageError(f"{path}: 'report' is a {type(report).__name__}, not a list of rows; rerun it or leave it out")
    kinds = {"label": str, "key": str, "base": bool, "chart": (str, type(None)), "format": str, "digits": int, "each": bool}
    for i, row in enumerate(report):
        if not isinstance(row, dict):
            raise UsageError(f"{path}: report[{i}] is a {type(row).__name__}, not a row (a table with label and key); "
                             "rerun it or leave it out")
        for field_name, kind in kinds.items():
            if field_name in row and not isinstance(row[field_name], kind) or field_name in ("label", "key") and field_name not in row:
                raise UsageError(f"{path}: report[{i}].{field_name} is {type(row.get(field_name)).__name__}, "
                                 f"not {getattr(kind, '__name__', 'text')}; rerun it or leave it out")


def expand(run: RunSummary) -> list[RunSummary]:
    """The run's column, then one per model it recorded (``metrics.json`` ``models``)."""
    extra = []
    for label, entry in (run.metrics.get("models") or {}).items():
        if not isinstance(entry, dict):
            continue
        metrics = {"final": entry.get("final") or {}, "train": entry.get("train") or {}, "run": {"model": entry.get("model")}}
        extra.append(RunSummary(f"{run.label}: {label}", run.dir, metrics, {}))
    return [run, *extra]


def _rows_of(run: RunSummary) -> list[ReportRow]:
    """The rows a run saved; for a run written before rows were saved, what its installed plugins declare now."""
    known = {f.name for f in fields(ReportRow)}
    saved = run.metrics.get("report")
    if isinstance(saved, list):
        return [ReportRow(**{k: v for k, v in row.items() if k in known}) for row in saved if isinstance(row, dict) and "key" in row]
    from ptrain._registry import PluginRegistry

    registry = PluginRegistry.discover()
    methods = [m for m in (run.get("run.methods") or []) if isinstance(m, str)]
    for attempt in (methods, []):
        try:
            return [row for rows in registry.load(attempt).collect_by_plugin("report_rows").values() for row in rows]
        except Exception:  # a plugin no longer installed or broken: the core's rows still apply
            continue
    return []


def declared_rows(recipe: Any) -> list[ReportRow]:
    """The rows the core and a recipe's plugins declare (``report_rows``), without duplicates."""
    seen: dict[tuple[str, str], ReportRow] = {}
    for rows in recipe.plugins.collect_by_plugin("report_rows").values():
        for row in rows:
            seen.setdefault((row.label, row.key), row)
    return list(seen.values())


def report_rows(runs: list[RunSummary]) -> list[ReportRow]:
    """Every run's rows, in first-seen order, without duplicates; a row with ``each`` becomes one row per entry."""
    seen: dict[tuple[str, str], ReportRow] = {}
    for run in runs:
        for row in _rows_of(run):
            seen.setdefault((row.label, row.key), row)
    return [one for row in seen.values() for one in _entries(row, runs)]


def _entries(row: ReportRow, runs: list[RunSummary]) -> list[ReportRow]:
    """``row`` itself, or for ``each=True`` one row per entry of the mapping it names (in any run, base or final)."""
    if not row.each:
        return [row]
    keys = [row.key] + (["base." + row.key.removeprefix("final.")] if row.base and row.key.startswith("final.") else [])
    names: dict[str, None] = {}
    for run in runs:
        for key in keys:
            value = run.get(key)
            if isinstance(value, dict):
                names.update(dict.fromkeys(str(name) for name in value))
    return [replace(row, label=f"{row.label}: {name}", key=f"{row.key}.{name}", each=False) for name in names]


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def show(value: Any, row: ReportRow) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        if row.format == "count":
            return _count(value)
        return f"{value:.{row.digits}g}" if isinstance(value, float) else str(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {show(v, row)}" for k, v in value.items())
    return str(value)


def cell(run: RunSummary, row: ReportRow) -> str:
    final = show(run.get(row.key), row)
    if row.base and row.key.startswith("final."):
        base = run.get("base." + row.key.removeprefix("final."))
        if base is not None:
            return f"{show(base, row)} → {final}"
    return final


def table(runs: list[RunSummary], rows: list[ReportRow]) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)``: one column per run, one row per declared measurement any run has."""
    header = ["", *(r.label for r in runs)]
    lines = []
    for row in rows:
        cells = [cell(r, row) for r in runs]
        if any(cells):
            label = f"{row.label} (base → final)" if row.base and any("→" in c for c in cells) else row.label
            lines.append([label, *cells])
    return header, lines


def markdown(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |", *map(line, rows)]) + "\n"


def machine(runs: list[RunSummary]) -> str:
    """Where the runs ran, from their env.json: CPU, cores, accelerator, torch."""
    seen: list[str] = []
    for run in runs:
        try:
            env = json.loads((run.dir / "env.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(env, dict):
            continue
        versions = env.get("versions") or {}
        gpu = env.get("cuda") or "no GPU"
        text = f"{env.get('cpu') or env.get('platform', '?')}, {env.get('cpu_count', '?')} CPU cores, {gpu}, torch {versions.get('torch', '?')}"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def library_differences(runs: list[RunSummary]) -> str:
    """When the runs were made with different libraries, which (from env.json: the lock's identity and
    the versions recorded); "" when they agree or nothing says."""
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    for run in runs:
        try:
            env = json.loads((run.dir / "env.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(env, dict) and str(run.dir) not in seen:
            lock = env.get("lock") if isinstance(env.get("lock"), dict) else {}
            versions = env.get("versions") if isinstance(env.get("versions"), dict) else {}
            seen[str(run.dir)] = (run.label, {**versions, "lock": lock.get("sha256")})
    if len(seen) < 2:
        return ""
    labels = [label for label, _ in seen.values()]
    if len(set(labels)) < len(labels):  # the same recipe run twice: the directories tell them apart
        seen = {d: (Path(d).name, versions) for d, (_, versions) in seen.items()}
    keys = sorted({k for _, versions in seen.values() for k in versions})
    moved = []
    for key in keys:
        values = {label: versions.get(key) for label, versions in seen.values()}
        if len(set(map(str, values.values()))) > 1:
            moved.append(f"{key} " + " / ".join(f"{v} ({label})" for label, v in values.items()))
    return ("made with different libraries: " + "; ".join(moved)) if moved else ""


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def chart(runs: list[RunSummary], rows: list[ReportRow], path: Path) -> Path:
    """A PNG: the quality panel (every row declared ``chart="quality"``), then one panel per
    ``chart="panel"`` row that any run has."""
    import matplotlib.pyplot as plt

    fig = chart_figure(runs, rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial.png")
    fig.savefig(partial)
    plt.close(fig)
    os.replace(partial, path)
    return path


def chart_figure(runs: list[RunSummary], rows: list[ReportRow]) -> Any:
    """The figure of :func:`chart` (matplotlib, headless), for a PNG file or an HTML report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality_rows = [r for r in rows if r.chart == "quality" and any(_number(run.get(r.key)) is not None for run in runs)]
    panels = [r for r in rows if r.chart == "panel" and any(_number(run.get(r.key)) is not None for run in runs)]
    fig, axes = plt.subplots(
        1, 1 + len(panels), figsize=(6 + 3 * len(panels), 4.8), dpi=100,
        gridspec_kw={"width_ratios": [3] + [1.4] * len(panels)}, squeeze=False,
    )
    quality, others = axes[0][0], axes[0][1:]
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs):
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(quality_rows))]
        values = [_number(run.get(r.key)) or 0.0 for r in quality_rows]
        bars = quality.bar(xs, values, width, label=f"{i + 1}. {run.label}", color=f"C{i % 10}")
        quality.bar_label(bars, labels=[show(_number(run.get(r.key)), r) for r in quality_rows], fontsize=7, padding=1)
    quality.set_xticks(range(len(quality_rows)), [r.label for r in quality_rows], fontsize=8)
    quality.set_ylim(0, 1.1)
    quality.set_ylabel("score")
    quality.set_title("quality (final)")
    quality.grid(axis="y", alpha=0.3)
    if runs:
        quality.legend(fontsize=7, loc="lower left")
    for axis, row in zip(others, panels, strict=True):
        values = [_number(r.get(row.key)) or 0.0 for r in runs]
        bars = axis.bar(range(len(runs)), values, color=[f"C{i % 10}" for i in range(len(runs))])
        axis.bar_label(bars, labels=[f"{v:.3g}" if v else "" for v in values], fontsize=6, padding=1)
        axis.set_xticks(range(len(runs)), [str(i + 1) for i in range(len(runs))], fontsize=7)
        axis.set_xlabel("run (legend order)", fontsize=7)
        axis.set_title(row.label, fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _unique_labels(runs: list[RunSummary]) -> None:
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.label = f"{run.label} ({run.dir})"


def compare(run_dirs: list[str], output: str | Path | None = None) -> tuple[list[str], list[list[str]], Path, Path]:
    """Read the runs, write ``compare.md`` and ``compare.png`` into ``output``; return the table and paths.

    ``output`` defaults to the directory holding the first run (usually ``runs/``).
    """
    from ptrain._artifacts import write_text

    if not run_dirs:
        raise UsageError("give at least one run directory, e.g. ptrain compare runs/sft_tiny runs/instruct_tiny")
    summaries = [read_run(d) for d in run_dirs]
    runs = [column for summary in summaries for column in expand(summary)]
    _unique_labels(runs)
    rows = report_rows(summaries)
    header, lines = table(runs, rows)
    folder = Path(output) if output is not None else runs[0].dir.resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / "compare.md"
    where = machine(runs)
    libraries = library_differences(runs)
    write_text(
        md,
        f"# Runs compared\n\n{markdown(header, lines)}\nRuns: {', '.join(dict.fromkeys(str(r.dir) for r in runs))}\n"
        + (f"\nMachine: {where}\n" if where else "")
        + (f"\nRuns {libraries}\n" if libraries else ""),
    )
    png = chart(runs, rows, folder / "compare.png")
    return header, lines, md, png


def stage_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The end-of-run results table: ``(label, base, final)`` per declared row under ``final.`` (the
    ``report_rows`` of the core and the run's methods, with their labels), base from ``base.`` when
    measured. Metrics no row declares stay in ``metrics.json`` only."""
    run = RunSummary("run", Path("."), metrics, {})
    lines = []
    for row in report_rows([run]):
        if not row.key.startswith("final."):
            continue
        base_row = replace(row, key="base." + row.key.removeprefix("final."))
        final, base = show(run.get(row.key), row), show(run.get(base_row.key), row)
        if final or base:
            lines.append((row.label, base, final))
    return lines


def run_summary(label: str, directory: Path, metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """The end-of-run comparison of a finished run: its column and the models it recorded, with the
    rows the base/final table does not already show; None when there is nothing more to show."""
    run = RunSummary(label, directory, metrics, {})
    columns = expand(run)
    rows = report_rows([run])
    if len(columns) == 1:
        rows = [r for r in rows if not r.key.startswith(("base.", "final.", "train.", "run."))]
    header, lines = table(columns, rows)
    return (header, lines) if lines else None
