"""From a planned ``[data]`` section to the rows a run trains and evaluates on: each source read and
rendered, exact duplicates dropped on request, several sources mixed by weight, and, with
``data.streaming``, training rows read one at a time as the trainer asks for them.

A mixture draws each training row from source *i* with probability ``weight_i / sum(weights)``
(a ``random.Random(seed)`` decides, so a seed gives one mix), taking that source's next row, and
stops when the first source runs out: no row is repeated and the shares hold. ``data.max_train``
caps the mix. Evaluation rows are each source's own, tagged with the source's label (``source``),
so the core's evaluation reports every metric per source as well.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ptrain._data import (
    Catalog,
    DataPlan,
    Rows,
    SourcePlan,
    chunk_texts,
    normaliser,
    render,
    request_for,
    source_rows,
    templates,
)
from ptrain._errors import DataError
from ptrain._sections import DataSection
from ptrain._types import ROW_FIELDS

SOURCE_FIELD = "source"
"""The field naming each row's source (its label) in a mixture."""


@dataclass
class Prepared:
    """Rows ready for the trainer: ``train`` in memory, or ``stream()`` yielding them one pass at a time."""

    eval: Rows
    summary: dict[str, Any]
    """What ``metrics.json`` records under ``data``: rows per source, duplicates, how prompts were rendered."""
    train: Rows | None = None
    stream: Callable[[], Iterator[dict[str, Any]]] | None = None
    sample: Rows = field(default_factory=list)
    """With ``stream``: the first training rows, to tell the columns and their types."""

    def rows(self) -> Iterable[dict[str, Any]]:
        return self.train if self.train is not None else self.stream()  # type: ignore[misc]


def rendered_rows(section: DataSection, seed: int, tokenizer: Any = None, catalog: Catalog | None = None) -> tuple[Rows, Rows]:
    """The whole data path on one ``[data]`` section: plan, read, split, mix and render (train, eval)."""
    from ptrain._data import core_catalog, plan

    catalog = catalog or core_catalog()
    prepared = splits(plan(section, catalog, seed), section, catalog, seed, tokenizer)
    return list(prepared.rows()), prepared.eval


def row_key(row: dict[str, Any]) -> int:
    """A 64-bit digest of a row's normalised fields: equal for exact duplicates."""
    content = json.dumps({k: row.get(k) for k in ROW_FIELDS if k in row}, sort_keys=True, ensure_ascii=False, default=str)
    return int.from_bytes(hashlib.blake2b(content.encode("utf-8"), digest_size=8).digest(), "big")


class Dedup:
    """Drops rows seen before (in this pass) and rows that repeat an evaluation row; counts both per source."""

    def __init__(self, evaluation: Rows):
        self.eval_keys = {row_key(r) for r in evaluation}
        self.seen: set[int] = set()
        self.dropped: dict[str, int] = {}

    def keep(self, row: dict[str, Any], label: str) -> bool:
        key = row_key(row)
        if key in self.seen or key in self.eval_keys:
            self.dropped[label] = self.dropped.get(label, 0) + 1
            return False
        self.seen.add(key)
        return True


def interleave(streams: list[Iterator[dict[str, Any]]], weights: list[float], seed: int, counts: list[int]) -> Iterator[dict[str, Any]]:
    """Rows drawn from ``streams`` with probabilities proportional to ``weights`` until the first runs out."""
    rng = random.Random(seed)
    choices = range(len(streams))
    while True:
        i = rng.choices(choices, weights)[0]
        row = next(streams[i], None)
        if row is None:
            return
        counts[i] += 1
        yield row


def prompt_settings(plan: DataPlan) -> dict[str, Any]:
    """How the first source's prompts are rendered: what ``ptrain chat`` needs to talk to the trained model alike."""
    first = plan.sources[0]
    template, template_no_input = templates(first.train, first.section)
    conversations = first.train.format is not None and "context" in first.train.format.fields  # rendered with the chat template
    return {"chat": first.section.chat or conversations, "template": template, "template_no_input": template_no_input}


def splits(plan: DataPlan, section: DataSection, catalog: Catalog, seed: int, tokenizer: Any, max_length: int | None = None) -> Prepared:
    """The rows of the planned data: see the module's docstring. With ``max_length``, plain-text rows longer
    than it are cut into chunks that fit (counted in the summary: ``text_rows_chunked``)."""
    if section.streaming:
        return _streamed(plan, section, catalog, seed, tokenizer, max_length)
    trains, evals = [], []
    chunked = 0
    for source in plan.sources:
        train, evaluation = source_rows(source, catalog, seed)
        render(train, source.section, tokenizer, templates(source.train, source.section))
        render(evaluation, source.section, tokenizer, templates(source.eval or source.train, source.section))
        train, count = chunk_texts(train, tokenizer, max_length)
        evaluation, _ = chunk_texts(evaluation, tokenizer, max_length)
        chunked += count
        if plan.mixed:
            for row in itertools.chain(train, evaluation):
                row[SOURCE_FIELD] = source.label
        trains.append(train)
        evals.append(evaluation)
    evaluation = [row for rows in evals for row in rows]
    dedup = Dedup(evaluation) if section.dedup else None
    if dedup is not None:
        kept = [[r for r in rows if dedup.keep(r, s.label)] for rows, s in zip(trains, plan.sources, strict=True)]
        for source, before, after in zip(plan.sources, trains, kept, strict=True):
            if before and not after:
                _emptied_by_dedup(source, len(before))
        trains = kept
    counts = [len(rows) for rows in trains]
    if plan.mixed:
        available = counts
        counts = [0] * len(trains)
        shuffled = [random.Random(seed + i).sample(rows, len(rows)) for i, rows in enumerate(trains)]
        mixed = interleave([iter(rows) for rows in shuffled], [s.weight for s in plan.sources], seed, counts)
        train = list(itertools.islice(mixed, section.max_train))
    else:
        available = None
        train = trains[0][: section.max_train] if section.max_train is not None else trains[0]
        counts = [len(train)]
    summary = _summary(plan, section, counts, [len(rows) for rows in evals], dedup, "train_rows")
    if available is not None:
        for entry, count in zip(summary["sources"].values(), available, strict=True):
            entry["available_rows"] = count
    summary["train_rows"] = len(train)
    if chunked:
        summary["text_rows_chunked"] = chunked
    return Prepared(evaluation, summary, train=train)


def _emptied_by_dedup(source: Any, rows: int | None) -> None:
    count = f"all {rows:,} training rows" if rows is not None else "every training row it read"
    raise DataError(
        f"{source.train.key} = {source.train.location!r}: data.dedup dropped {count} (each repeats an earlier row or an "
        "evaluation row), leaving no training split; give more distinct rows, evaluate on other rows (eval_source) "
        "or set data.dedup = false"
    )


def _summary(plan: DataPlan, section: DataSection, counts: list[int], eval_counts: list[int], dedup: Dedup | None, count_key: str) -> dict[str, Any]:
    total = sum(s.weight for s in plan.sources)
    sources = {}
    for source, count, eval_count in zip(plan.sources, counts, eval_counts, strict=True):
        entry: dict[str, Any] = {"source": source.train.location, "format": source.train.format.name if source.train.format else None}
        if plan.mixed:
            entry["weight"] = round(source.weight / total, 4)
        entry[count_key] = count
        entry["eval_rows"] = eval_count
        if dedup is not None:
            entry["duplicates_dropped"] = dedup.dropped.get(source.label, 0)
        sources[source.label] = entry
    summary: dict[str, Any] = {"streaming": section.streaming, "eval_rows": sum(eval_counts), "sources": sources}
    if dedup is not None:
        summary["duplicates_dropped"] = sum(dedup.dropped.values())
    summary["prompt"] = prompt_settings(plan)
    return summary


# ------------------------------------------------------------------ streaming


def _raw_stream(source: SourcePlan, seed: int, catalog: Catalog | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    part = source.train
    request = request_for(part, source.section, seed, catalog)
    if part.source.stream is not None:
        return iter(part.source.stream(request))
    return iter(part.source.read(request))  # a source that cannot stream: read whole, as without streaming


def _source_stream(source: SourcePlan, catalog: Catalog, seed: int, tokenizer: Any, skip: int, mixed: bool,
                   max_length: int | None = None) -> Iterator[dict[str, Any]]:
    """One pass over a source's training rows, normalised and rendered, after its ``skip`` held-out rows."""
    raw = _raw_stream(source, seed, catalog)
    first = next(raw, None)
    if first is None:
        raise DataError(f"{source.train.key} = {source.train.location!r}: no rows")
    normalise = normaliser(source.train, source.section, catalog, first)
    prompt_templates = templates(source.train, source.section)
    for index, (where, row) in enumerate(itertools.chain([first], raw)):
        if index < skip:
            continue
        rendered = render([normalise(where, row)], source.section, tokenizer, prompt_templates)
        for piece in chunk_texts(rendered, tokenizer, max_length)[0]:
            if mixed:
                piece[SOURCE_FIELD] = source.label
            yield piece


def _held_out(source: SourcePlan, catalog: Catalog, seed: int, tokenizer: Any, mixed: bool) -> Rows:
    """A streamed source's evaluation rows: its own eval rows, else its first ``eval_size`` rows."""
    from ptrain._data import read

    if source.eval is not None:
        rows = [dict(r) for r in read(source.eval, source.section, catalog, seed)]
        render(rows, source.section, tokenizer, templates(source.eval, source.section))
        if mixed:
            for row in rows:
                row[SOURCE_FIELD] = source.label
        return rows
    return list(itertools.islice(_source_stream(source, catalog, seed, tokenizer, 0, mixed), source.section.eval_size))


def _streamed(plan: DataPlan, section: DataSection, catalog: Catalog, seed: int, tokenizer: Any, max_length: int | None) -> Prepared:
    evals = [_held_out(s, catalog, seed, tokenizer, plan.mixed) for s in plan.sources]
    evaluation = [row for rows in evals for row in rows]
    skips = [0 if s.eval is not None else s.section.eval_size for s in plan.sources]
    counts = [0] * len(plan.sources)
    summary = _summary(plan, section, counts, [len(rows) for rows in evals], Dedup([]) if section.dedup else None, "train_rows_read")
    entries = list(summary["sources"].values())

    def one_pass() -> Iterator[dict[str, Any]]:
        dedup = Dedup(evaluation) if section.dedup else None
        streams = [_source_stream(s, catalog, seed, tokenizer, skip, plan.mixed, max_length)
                   for s, skip in zip(plan.sources, skips, strict=True)]
        passed = [0] * len(streams)
        if plan.mixed:
            rows = interleave(streams, [s.weight for s in plan.sources], seed, passed)
        else:
            rows = streams[0]
        for index, row in enumerate(itertools.islice(rows, section.max_train)):
            if not plan.mixed:
                passed[0] = index + 1
            label = row.get(SOURCE_FIELD, plan.sources[0].label)
            if dedup is not None and not dedup.keep(row, label):
                continue
            yield row
            for source, entry, count in zip(plan.sources, entries, passed, strict=True):  # the most read in one pass
                entry["train_rows_read"] = max(entry["train_rows_read"], count)
                if dedup is not None:
                    entry["duplicates_dropped"] = max(entry["duplicates_dropped"], dedup.dropped.get(source.label, 0))
            if dedup is not None:
                summary["duplicates_dropped"] = sum(e["duplicates_dropped"] for e in entries)

    sample = list(itertools.islice(one_pass(), 64))
    if not sample and section.dedup:  # rows were there, and dedup dropped every one?
        for source, skip in zip(plan.sources, skips, strict=True):
            if next(_source_stream(source, catalog, seed, tokenizer, skip, plan.mixed), None) is not None:
                _emptied_by_dedup(source, None)
    if not sample:
        raise DataError(f"{plan.sources[0].train.location}: no training rows left after the {skips[0]} held out for evaluation")
    for entry in entries:
        entry["train_rows_read"] = 0
        if section.dedup:
            entry["duplicates_dropped"] = 0
    summary["duplicates_dropped"] = 0 if section.dedup else summary.get("duplicates_dropped")
    if not section.dedup:
        summary.pop("duplicates_dropped", None)
    return Prepared(evaluation, summary, stream=one_pass, sample=sample)


def streaming_dataset(prepared: Prepared, shuffle_buffer: int, seed: int) -> Any:
    """A ``datasets.IterableDataset`` over ``prepared.stream()``: every pass reads the sources again,
    rows shuffled within a buffer of ``shuffle_buffer``; columns and types told from the first rows."""
    import datasets
    from datasets.iterable_dataset import ExamplesIterable

    from ptrain._data import to_dataset, uniform_rows

    keys = list(dict.fromkeys(k for row in prepared.sample for k in row))

    def uniform(row: dict[str, Any]) -> dict[str, Any]:
        return uniform_rows([row], keys)[0]

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        yield from enumerate(map(uniform, prepared.stream()))  # type: ignore[misc]

    features = to_dataset([uniform(r) for r in prepared.sample]).features
    # built from its parts: IterableDataset.from_generator fingerprints the generator by pickling
    # it, and a data source's reader need not be picklable
    examples = ExamplesIterable(rows, {})
    dataset = datasets.IterableDataset(examples, info=datasets.DatasetInfo(features=features))
    return dataset.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer > 1 else dataset
