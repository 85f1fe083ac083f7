"""Training data: planned at validation, read and rendered at run time, through the registered sources and formats.

At ``ptrain validate`` the recipe's ``data.source`` (and ``data.eval_source``) is matched to a
registered :class:`DataSource` and its rows' :class:`DataFormat` is found (named, fixed by the
source, or told from a local file's columns); local rows are read and every one normalised, so
a bad row is reported by file and line before anything heavy loads. At run time the rows are
split, rendered into ``prompt`` and ``completion`` (prompt templates, or the tokenizer's chat
template for conversations) and handed to the methods as ``datasets.Dataset`` objects.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ptrain._errors import DataError, RecipeError
from ptrain._formats import PLAIN_TEMPLATE, PLAIN_TEMPLATE_NO_INPUT
from ptrain._schema import build as build_section
from ptrain._schema import suggest
from ptrain._sections import DataSection
from ptrain._types import DataFormat, DataRequest, DataSource

Rows = list[dict[str, Any]]
CORE = "core"


@dataclass
class Catalog:
    """The formats and sources a recipe's plugins (and the core) registered, with who registered each."""

    formats: dict[str, tuple[str, DataFormat]] = field(default_factory=dict)
    sources: list[tuple[str, DataSource]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    """``[data.<name>]`` option objects of the sources and formats that declare ``options``, validated."""
    unlisted_readers: Callable[[str], list[str]] | None = None
    """Location -> installed plugins not in the recipe's methods whose sources read it (for error hints)."""
    source_of: Callable[[str], str] | None = None
    """Dotted key -> the file that set it (for errors in option tables)."""

    def add_formats(self, plugin: str, formats: list[DataFormat]) -> None:
        for fmt in formats or []:
            if fmt.name in self.formats and plugin == CORE and self.formats[fmt.name][0] != CORE:
                continue  # a method's format of the same name replaces the core's (methods register first)
            if fmt.name in self.formats:
                raise RecipeError(
                    f"data format {fmt.name!r} is registered by both {self.formats[fmt.name][0]!r} and {plugin!r}; keep one of them",
                    key="methods",
                )
            self.formats[fmt.name] = (plugin, fmt)

    def add_sources(self, plugin: str, sources: list[DataSource]) -> None:
        self.sources.extend((plugin, source) for source in sources or [])

    def source_for(self, location: str, key: str) -> DataSource:
        for plugin, source in self.sources:
            if source.matches(location):
                if plugin == "core" and source.name == "hub" and SCHEME.match(location):
                    self._unlisted(location, key)  # "sqlite:rows.db" is no hub ID: a plugin not in methods may read it
                return source
        self._unlisted(location, key)
        names = ", ".join(s.name for _, s in self.sources)
        raise RecipeError(f"no data source reads {location!r} (sources: {names}){suggest(location, [s.name for _, s in self.sources])}", key=key)

    def _unlisted(self, location: str, key: str) -> None:
        readers = self.unlisted_readers(location) if self.unlisted_readers is not None else []
        if readers:
            raise RecipeError(
                f"{location!r} is read by a data source of plugin {readers[0]!r}, which is installed and not in methods; "
                f"add {readers[0]!r} to methods",
                key=key,
            )

    def option_schemas(self) -> dict[str, tuple[str, type]]:
        """``[data.<name>]`` table name -> (what declares it, its options dataclass)."""
        schemas: dict[str, tuple[str, type]] = {}
        for plugin, item in [*self.sources, *self.formats.values()]:
            if item.options is None:
                continue
            what = f"data {'source' if isinstance(item, DataSource) else 'format'} {item.name!r} of plugin {plugin!r}"
            if not OPTION_NAME.match(item.name) or item.name in DataSection.__dataclass_fields__:
                raise RecipeError(
                    f"{what} declares options, and its name cannot name a [data.<name>] table (letters, digits, '_' and '-', "
                    f"and no [data] key); rename it",
                    key="methods",
                )
            if item.name in schemas and schemas[item.name][1] is not item.options:
                raise RecipeError(f"{what} and {schemas[item.name][0]} both read options from [data.{item.name}]; rename one", key="methods")
            schemas[item.name] = (what, item.options)
        return schemas

    def take_options(self, table: dict[str, Any], source_of: Callable[[str], str]) -> dict[str, Any]:
        """``table`` (the recipe's ``[data]``) without its ``[data.<name>]`` option tables, which are validated
        against their sources' and formats' schemas and kept in :attr:`options`."""
        self.source_of = source_of
        schemas = self.option_schemas()
        rest = {}
        for key, value in table.items():
            if key in schemas and isinstance(value, dict):
                self.options[key] = build_section(schemas[key][1], value, f"data.{key}", source_of)
            else:
                rest[key] = value
        return rest

    def settings(self, item: DataSource | DataFormat) -> Any:
        """The validated options of a source or format (its ``[data.<name>]`` table, or the defaults); None without options."""
        if item.options is None:
            return None
        if item.name not in self.options:
            self.options[item.name] = build_section(item.options, {}, f"data.{item.name}", self.source_of or (lambda key: "recipe"))
        return self.options[item.name]

    def format(self, name: str, key: str = "data.format") -> DataFormat:
        if name not in self.formats:
            known = sorted(self.formats)
            raise RecipeError(
                f"unknown data format {name!r}{suggest(name, known)} (formats: auto, {', '.join(known)}); a plugin that adds "
                "a format takes part only when the recipe's methods name it",
                key=key,
            )
        return self.formats[name][1]

    def detect(self, columns: set[str], where: str) -> DataFormat:
        """The format whose columns the row has; more columns win, then registration order."""
        candidates = sorted((fmt for _, fmt in self.formats.values()), key=lambda f: -len(f.columns))
        for fmt in candidates:
            if set(fmt.columns) <= columns:
                return fmt
        layouts = "; ".join(f"{f.name}: {', '.join(f.columns)}" for f in candidates)
        raise DataError(
            f"{where}: cannot tell the data format from columns {sorted(columns)} ({layouts}); set data.format and map your "
            'columns with data.columns, e.g. columns = { prompt = "question", completion = "answer" }'
        )


@dataclass
class Part:
    """One place rows come from: a source's training rows, or its separate evaluation rows."""

    location: str
    key: str
    role: str
    source: DataSource
    format: DataFormat | None
    """None until the rows are read (a hub dataset with ``format = "auto"``)."""
    rows: Rows | None = None
    """Normalised rows, once read."""
    sample: Rows | None = None
    """With ``data.streaming``: the first rows, read and checked at validation (never the whole source)."""
    wheres: list[str] | None = None
    """Where each read row is (``chats.jsonl: line 7``), for checks made after normalising."""


@dataclass
class SourcePlan:
    """One source of the recipe's data (the only one, or one of a ``[[data.sources]]`` mixture)."""

    label: str
    weight: float
    section: DataSection
    """This source's own view of ``[data]`` (its format, columns, templates, eval rows)."""
    train: Part
    eval: Part | None
    """A separate source of evaluation rows (``eval_source`` or the source's own eval split); None: held out."""


@dataclass
class DataPlan:
    sources: list[SourcePlan]
    mixed: bool = False

    @property
    def train(self) -> Part:
        return self.sources[0].train

    @property
    def eval(self) -> Part | None:
        return self.sources[0].eval

    @property
    def fields(self) -> frozenset[str] | None:
        """Normalised fields every row will have, or None when only reading the rows can tell."""
        parts = [p for s in self.sources for p in (s.train, s.eval) if p is not None]
        if any(p.format is None for p in parts):
            return None
        return frozenset.intersection(*(p.format.fields for p in parts))  # type: ignore[union-attr]

    @property
    def format_name(self) -> str | None:
        names = [s.train.format.name if s.train.format else None for s in self.sources]
        if None in names:
            return None
        return "+".join(dict.fromkeys(names))  # type: ignore[arg-type]


SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-_]+:")
"""A location that starts like ``sqlite:`` names a source's scheme (hub IDs have no colon)."""
OPTION_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")

STREAM_CHECK_ROWS = 1000
"""With ``data.streaming``, ``ptrain validate`` reads and checks this many rows of each source."""


def plan(section: DataSection, catalog: Catalog, seed: int, read_local: bool = True) -> DataPlan:
    """Match sources and formats to the ``[data]`` section; with ``read_local``, read local rows and normalise
    every one (with ``streaming``, the first :data:`STREAM_CHECK_ROWS`)."""
    sources = []
    for label, weight, prefix, view in section.views():
        source = view.source or ""
        train = _part(source, prefix, "train", view, catalog, seed, read_local)
        evaluation = None
        if view.eval_source:
            evaluation = _part(view.eval_source, prefix, "eval", view, catalog, seed, read_local)
        elif train.source.serves_eval and view.eval_size > 0:
            evaluation = _part(source, prefix, "eval", view, catalog, seed, read_local)
        sources.append(SourcePlan(label, weight, view, train, evaluation))
    return DataPlan(sources, mixed=bool(section.sources))


def _part(location: str, prefix: str, role: str, section: DataSection, catalog: Catalog, seed: int, read_local: bool) -> Part:
    key = f"{prefix}.eval_source" if role == "eval" and section.eval_source else f"{prefix}.source"
    source = catalog.source_for(location, key)
    fmt: DataFormat | None = None
    if section.format != "auto":
        fmt = catalog.format(section.format, f"{prefix}.format")
        if source.format and source.format != fmt.name:
            raise RecipeError(f"{location} has rows in format {source.format!r}, not {fmt.name!r}; remove {prefix}.format", key=f"{prefix}.format")
    elif source.format:
        fmt = catalog.format(source.format)
    part = Part(location, key, role, source, fmt)
    catalog.settings(source)  # a required option is missing: say so at validation
    if fmt is not None:
        catalog.settings(fmt)
    if read_local and source.local:
        streamed = section.streaming and role == "train" and source.stream is not None
        read(part, section, catalog, seed, limit=STREAM_CHECK_ROWS if streamed else None)
    return part


def request_for(part: Part, section: DataSection, seed: int, catalog: Catalog | None = None) -> DataRequest:
    settings = catalog.settings(part.source) if catalog is not None else None
    return DataRequest(part.location, part.key, part.role, section.split, seed, section, settings)  # type: ignore[arg-type]


def read(part: Part, section: DataSection, catalog: Catalog, seed: int, limit: int | None = None) -> Rows:
    """Read and normalise every row of ``part`` (once), or with ``limit`` its first rows (kept as
    ``part.sample``); the first bad row raises a DataError naming it."""
    if limit is None and part.rows is not None:
        return part.rows
    if limit is not None and part.sample is not None:
        return part.sample
    request = request_for(part, section, seed, catalog)
    if limit is not None and part.source.stream is not None:
        raw = list(itertools.islice(part.source.stream(request), limit))
    else:
        raw = part.source.read(request)
        raw = raw[:limit] if limit is not None else raw
    if not raw:
        raise DataError(f"{part.key} = {part.location!r}: no rows")
    normalise = normaliser(part, section, catalog, raw[0])
    rows = [normalise(where, row) for where, row in raw]
    part.wheres = [where for where, _ in raw]
    check_preferences(part, rows, complete=limit is None)
    if limit is None:
        part.rows = rows
    else:
        part.sample = rows
    return rows


def check_preferences(part: Part, rows: Rows, complete: bool = True) -> None:
    """Degenerate preference data, told with counts: a pair whose chosen and rejected answers are equal teaches
    nothing (refused when every pair is so, a warning when some are); unpaired rows all judged the same way
    (every label true, or every one false) leave nothing to contrast (a warning)."""
    import logging

    log = logging.getLogger("ptrain")
    where = f"{part.key} = {part.location!r}"
    pairs = [r for r in rows if "chosen" in r and "rejected" in r]
    if pairs:
        same = sum(1 for r in pairs if str(r["chosen"]).strip() == str(r["rejected"]).strip())
        if same == len(pairs) and complete:
            raise DataError(f"{where}: chosen and rejected are the same answer in all {same:,} rows, so there is no preference "
                            "to learn; give each prompt a better and a worse answer")
        if same:
            log.warning("%s: chosen and rejected are the same answer in %s of %s rows; those rows teach nothing", where,
                        f"{same:,}", f"{len(pairs):,}")
    labels = [r["label"] for r in rows if isinstance(r.get("label"), bool)]
    if labels and complete and (all(labels) or not any(labels)):
        log.warning("%s: all %s labels are %s: nothing to contrast them with, so a method that learns from good and bad "
                    "answers (kto) learns little; add rows labelled %s", where, f"{len(labels):,}", str(labels[0]).lower(),
                    str(not labels[0]).lower())


def normaliser(part: Part, section: DataSection, catalog: Catalog, first: tuple[str, dict[str, Any]]) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
    """The function turning one raw row of ``part`` into normalised fields: ``data.columns`` renames,
    the format (told from ``first`` when not known yet) normalises, and every field it promises is checked."""
    mapping = {v: k for k, v in section.columns.items()}  # source column -> the format's name
    first_where, first_row = first
    missing = [v for v in section.columns.values() if v not in first_row]
    if missing:
        raise DataError(f"{first_where}: data.columns maps column(s) {missing} that the data does not have; columns: {sorted(first_row)}")
    if part.format is None:
        part.format = catalog.detect({mapping.get(k, k) for k in first_row}, first_where)
    fmt = part.format
    settings = catalog.settings(fmt)
    convert = fmt.normalize if settings is None else (lambda row, where: fmt.normalize(row, where, settings))  # type: ignore[call-arg]

    roles = section.roles

    def normalise(where: str, raw: dict[str, Any]) -> dict[str, Any]:
        row = {mapping.get(k, k): map_roles(v, roles) if roles else v for k, v in raw.items()}
        absent = [c for c in fmt.columns if c not in row]
        if absent:
            raise DataError(f"{where}: format {fmt.name!r} needs column(s) {absent}; found {sorted(row)}; map yours with data.columns")
        normalised = convert(row, where)
        size = _text_size(normalised)
        if size > section.max_row_chars:
            raise DataError(
                f"{where}: the row holds {size:,} characters of text, above data.max_row_chars = {section.max_row_chars:,}; "
                "shorten or remove the row (or raise data.max_row_chars)"
            )
        for name in fmt.fields:
            if normalised.get(name) in (None, "", []):
                raise DataError(f"{where}: format {fmt.name!r} gave no {name!r} for this row; fix or remove the row")
        normalised.setdefault("task", str(row.get("task") or ""))
        return normalised

    return normalise


def map_roles(value: Any, roles: dict[str, str]) -> Any:
    """Messages (a list of dicts, or one) with their ``role`` / ``from`` tags renamed by ``data.roles``."""
    if isinstance(value, dict):
        return {k: roles.get(v, v) if k in ("role", "from") and isinstance(v, str) else v for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return [map_roles(m, roles) for m in value]
    return value


def _text_size(row: dict[str, Any]) -> int:
    size = 0
    for value in row.values():
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, list):
            size += sum(len(str(m.get("content", ""))) if isinstance(m, dict) else len(str(m)) for m in value)
    return size


def source_rows(source: SourcePlan, catalog: Catalog, seed: int) -> tuple[Rows, Rows]:
    """One source's train and eval rows, normalised (not yet rendered): its own eval rows, or
    ``eval_size`` rows held out of a seeded shuffle of its training rows."""
    section = source.section
    train = [dict(r) for r in read(source.train, section, catalog, seed)]
    if source.eval is not None:
        evaluation = [dict(r) for r in read(source.eval, section, catalog, seed)]
    else:
        if section.eval_size >= len(train):
            raise DataError(
                f"{section.source}: {len(train)} rows cannot spare data.eval_size = {section.eval_size} for evaluation; "
                "lower data.eval_size or give data.eval_source"
            )
        random.Random(seed).shuffle(train)
        evaluation, train = train[: section.eval_size], train[section.eval_size :]
    return train, evaluation


def load_rows(data: DataPlan, section: DataSection, catalog: Catalog, seed: int) -> tuple[Rows, Rows]:
    """Train and eval rows of a single-source plan, normalised (not yet rendered)."""
    train, evaluation = source_rows(data.sources[0], catalog, seed)
    if section.max_train is not None:
        train = train[: section.max_train]
    return train, evaluation


def chat_prompt(tokenizer: Any, instruction: str, input: str = "") -> str:
    """One user turn (instruction, then input) through the tokenizer's chat template, ready for the answer."""
    content = f"{instruction}\n\n{input}" if input else instruction
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)


def render_prompt(row: dict[str, Any], template: str, template_no_input: str, tokenizer: Any = None, chat: bool = False) -> str:
    """The prompt text of a normalised row: its conversation through the chat template, the chat
    template around instruction and input (``chat``), a prompt template, or nothing (plain text)."""
    if row.get("context"):
        return tokenizer.apply_chat_template(row["context"], tokenize=False, add_generation_prompt=True)
    if not row.get("instruction") and not row.get("input"):
        return ""
    if chat:
        return chat_prompt(tokenizer, row["instruction"], row.get("input", ""))
    if row.get("input"):
        return template.format(instruction=row["instruction"], input=row["input"])
    return template_no_input.format(instruction=row["instruction"])


def templates(part: Part, section: DataSection) -> tuple[str, str]:
    """The prompt templates of a part's rows: ``data.template``, else the source's, the format's, or plain."""
    default = part.source.template or (part.format.template if part.format else None) or (PLAIN_TEMPLATE, PLAIN_TEMPLATE_NO_INPUT)
    return section.template or default[0], section.template_no_input or default[1]


def render(rows: Rows, section: DataSection, tokenizer: Any, prompt_templates: tuple[str, str]) -> Rows:
    """Add ``prompt`` and ``completion`` (the text the trainer sees) to normalised rows, in place; a
    conversation's earlier assistant turns, trained too (``data.train_turns = "all"``), are marked in
    ``segments`` (the prompt cut into spans, each ``{"text", "train"}``)."""
    from ptrain._templates import (
        has_tools,
        read_template,
        render_turn,
        tokenizer_renderer,
        tool_problem,
        tools_error,
    )

    template, template_no_input = prompt_templates
    if section.chat_template and tokenizer is not None:
        tokenizer.chat_template = read_template(section.chat_template)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if (section.chat or any(r.get("context") for r in rows)) and not has_template:
        raise DataError(
            "the data needs the tokenizer's chat template (data.chat = true or chat messages), and this tokenizer has none; "
            "set data.chat_template, set model.tokenizer to one that has it, or use prompt templates (data.template)"
        )
    chat = tokenizer_renderer(tokenizer) if has_template else None
    owner = "data.chat_template" if section.chat_template else f"model {getattr(tokenizer, 'name_or_path', '') or 'tokenizer'}"
    for index, row in enumerate(rows):
        where = f"{section.source}: row {index + 1}"
        if row.get("context") and has_tools(row):
            prompt, answer = render_turn(chat, row)  # type: ignore[arg-type]
            problem = tool_problem(chat, row, prompt, answer)  # type: ignore[arg-type]
            if problem:
                raise tools_error(where, owner, problem)
            if row.get("tool_calls"):  # the answer is what the template makes of the calls (the trainer adds EOS)
                eos = getattr(tokenizer, "eos_token", None) or ""
                answer = answer.rstrip()
                row["output"] = (answer.removesuffix(eos) if eos else answer).rstrip()
            row["prompt"] = prompt
        else:
            row["prompt"] = render_prompt(row, template, template_no_input, tokenizer, section.chat)
        row["completion"] = row["output"]
        if section.train_turns == "all" and any(m["role"] == "assistant" for m in row.get("context") or []):
            row["segments"] = turn_segments(chat, row, where)  # type: ignore[arg-type]
    return rows


def turn_segments(chat: Any, row: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The row's prompt cut into spans: each earlier assistant turn (as the template renders it) trained, the rest not."""
    context, tools = row["context"], row.get("tools") or None
    segments, done = [], ""
    for i, message in enumerate(context):
        if message["role"] != "assistant":
            continue
        before = chat(context[:i], tools, True) if i else ""
        through = chat(context[: i + 1], tools, False)
        if not (before.startswith(done) and through.startswith(before)):
            raise DataError(
                f"{where}: the chat template renders the conversation's turns differently as it grows (turn {i}), so its "
                'assistant turns cannot be told apart; set data.train_turns = "last" to train the last answer only'
            )
        segments += [{"text": before[len(done):], "train": False}, {"text": through[len(before):], "train": True}]
        done = through
    if not row["prompt"].startswith(done):
        raise DataError(f"{where}: the chat template renders the conversation differently with and without the last answer; "
                        'set data.train_turns = "last"')
    segments.append({"text": row["prompt"][len(done):], "train": False})
    return [s for s in segments if s["text"]]


def training_tokens(dataset: Any, tokenizer: Any) -> Any | None:
    """The rows as ``input_ids`` with a ``completion_mask`` (1: in the loss) when some conversation's earlier
    assistant turns are trained too (its ``segments``), else None: TRL's own tokenizing of ``prompt`` +
    ``completion`` is then the same. Token spans follow the text spans; EOS ends each row, trained."""
    import datasets

    names = list(dataset.column_names or [])
    if "segments" not in names or (isinstance(dataset, datasets.Dataset) and not any(dataset["segments"])):
        return None

    def tokenize(row: dict[str, Any]) -> dict[str, Any]:
        spans = [(s["text"], s["train"]) for s in row["segments"]] if row["segments"] else [(row["prompt"], False)]
        ids, mask = span_tokens(tokenizer, spans, row["completion"])
        return {"input_ids": ids, "completion_mask": mask}

    return dataset.map(tokenize, remove_columns=names)


CHUNK_MARGIN = 4
"""Tokens a chunk of plain text leaves free under ``train.max_length`` (BOS, EOS, a boundary that tokenizes apart)."""


def chunk_texts(rows: Rows, tokenizer: Any, max_length: int | None) -> tuple[Rows, int]:
    """Plain-text rows (no prompt) longer than ``max_length`` tokens cut into consecutive chunks that fit, at
    token boundaries: no tail is lost, where truncation would drop it. ``(rows, texts chunked)``."""
    if not max_length or tokenizer is None:
        return rows, 0
    out, chunked = [], 0
    size = max(max_length - CHUNK_MARGIN, 1)
    for row in rows:
        if row.get("prompt") or row.get("context") or not row.get("completion"):
            out.append(row)
            continue
        text = row["completion"]
        encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        offsets = encoded["offset_mapping"]
        if len(offsets) <= size:
            out.append(row)
            continue
        chunked += 1
        starts = [0] + [offsets[i][0] for i in range(size, len(offsets), size)]
        for start, end in zip(starts, [*starts[1:], len(text)], strict=True):
            out.append(row | {"output": text[start:end], "completion": text[start:end]})
    return out, chunked


def span_tokens(tokenizer: Any, spans: list[tuple[str, bool]], completion: str) -> tuple[list[int], list[int]]:
    """Token ids of the spans then the completion (with EOS), and a mask of the trained spans' tokens."""
    eos = tokenizer.eos_token or ""
    spans = [*[(t, train) for t, train in spans if t], (completion if completion.endswith(eos) else completion + eos, True)]
    text = "".join(t for t, _ in spans)
    ids = tokenizer(text)["input_ids"]
    mask: list[int] = []
    offset = 0
    for span, train in spans:
        offset += len(span)
        end = len(ids) if offset == len(text) else common_prefix(tokenizer(text[:offset])["input_ids"], ids)
        mask += [int(train)] * max(end - len(mask), 0)
    return ids, mask


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def to_dataset(rows: Rows) -> Any:
    """A ``datasets.Dataset`` of rows; fields some rows lack get an empty value (text "", list [], label None);
    tools and tool calls are kept as JSON text (their schemas differ from row to row)."""
    import datasets

    table = uniform_rows(rows, list(dict.fromkeys(k for row in rows for k in row)))
    return datasets.Dataset.from_list(table)


EMPTY: dict[str, Any] = {"context": [], "label": None, "segments": [], "tools": "", "tool_calls": ""}


def uniform_rows(rows: Rows, keys: list[str]) -> Rows:
    """Rows with every key in ``keys`` (see :func:`to_dataset`)."""
    import json

    def value(row: dict[str, Any], key: str) -> Any:
        found = row.get(key, EMPTY.get(key, ""))
        if key in ("tools", "tool_calls") and not isinstance(found, str):
            return json.dumps(found, ensure_ascii=False)
        if key == "context" and any("tool_calls" in m for m in found):
            return [m | {"tool_calls": json.dumps(m["tool_calls"], ensure_ascii=False)} if "tool_calls" in m else m for m in found]
        return found

    return [{k: value(row, k) for k in keys} for row in rows]


def core_catalog() -> Catalog:
    """The core's formats and sources alone (what every recipe has)."""
    from ptrain._formats import CORE_FORMATS
    from ptrain._sources import CORE_SOURCES

    catalog = Catalog()
    catalog.add_formats("core", CORE_FORMATS)
    catalog.add_sources("core", CORE_SOURCES)
    return catalog
