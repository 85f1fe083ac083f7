"""Comparing finished runs side by side: ``ptrain compare RUN_DIR...``.

Reads each run directory's ``metrics.json`` and ``recipe.resolved.toml`` (nothing heavy), and
builds one table of rows (what is measured) by columns (the runs). A run that lacks a
measurement (no training, no robustness evaluation) gets a blank cell, never an error. The same
table is printed with rich, written as Markdown and drawn as a PNG bar chart.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptrain.errors import UsageError


@dataclass
class RunSummary:
    """What ``compare`` knows about one run directory."""

    label: str
    dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)

    def get(self, *path: str) -> Any:
        node: Any = self.metrics
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node


def read_run(path: str | Path) -> RunSummary:
    """A run directory's metrics and resolved recipe; a UsageError if it holds neither."""
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
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{folder}: cannot read its metrics or recipe ({err})") from None
    summary.label = summary.recipe.get("name") or folder.name
    return summary


def _unique_labels(runs: list[RunSummary]) -> None:
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.label = f"{run.label} ({run.dir})"


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _params(run: RunSummary) -> str:
    total, trainable = run.get("train", "parameters"), run.get("train", "trainable_parameters")
    if total is None:
        return ""
    text = _count(total)
    if trainable is not None:
        text += f" / {_count(trainable)} ({100 * trainable / total:.3g} %)" if total else ""
    return text


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _base_final(run: RunSummary, key: str) -> str:
    base, final = run.get("base", key), run.get("final", key)
    if final is None:
        return f"{_num(base)} → " if base is not None else ""
    return f"{_num(base)} → {_num(final)}" if base is not None else _num(final)


def _sizes(run: RunSummary) -> str:
    final = run.get("final") or {}
    sizes = {k.removesuffix("_size_mb"): v for k, v in final.items() if k.endswith("_size_mb") and isinstance(v, (int, float))}
    if list(sizes) == ["model"]:
        return _num(sizes["model"])
    return ", ".join(f"{k} {_num(v)}" for k, v in sizes.items())


def _methods(run: RunSummary) -> str:
    methods = run.recipe.get("methods") or run.get("run", "methods") or []
    return ", ".join(methods)


ROWS: list[tuple[str, Callable[[RunSummary], str]]] = [
    ("methods", _methods),
    ("model", lambda r: str((r.recipe.get("model") or {}).get("name", ""))),
    ("parameters total / trainable", _params),
    ("training steps", lambda r: _num(r.get("train", "steps"))),
    ("training time (s)", lambda r: _num(r.get("train", "train_time_s"))),
    ("peak training memory (MiB)", lambda r: _num(r.get("train", "peak_memory_mb"))),
    ("size on disk (MiB)", _sizes),
    ("inference memory (MiB)", lambda r: _num(r.get("final", "memory_footprint_mb"))),
    ("generation tokens/s", lambda r: _num(r.get("final", "generation_tokens_per_s"))),
    ("eval loss", lambda r: _num(r.get("final", "eval_loss"))),
    ("perplexity (completions)", lambda r: _num(r.get("final", "perplexity"))),
    ("task metric (base → final)", lambda r: _base_final(r, "task_metric")),
    ("valid JSON (base → final)", lambda r: _base_final(r, "valid_json_rate")),
    ("perplexity, sliding window over the eval text", lambda r: _num(r.get("final", "window_perplexity"))),
    ("perplexity change vs unquantized (%)", lambda r: _num(r.get("final", "perplexity_increase_pct"))),
    ("seen templates: mean", lambda r: _num(r.get("final", "templates_seen_mean"))),
    ("seen templates: worst", lambda r: _num(r.get("final", "templates_seen_worst"))),
    ("seen templates: spread", lambda r: _num(r.get("final", "templates_seen_spread"))),
    ("held-out templates: mean", lambda r: _num(r.get("final", "templates_heldout_mean"))),
    ("held-out templates: worst", lambda r: _num(r.get("final", "templates_heldout_worst"))),
    ("held-out templates: spread", lambda r: _num(r.get("final", "templates_heldout_spread"))),
    ("all templates: worst", lambda r: _num(r.get("final", "templates_all_worst"))),
    ("all templates: spread", lambda r: _num(r.get("final", "templates_all_spread"))),
]
"""Row label -> how to read it from a run. Rows blank for every run are left out."""

CHART: list[tuple[str, tuple[str, ...]]] = [
    ("task metric", ("final", "task_metric")),
    ("valid JSON", ("final", "valid_json_rate")),
    ("seen templates mean", ("final", "templates_seen_mean")),
    ("held-out mean", ("final", "templates_heldout_mean")),
    ("held-out worst", ("final", "templates_heldout_worst")),
    ("held-out spread", ("final", "templates_heldout_spread")),
    ("all-templates spread", ("final", "templates_all_spread")),
]
"""Bars of the chart's quality panel (all in [0, 1])."""


def expand(run: RunSummary) -> list[RunSummary]:
    """One column per model a run measured: a quantize run's variants, a distill run's teacher and baseline."""
    extra: list[RunSummary] = []
    variants = run.get("quantize", "models") or {}
    reference = variants.get("unquantized") if isinstance(variants.get("unquantized"), dict) else None
    if reference and reference.get("perplexity") is not None and isinstance(run.metrics.get("final"), dict):
        run.metrics["final"]["window_perplexity"] = reference["perplexity"]
    source = (run.recipe.get("quantize") or {}).get("source") or (run.recipe.get("model") or {}).get("name", "")
    for name, row in variants.items():
        if not isinstance(row, dict) or name == "unquantized":
            continue
        final = {
            "task_metric": row.get("task_metric"), "window_perplexity": row.get("perplexity"),
            "memory_footprint_mb": row.get("footprint_mb"), "generation_tokens_per_s": row.get("generation_tokens_per_s"),
            "model_size_mb": row.get("disk_mb"), "perplexity_increase_pct": row.get("perplexity_increase_pct"),
        }
        recipe = {"methods": ["quantize"], "model": {"name": f"{source} as {name}" if source else name}}
        extra.append(RunSummary(f"{run.label}: {name}", run.dir, {"final": {k: v for k, v in final.items() if v is not None}}, recipe))
    for who in ("teacher", "baseline"):
        row = run.get("distill", who)
        if not isinstance(row, dict):
            continue
        final = {
            "task_metric": row.get("task_metric"), "eval_loss": row.get("eval_loss"),
            "memory_footprint_mb": row.get("memory_footprint_mb"), "generation_tokens_per_s": row.get("generation_tokens_per_s"),
            "model_size_mb": row.get("size_on_disk_mb"),
        }
        train = {"parameters": row["parameters"]} if isinstance(row.get("parameters"), int) else {}
        label = "teacher" if who == "teacher" else "no-teacher baseline"
        model = (run.recipe.get("distill") or {}).get("teacher") if who == "teacher" else (run.recipe.get("model") or {}).get("name")
        recipe = {"model": {"name": model}} if model else {}
        extra.append(RunSummary(f"{run.label}: {label}", run.dir, {"final": {k: v for k, v in final.items() if v is not None}, "train": train}, recipe))
    return [run, *extra]


def machine(runs: list[RunSummary]) -> str:
    """Where the runs ran, from their env.json: platform, CPUs, accelerator, torch."""
    seen: list[str] = []
    for run in runs:
        try:
            env = json.loads((run.dir / "env.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        versions = env.get("versions") or {}
        gpu = env.get("cuda") or "no GPU"
        text = f"{env.get('cpu') or env.get('platform', '?')}, {env.get('cpu_count', '?')} CPU cores, {gpu}, torch {versions.get('torch', '?')}"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def table(runs: list[RunSummary]) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)``: one column per run, one row per measurement that any run has."""
    header = ["", *(r.label for r in runs)]
    rows = []
    for label, read in ROWS:
        cells = [read(r) for r in runs]
        if any(cells):
            rows.append([label, *cells])
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |", *map(line, rows)]) + "\n"


PANELS: list[tuple[str, tuple[str, ...]]] = [
    ("inference memory (MiB)", ("final", "memory_footprint_mb")),
    ("generation tokens/s", ("final", "generation_tokens_per_s")),
    ("training time (s)", ("train", "train_time_s")),
    ("eval perplexity (completions)", ("final", "perplexity")),
]
"""Panels after the quality panel, one bar per run: (title, where in metrics.json). A panel no run has is left out."""


def chart(runs: list[RunSummary], path: Path) -> Path:
    """A PNG: quality per run (task metric, valid JSON, template robustness), then one panel per
    measurement any run has (inference memory, generation speed, training time, perplexity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(title, key) for title, key in PANELS if any(isinstance(r.get(*key), (int, float)) for r in runs)]
    fig, axes = plt.subplots(
        1, 1 + len(panels), figsize=(6 + 3 * len(panels), 4.8), dpi=100,
        gridspec_kw={"width_ratios": [3] + [1.4] * len(panels)}, squeeze=False,
    )
    quality, others = axes[0][0], axes[0][1:]
    metrics = [(name, key) for name, key in CHART if any(r.get(*key) is not None for r in runs)]
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs):
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(metrics))]
        values = [run.get(*key) or 0.0 for _, key in metrics]
        bars = quality.bar(xs, values, width, label=f"{i + 1}. {run.label}", color=f"C{i % 10}")
        quality.bar_label(bars, labels=[_num(run.get(*key), 2) for _, key in metrics], fontsize=7, padding=1)
    quality.set_xticks(range(len(metrics)), [name for name, _ in metrics], fontsize=8)
    quality.set_ylim(0, 1.1)
    quality.set_ylabel("score")
    quality.set_title("quality (final)")
    quality.grid(axis="y", alpha=0.3)
    if runs:
        quality.legend(fontsize=7, loc="lower left")
    for axis, (title, key) in zip(others, panels, strict=True):
        values = [r.get(*key) if isinstance(r.get(*key), (int, float)) else 0.0 for r in runs]
        bars = axis.bar(range(len(runs)), values, color=[f"C{i % 10}" for i in range(len(runs))])
        axis.bar_label(bars, labels=[_num(v, 3) if v else "" for v in values], fontsize=6, padding=1)
        axis.set_xticks(range(len(runs)), [str(i + 1) for i in range(len(runs))], fontsize=7)
        axis.set_xlabel("run (legend order)", fontsize=7)
        axis.set_title(title, fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial.png")
    fig.savefig(partial)
    plt.close(fig)
    os.replace(partial, path)
    return path


def compare(run_dirs: list[str], output: str | Path | None = None) -> tuple[list[str], list[list[str]], Path, Path]:
    """Read the runs, write ``compare.md`` and ``compare.png`` into ``output``; return the table and paths.

    ``output`` defaults to the directory holding the first run (usually ``runs/``).
    """
    from ptrain import artifacts

    if not run_dirs:
        raise UsageError("give at least one run directory, e.g. ptrain compare runs/sft_tiny runs/instruct_tiny")
    runs = [column for d in run_dirs for column in expand(read_run(d))]
    _unique_labels(runs)
    header, rows = table(runs)
    folder = Path(output) if output is not None else runs[0].dir.resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / "compare.md"
    where = machine(runs)
    artifacts.write_text(
        md,
        f"# Runs compared\n\n{markdown(header, rows)}\nRuns: {', '.join(dict.fromkeys(str(r.dir) for r in runs))}\n"
        + (f"\nMachine: {where}\n" if where else ""),
    )
    png = chart(runs, folder / "compare.png")
    return header, rows, md, png
