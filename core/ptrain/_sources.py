"""The core's data sources, registered through the ``data_sources`` hook like any plugin's:
local files, the bundled task generator, and hub datasets."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ptrain import _paths
from ptrain._errors import DataError, RecipeError
from ptrain._formats import ALPACA_TEMPLATE, ALPACA_TEMPLATE_NO_INPUT
from ptrain._types import DataRequest, DataSource

Rows = list[tuple[str, dict[str, Any]]]


def _local_path(request: DataRequest) -> Path:
    path = _paths.expand(request.location)
    try:
        found = path is not None and path.is_file()
    except OSError:
        found = False
    if not found:
        raise RecipeError(f"data file {request.location!r} not found (relative paths are read from {Path.cwd()}); check the path", key=request.key)
    return path  # type: ignore[return-value]


def read_local(request: DataRequest) -> Rows:
    """``[(where, row)]`` of a local .jsonl/.json/.csv/.parquet file; ``where`` is e.g. ``data.jsonl: line 7``."""
    path = _local_path(request)
    rows = list(_iter_file(path))
    if not rows:
        raise DataError(f"{path}: no rows; the file is empty")
    return rows


def stream_local(request: DataRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    """The rows of a local file one at a time: .jsonl and .csv line by line, .parquet by record batch
    (a .json array is parsed whole)."""
    return _iter_file(_local_path(request))


def _iter_file(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
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
                    yield f"{path}: line {number}", row
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
            for i, row in enumerate(data, 1):
                if not isinstance(row, dict):
                    raise DataError(f"{path}: row {i}: expected an object with named fields, got {type(row).__name__}")
                yield f"{path}: row {i}", row
        elif path.suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle)
                try:
                    for row in reader:
                        where = f"{path}: line {reader.line_num}"
                        if None in row:
                            raise DataError(f"{where}: more fields than the header has columns; quote fields that contain commas")
                        yield where, dict(row)
                except csv.Error as err:
                    raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({err})") from None
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
                number = 0
                for batch in batches:
                    for row in batch.to_pylist():
                        number += 1
                        yield f"{path}: row {number}", row
            except Exception as err:  # pyarrow raises its own types for every kind of broken file
                if isinstance(err, DataError):
                    raise
                raise DataError(f"{path}: not a readable parquet file ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
        else:
            raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(_paths.DATA_SUFFIXES)}")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply to read") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory; name a data file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None


def read_hub(request: DataRequest) -> Rows:
    import datasets

    try:
        dataset = datasets.load_dataset(request.location, split=request.split)
    except Exception as err:  # datasets raises many types for "not found" and "offline"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"{request.key} = {request.location!r}: cannot load it as a local file or hub dataset ({first}); "
            "check the path, or download the dataset where the hub is reachable and point it at a local file"
        ) from None
    return [(f"{request.location}[{request.split}]: row {i}", row) for i, row in enumerate(dataset, 1)]


def stream_hub(request: DataRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        dataset = datasets.load_dataset(request.location, split=request.split, streaming=True)
    except Exception as err:  # datasets raises many types for "not found" and "offline"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{request.key} = {request.location!r}: cannot stream it from the hub ({first})") from None
    return ((f"{request.location}[{request.split}]: row {i}", row) for i, row in enumerate(dataset, 1))


def _tasks(request: DataRequest) -> list[dict[str, Any]]:
    """The generator's rows: eval rows never repeat a training input."""
    from ptrain._tasks import generate

    options, seed = request.options, request.seed
    train = generate(options.tasks, options.num_examples, seed)
    if request.role == "train":
        return train
    return generate(options.tasks, options.eval_size, seed + 1, exclude={(r["task"], r["input"]) for r in train})


def read_tasks(request: DataRequest) -> Rows:
    return [(f"{request.location}: row {i}", row) for i, row in enumerate(_tasks(request), 1)]


def read_preferences(request: DataRequest) -> Rows:
    from ptrain._tasks import preference_pairs

    pairs = preference_pairs(_tasks(request), request.seed + (request.role == "eval"))
    return [(f"{request.location}: row {i}", row) for i, row in enumerate(pairs, 1)]


CORE_SOURCES = [
    DataSource("local file", _paths.is_local, read_local, local=True, stream=stream_local,
               description="a .jsonl, .json, .csv or .parquet file on this machine"),
    DataSource("builtin:tasks", lambda name: name == "builtin:tasks", read_tasks, local=True, format="alpaca", serves_eval=True,
               description="bundled tasks with checkable answers (arithmetic, reverse, uppercase, avro)",
               template=(ALPACA_TEMPLATE, ALPACA_TEMPLATE_NO_INPUT)),
    DataSource("builtin:preferences", lambda name: name == "builtin:preferences", read_preferences, local=True,
               format="preference", serves_eval=True, description="the bundled tasks as preference pairs",
               template=(ALPACA_TEMPLATE, ALPACA_TEMPLATE_NO_INPUT)),
    DataSource("hub", lambda name: not name.startswith(_paths.BUILTIN) and not _paths.is_local(name), read_hub, stream=stream_hub,
               description="a Hugging Face Hub dataset ID (data.split picks the split)"),
]
