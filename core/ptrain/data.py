"""Reading training data: local files, hub datasets and the bundled task generator.

Every source is normalised to rows with ``instruction``, ``input``, ``output`` (the raw fields),
``prompt`` and ``completion`` (the rendered text the trainer sees) and ``task``. Preference data
(format ``preference``, or ``builtin:preferences``) also keeps ``chosen`` and ``rejected``, with
``completion`` = ``chosen``. Rows that cannot be used are reported by file and row number, never
skipped silently.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

from ptrain.config import ALPACA_TEMPLATE, ALPACA_TEMPLATE_NO_INPUT, BUILTIN_SOURCES, DataSection
from ptrain.errors import DataError

FORMATS: dict[str, tuple[str, ...]] = {
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "dolly": ("instruction", "response"),
    "messages": ("messages",),
    "preference": ("chosen", "rejected"),
}
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def check_local_files(section: DataSection) -> None:
    """Parse the local data files the recipe names, so that a broken file stops the run before a model loads."""
    for key, source in (("data.source", section.source), ("data.eval_source", section.eval_source)):
        if source and not source.startswith("builtin:") and is_local(source):
            read_rows(source, section.split, key)


def is_local(source: str) -> bool:
    try:
        path = Path(source).expanduser()
        return path.suffix in LOCAL_SUFFIXES or path.exists()
    except (OSError, ValueError, RuntimeError):  # NUL bytes, unknown ~user, names too long
        return True


def read_rows(source: str, split: str = "train", key: str = "data.source") -> list[tuple[str, dict[str, Any]]]:
    """``[(where, row)]`` from a local file or a hub dataset; ``where`` is e.g. ``data.jsonl: line 7``."""
    if is_local(source):
        try:
            path = Path(source).expanduser()
            found = path.is_file()
        except (OSError, ValueError, RuntimeError):
            found = False
        if not found:
            raise DataError(f"{source!r}: data file not found; check {key}")
        return _read_local(path)
    return _read_hub(source, split)


def _read_local(path: Path) -> list[tuple[str, dict[str, Any]]]:
    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}: line {number}: not valid JSON ({err.msg} at column {err.colno}); fix or remove the line") from None
                    except ValueError as err:  # e.g. an integer too long to convert
                        raise DataError(f"{path}: line {number}: unreadable value ({err}); fix or remove the line") from None
                    except RecursionError:
                        raise DataError(f"{path}: line {number}: nested too deeply to read; fix or remove the line") from None
                    if not isinstance(row, dict):  # report problems in file order
                        raise DataError(f"{path}: line {number}: expected an object with named fields, got {type(row).__name__}")
                    rows.append((f"{path}: line {number}", row))
        elif path.suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
            except ValueError as err:
                raise DataError(f"{path}: unreadable value ({err})") from None
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON array of rows (or {{\"data\": [...]}}), got {type(data).__name__}")
            rows = [(f"{path}: row {i}", row) for i, row in enumerate(data, 1)]
        elif path.suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle)
                try:
                    for row in reader:
                        where = f"{path}: line {reader.line_num}"
                        if None in row:
                            raise DataError(f"{where}: more fields than the header has columns; quote fields that contain commas")
                        rows.append((where, dict(row)))
                except csv.Error as err:
                    raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({err})") from None
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as err:  # pyarrow raises its own types for every kind of broken file
                raise DataError(f"{path}: not a readable parquet file ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
            rows = [(f"{path}: row {i}", row) for i, row in enumerate(table.to_pylist(), 1)]
        else:
            raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(LOCAL_SUFFIXES)}")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply to read") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with named fields, got {type(row).__name__}")
    if not rows:
        raise DataError(f"{path}: no rows; the file is empty")
    return rows


def _read_hub(name: str, split: str) -> list[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # datasets raises many types for "not found" and "offline"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"data.source = {name!r}: cannot load it as a local file or hub dataset ({first}); "
            "check the path, or download the dataset where the hub is reachable and point data.source at a local file"
        ) from None
    return [(f"{name}[{split}]: row {i}", row) for i, row in enumerate(dataset, 1)]


def detect_format(columns: set[str], where: str) -> str:
    if "messages" in columns:
        return "messages"
    if {"chosen", "rejected"} <= columns:
        return "preference"
    if {"prompt", "completion"} <= columns:
        return "prompt_completion"
    if {"instruction", "output"} <= columns:
        return "alpaca"
    if {"instruction", "response"} <= columns:
        return "dolly"
    raise DataError(
        f"{where}: cannot tell the data format from columns {sorted(columns)}; set data.format "
        "(prompt_completion, alpaca, dolly, messages, preference) and map your columns with data.columns, "
        'e.g. columns = { prompt = "question", completion = "answer" }'
    )


def _text(row: dict[str, Any], key: str, where: str, required: bool) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip() and required):
        if required:
            raise DataError(f"{where}: missing or empty {key!r}; every row needs it (or drop the row)")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: {key!r} must be text, got {type(value).__name__}")
    return str(value)


def normalise(row: dict[str, Any], fmt: str, where: str, tokenizer: Any = None) -> dict[str, str]:
    """One source row as ``task, instruction, input, output`` (+ ``chat_prompt`` for messages)."""
    if fmt == "preference":
        return _normalise_preference(row, where, tokenizer)
    if fmt == "prompt_completion":
        return {"instruction": _text(row, "prompt", where, True), "input": "", "output": _text(row, "completion", where, True)}
    if fmt == "alpaca":
        return {
            "instruction": _text(row, "instruction", where, True),
            "input": _text(row, "input", where, False),
            "output": _text(row, "output", where, True),
        }
    if fmt == "dolly":
        return {
            "instruction": _text(row, "instruction", where, True),
            "input": _text(row, "context", where, False),
            "output": _text(row, "response", where, True),
        }
    messages = row.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise DataError(f"{where}: 'messages' must be a list of at least two {{role, content}} objects")
    _check_messages(messages, where, "messages")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's answer to learn, got role {messages[-1]['role']!r}")
    return _chat_row(messages[:-1], messages[-1]["content"], where, tokenizer)


def _check_messages(messages: list[Any], where: str, key: str) -> None:
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or message.get("role") not in (
            "system", "user", "assistant", "tool"
        ):
            raise DataError(f"{where}: {key}[{i}] must be {{role: system|user|assistant|tool, content: text}}")


def _chat_row(context: list[dict[str, str]], answer: str, where: str, tokenizer: Any) -> dict[str, str]:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: chat messages need a tokenizer with a chat template; set model.tokenizer to one that has it")
    prompt = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
    user = next((m["content"] for m in reversed(context) if m["role"] == "user"), "")
    return {"instruction": user, "input": "", "output": answer, "chat_prompt": prompt}


def _answer(row: dict[str, Any], key: str, where: str) -> tuple[str, list[Any] | None]:
    """A preference answer as text, plus the conversation before it when given in chat form."""
    value = row.get(key)
    if isinstance(value, list):
        _check_messages(value, where, key)
        if not value or value[-1]["role"] != "assistant":
            raise DataError(f"{where}: {key!r} in chat form must end with the assistant's answer")
        return value[-1]["content"], value[:-1]
    return _text(row, key, where, True), None


def _normalise_preference(row: dict[str, Any], where: str, tokenizer: Any) -> dict[str, str]:
    """``prompt``/``chosen``/``rejected`` as text, or in TRL's chat forms (explicit or implicit prompt)."""
    chosen, chosen_context = _answer(row, "chosen", where)
    rejected, _ = _answer(row, "rejected", where)
    prompt = row.get("prompt")
    if isinstance(prompt, list) or (prompt is None and chosen_context):
        context = prompt if isinstance(prompt, list) else chosen_context
        _check_messages(context, where, "prompt")
        return _chat_row(context, chosen, where, tokenizer) | {"chosen": chosen, "rejected": rejected}
    if prompt is None:
        raise DataError(f"{where}: format 'preference' needs a 'prompt' column (or chosen/rejected as chat messages)")
    return {"instruction": _text(row, "prompt", where, True), "input": "", "output": chosen, "chosen": chosen, "rejected": rejected}


def default_templates(fmt: str, section: DataSection) -> tuple[str, str]:
    if fmt in ("prompt_completion", "preference"):
        return section.template or "{instruction}\n{input}", section.template_no_input or "{instruction}"
    return section.template or ALPACA_TEMPLATE, section.template_no_input or ALPACA_TEMPLATE_NO_INPUT


def chat_prompt(tokenizer: Any, instruction: str, input: str = "") -> str:
    """One user turn (instruction, then input) through the tokenizer's chat template, ready for the answer."""
    content = f"{instruction}\n\n{input}" if input else instruction
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)


def render_prompt(row: dict[str, str], template: str, template_no_input: str) -> str:
    if row.get("chat_prompt"):
        return row["chat_prompt"]
    if row["input"]:
        return template.format(instruction=row["instruction"], input=row["input"])
    return template_no_input.format(instruction=row["instruction"])


def load_rows(section: DataSection, seed: int, tokenizer: Any = None) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Train and eval rows, normalised and rendered, as plain dicts."""
    if section.source in BUILTIN_SOURCES:
        from ptrain import tasks

        train = tasks.generate(section.tasks, section.num_examples, seed)
        evaluation = tasks.generate(section.tasks, section.eval_size, seed + 1, exclude={(r["task"], r["input"]) for r in train})
        if section.source == "builtin:preferences":
            train, evaluation = tasks.preference_pairs(train, seed), tasks.preference_pairs(evaluation, seed + 1)
        fmt = "alpaca"
    else:
        fmt, train = _load_source(section.source, section, tokenizer, "data.source")
        if section.eval_source:
            _, evaluation = _load_source(section.eval_source, section, tokenizer, "data.eval_source")
        else:
            if section.eval_size >= len(train):
                raise DataError(
                    f"{section.source}: {len(train)} rows cannot spare data.eval_size = {section.eval_size} for evaluation; "
                    "lower data.eval_size or give data.eval_source"
                )
            random.Random(seed).shuffle(train)
            evaluation, train = train[: section.eval_size], train[section.eval_size :]
    if section.max_train is not None:
        train = train[: section.max_train]
    template, template_no_input = default_templates(fmt, section)
    if section.chat and not getattr(tokenizer, "chat_template", None):
        raise DataError("data.chat = true needs a tokenizer with a chat template; set model.tokenizer to one, or use data.template")
    for row in (*train, *evaluation):
        row.setdefault("task", "")
        if section.chat and not row.get("chat_prompt"):
            row["chat_prompt"] = chat_prompt(tokenizer, row["instruction"], row["input"])
        row["prompt"] = render_prompt(row, template, template_no_input)
        row["completion"] = row["output"]
        row.pop("chat_prompt", None)
    return train, evaluation


def _load_source(source: str, section: DataSection, tokenizer: Any, key: str) -> tuple[str, list[dict[str, str]]]:
    raw = read_rows(source, section.split, key)
    mapping = {v: k for k, v in section.columns.items()}  # source column -> format column
    renamed = [(where, {mapping.get(k, k): v for k, v in row.items()}) for where, row in raw]
    missing = [v for v in section.columns.values() if v not in raw[0][1]]
    if missing:
        raise DataError(f"{raw[0][0]}: data.columns maps column(s) {missing} that the data does not have; columns: {sorted(raw[0][1])}")
    fmt = section.format if section.format != "auto" else detect_format(set(renamed[0][1]), raw[0][0])
    needed = FORMATS[fmt]
    for where, row in renamed:
        absent = [k for k in needed if k not in row]
        if absent:
            raise DataError(
                f"{where}: format {fmt!r} needs column(s) {absent}; found {sorted(row)}; map yours with data.columns"
            )
    rows = [normalise(row, fmt, where, tokenizer) | {"task": str(row.get("task", ""))} for where, row in renamed]
    return fmt, rows


def to_dataset(rows: list[dict[str, str]]) -> Any:
    import datasets

    return datasets.Dataset.from_list(rows)

