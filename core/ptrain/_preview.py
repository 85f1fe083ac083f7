"""``ptrain data RECIPE``: training examples exactly as the trainer will see them.

The recipe's data goes through the run's own path (sources, formats, column mapping, mixture,
dedup, templates or the chat template), then each example is tokenized as TRL's SFT trainer
tokenizes a prompt/completion pair: the prompt alone, then prompt + completion + EOS; the
completion (what the loss is computed on) starts where the two token sequences part. Shown per
example: the prompt and the completion with their boundary marked, token counts, what
``train.max_length`` cuts, and a prompt whose last tokens merge with the completion's first
(the model then trains on a context it never sees at inference): the usual silent fine-tuning bugs.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

PROMPT_MARK, COMPLETION_MARK, END_MARK = "▶ PROMPT", "▶ COMPLETION (trained on)", "◀ END"
TURN_MARK, REJECTED_MARK = "▶ TRAINED TURN", "▶ REJECTED (the answer not to give)"
STATS_ROWS = 2000
"""Token statistics cover at most this many training rows."""


@dataclass
class Example:
    split: str
    index: int
    source: str | None
    prompt: str
    completion: str
    eos: str
    prompt_tokens: int
    completion_tokens: int
    """Completion tokens, the EOS included."""
    total_tokens: int
    max_length: int
    boundary_merged: bool
    """The tokenized prompt is not a prefix of the tokenized prompt + completion."""
    segments: list[dict[str, Any]] | None = None
    """The prompt cut into spans, earlier assistant turns (trained too) marked ``train``."""
    rejected: str | None = None
    label: bool | None = None
    tools: list[str] | None = None
    """Names of the tools the conversation offers (their schemas are in the rendered prompt)."""

    @property
    def truncated(self) -> int:
        return max(self.total_tokens - self.max_length, 0)


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def tokens(tokenizer: Any, prompt: str, completion: str) -> tuple[int, int, int, bool]:
    """``(prompt tokens, completion tokens with EOS, total, boundary merged)`` as the SFT trainer tokenizes them."""
    eos = tokenizer.eos_token or ""
    text = prompt + completion
    full = tokenizer(text if text.endswith(eos) else text + eos)["input_ids"]
    if not prompt:
        return 0, len(full), len(full), False
    prompt_ids = tokenizer(prompt)["input_ids"]
    start = common_prefix(prompt_ids, full)
    return start, len(full) - start, len(full), start < len(prompt_ids)


def examples(recipe: Any, tokenizer: Any, count: int, split: str) -> tuple[list[Example], dict[str, Any]]:
    """The first ``count`` examples of ``split`` (``train`` or ``eval``) and a summary of the data."""
    from ptrain._datamix import SOURCE_FIELD, splits
    from ptrain._formats import tool_names

    prepared = splits(recipe.data_plan, recipe.data, recipe.catalog, recipe.seed, tokenizer, recipe.train.max_length)
    rows = prepared.rows() if split == "train" else prepared.eval
    max_length = recipe.train.max_length
    stats_rows = list(itertools.islice(prepared.rows(), STATS_ROWS))
    counted = [tokens(tokenizer, r["prompt"], r["completion"]) for r in stats_rows]
    shown = []
    for index, row in enumerate(itertools.islice(rows, count), 1):
        prompt_tokens, completion_tokens, total, merged = tokens(tokenizer, row["prompt"], row["completion"])
        shown.append(Example(split, index, row.get(SOURCE_FIELD), row["prompt"], row["completion"], tokenizer.eos_token or "",
                             prompt_tokens, completion_tokens, total, max_length, merged, segments=row.get("segments") or None,
                             rejected=row.get("rejected") or None, label=row.get("label"), tools=tool_names(row.get("tools")) or None))
    summary = dict(prepared.summary)
    if counted:
        totals = [c[2] for c in counted]
        summary["tokens"] = {
            "rows_counted": len(counted),
            "mean_total": round(sum(totals) / len(totals), 1),
            "max_total": max(totals),
            "over_max_length": sum(t > max_length for t in totals),
            "boundary_merged": sum(c[3] for c in counted),
            "max_length": max_length,
        }
    wrappers = [m for m in recipe.methods if "prepare_data" in recipe.plugins.hooks_of(m)]
    if wrappers:
        summary["changed_at_run_time_by"] = wrappers
    return shown, summary


def as_json(shown: list[Example], summary: dict[str, Any]) -> dict[str, Any]:
    return {"summary": summary, "examples": [asdict(e) | {"truncated_tokens": e.truncated} for e in shown]}


def show(shown: list[Example], summary: dict[str, Any], console: Any) -> None:
    from rich.markup import escape
    from rich.panel import Panel
    from rich.text import Text

    for label, entry in summary.get("sources", {}).items():
        rows = entry.get("train_rows", entry.get("train_rows_read", "?"))
        share = f", share {entry['weight']}" if "weight" in entry else ""
        console.print(f"source [bold]{escape(label)}[/]: {escape(str(entry.get('source')))} ({entry.get('format')}{share}): "
                      f"{rows} training rows{' (streamed: read so far)' if summary.get('streaming') else ''}, {entry.get('eval_rows')} eval rows",
                      soft_wrap=True)
    if summary.get("text_rows_chunked"):
        console.print(f"long texts: {summary['text_rows_chunked']} plain-text rows longer than train.max_length were cut into "
                      "chunks that fit (chunked, not truncated: no tail is lost)", soft_wrap=True)
    if summary.get("duplicates_dropped") is not None:
        console.print(f"dedup: {summary['duplicates_dropped']} duplicate training rows dropped")
    stats = summary.get("tokens")
    if stats:
        warn = "[yellow]" if stats["over_max_length"] or stats["boundary_merged"] else ""
        console.print(
            f"tokens per example (first {stats['rows_counted']} training rows): mean {stats['mean_total']}, max {stats['max_total']}; "
            f"{warn}{stats['over_max_length']} longer than train.max_length = {stats['max_length']}, "
            f"{stats['boundary_merged']} with a prompt/completion boundary inside a token{'[/]' if warn else ''}", soft_wrap=True)
    for method in summary.get("changed_at_run_time_by", []):
        console.print(f"[yellow]note[/]: method {escape(method)!r} changes the data at run time (prepare_data); shown is the data before it")
    for example in shown:
        body = Text()
        body.append(PROMPT_MARK + "\n", style="bold cyan")
        if example.segments:
            trained = 0
            for segment in example.segments:
                if segment["train"]:
                    trained += 1
                    body.append(f"{TURN_MARK} {trained}\n", style="bold green")
                    body.append(segment["text"], style="green")
                    body.append(f"{END_MARK} {trained}\n", style="bold green")
                else:
                    body.append(segment["text"], style="cyan")
        else:
            body.append(example.prompt or "(none: the whole text is trained on)", style="cyan" if example.prompt else "dim")
        body.append("\n" + COMPLETION_MARK + "\n", style="bold green")
        body.append(example.completion, style="green")
        body.append(example.eos, style="bold magenta")
        body.append("\n" + END_MARK, style="bold green")
        if example.rejected is not None:
            body.append("\n" + REJECTED_MARK + "\n", style="bold red")
            body.append(example.rejected, style="red")
        facts = [f"prompt {example.prompt_tokens} tokens", f"completion {example.completion_tokens} (EOS included)",
                 f"total {example.total_tokens} of max_length {example.max_length}"]
        if example.truncated:
            facts.append(f"[red]the trainer cuts the last {example.truncated} tokens[/]")
        if example.segments:
            facts.append(f"{sum(s['train'] for s in example.segments) + 1} assistant turns trained")
        if example.label is not None:
            facts.append("label: [green]true (a good answer)[/]" if example.label else "label: [red]false (a bad answer)[/]")
        if example.tools:
            facts.append(f"tools: {escape(', '.join(example.tools))}")
        if example.boundary_merged:
            facts.append("[yellow]the prompt's last token merges with the completion: trained context differs from inference[/]")
        title = f"{example.split} example {example.index}" + (f" · source {escape(example.source)}" if example.source else "")
        console.print(Panel(body, title=title, title_align="left"))
        console.print("  " + " · ".join(facts), soft_wrap=True)
