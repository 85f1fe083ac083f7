"""Recipes: TOML files that say which methods take part in a run and how.

Loading a recipe reads the file, merges it over its ``extends`` chain, applies ``--set``
overrides, then validates every section (the core's and each method's) against its schema.
All of it happens before torch is imported. Every error names the file (or ``--set``) that
holds the offending key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptrain import schema
from ptrain.config import (
    BUILTIN_SOURCES,
    DataSection,
    DistributedSection,
    EvalSection,
    ModelSection,
    OutputSection,
    TrainSection,
)
from ptrain.errors import RecipeError, UsageError

CORE_SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "train": TrainSection,
    "eval": EvalSection,
    "output": OutputSection,
    "distributed": DistributedSection,
}
TOP_LEVEL_KEYS = {"name": str, "description": str, "extends": str, "methods": list, "seed": int}
SET_SOURCE = "--set"


@dataclass
class Recipe:
    """A validated recipe: the methods in call order and one validated object per section."""

    name: str
    methods: list[str]
    seed: int
    sections: dict[str, Any]
    path: Path | None = None
    description: str = ""
    plugin_sections: dict[str, str] = field(default_factory=dict)
    """Section name -> the method that owns it."""
    plugins: Any = field(default=None, repr=False, compare=False)
    """The :class:`ptrain.plugins.MethodSet` the recipe was validated with."""

    @property
    def model(self) -> ModelSection:
        return self.sections["model"]

    @property
    def data(self) -> DataSection:
        return self.sections["data"]

    @property
    def train(self) -> TrainSection:
        return self.sections["train"]

    @property
    def eval(self) -> EvalSection:
        return self.sections["eval"]

    @property
    def output(self) -> OutputSection:
        return self.sections["output"]

    @property
    def distributed(self) -> DistributedSection:
        return self.sections["distributed"]

    def to_table(self) -> dict[str, Any]:
        """The fully resolved recipe (defaults filled in, ``extends`` flattened)."""
        table: dict[str, Any] = {"name": self.name}
        if self.description:
            table["description"] = self.description
        table["methods"] = list(self.methods)
        table["seed"] = self.seed
        for name, value in self.sections.items():
            table[name] = schema.to_table(value)
        return table

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_table())


# ---------------------------------------------------------------- reading and merging


class _Provenance:
    """Remembers which file (or ``--set``) each dotted key came from."""

    def __init__(self) -> None:
        self.origin: dict[str, str] = {}

    def record(self, table: Mapping[str, Any], source: str, prefix: str = "") -> None:
        for key, value in table.items():
            path = f"{prefix}.{key}" if prefix else key
            self.origin[path] = source
            if isinstance(value, Mapping):
                self.record(value, source, path)

    def __call__(self, key: str) -> str:
        key = re.sub(r"\[\d+\]", "", key)
        while True:
            if key in self.origin:
                return self.origin[key]
            if not key:
                return "recipe"
            key = key.rpartition(".")[0]


def _read_toml(path: Path, referrer: str | None) -> dict[str, Any]:
    if not path.is_file():
        where = f"{referrer}: extends: " if referrer else ""
        raise RecipeError(f"{where}recipe file {str(path)!r} not found; check the path")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise RecipeError(f"not UTF-8 text ({err.reason} at byte {err.start})", source=str(path)) from None
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"invalid TOML: {err}", source=str(path)) from None
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        raise RecipeError(f"invalid TOML: {str(err).splitlines()[0]}", source=str(path)) from None
    except RecursionError:
        raise RecipeError("invalid TOML: nested too deeply", source=str(path)) from None


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; tables merge key by key, everything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _load_chain(path: Path, provenance: _Provenance, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve() if path.exists() else path
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise RecipeError(f"extends forms a cycle: {chain}; remove one of the links", source=str(seen[0]))
    table = _read_toml(path, str(seen[-1]) if seen else None)
    parent = table.pop("extends", None)
    if parent is None:
        provenance.record(table, _display(path))
        return table
    if not isinstance(parent, str):
        raise RecipeError(f"expected a path string, got {schema.show(parent)}", source=_display(path), key="extends")
    base = _load_chain(path.parent / parent, provenance, (*seen, path))
    provenance.record(table, _display(path))
    return deep_merge(base, table)


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.learning_rate=1e-4"`` -> ``(["train", "learning_rate"], 1e-4)``.

    The value is read as a TOML value (numbers, booleans, strings in quotes, arrays, inline
    tables); anything that is not valid TOML is taken as a bare string.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"expected KEY.PATH=VALUE, got {text!r}", source=SET_SOURCE)
    parts = key.split(".")
    if any(not p or not all(c.isalnum() or c in "_-" for c in p) for p in parts):
        raise RecipeError(
            f"{key!r} is not a dotted key path (letters, digits, '_' and '-' between dots)", source=SET_SOURCE
        )
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except (ValueError, RecursionError):  # not a TOML value (TOMLDecodeError is a ValueError)
        value = raw
    return parts, value


def apply_overrides(table: dict[str, Any], overrides: Iterable[str], provenance: _Provenance) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = table
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise RecipeError(
                    f"{'.'.join(parts[: i + 1])} is {type(child).__name__}, not a table", source=SET_SOURCE, key=".".join(parts)
                )
            node = child
        node[parts[-1]] = value
        provenance.origin[".".join(parts)] = SET_SOURCE
    return table


# ---------------------------------------------------------------- validation


def load_recipe(path: str | Path, overrides: Iterable[str] = (), registry: Any = None) -> Recipe:
    """Read, merge and validate a recipe file. Imports no heavy library."""
    provenance = _Provenance()
    path = Path(path)
    table = _load_chain(path, provenance)
    provenance.origin[""] = _display(path)
    table = apply_overrides(table, overrides, provenance)
    return validate_table(table, provenance, path=path, registry=registry)


def load_recipe_dict(table: Mapping[str, Any], registry: Any = None, source: str = "recipe") -> Recipe:
    """Validate a recipe given as a dict (tests, the plugin-author kit)."""
    provenance = _Provenance()
    provenance.record(table, source)
    provenance.origin[""] = source
    return validate_table(dict(table), provenance, path=None, registry=registry)


def validate_table(table: dict[str, Any], source: Any, *, path: Path | None, registry: Any = None) -> Recipe:
    from ptrain.plugins import PluginRegistry

    registry = registry or PluginRegistry.discover()
    for key, expected in TOP_LEVEL_KEYS.items():
        if key in table and not isinstance(table[key], expected):
            raise RecipeError(
                f"expected {schema.type_name(expected)}, got {schema.show(table[key])}", source=source(key), key=key
            )
    seed = table.get("seed", 42)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise RecipeError(f"expected an integer in [0, 2**32), got {schema.show(seed)}", source=source("seed"), key="seed")
    methods = table.get("methods")
    if methods is None:
        raise RecipeError(
            'no "methods" list; add e.g. methods = ["sft"] (installed: ' + ", ".join(registry.names()) + ")",
            source=source(""),
        )
    for i, method in enumerate(methods):
        if not isinstance(method, str):
            raise RecipeError(f"expected a method name string, got {schema.show(method)}", source=source("methods"), key=f"methods[{i}]")
    if len(set(methods)) != len(methods):
        dup = next(m for m in methods if methods.count(m) > 1)
        raise RecipeError(f"method {dup!r} is listed twice", source=source("methods"), key="methods")

    plugins = registry.load(methods, source=source("methods"))
    owners = plugins.section_owners()

    sections: dict[str, Any] = {}
    known = set(TOP_LEVEL_KEYS) | set(CORE_SECTIONS) | set(owners)
    for key in table:
        if key in known:
            continue
        owner = registry.section_owner(key)
        if owner:
            raise RecipeError(
                f"section [{key}] belongs to method {owner!r}, which is not in methods; add {owner!r} to methods or remove the section",
                source=source(key),
                key=key,
            )
        raise RecipeError(
            f"unknown key{schema.suggest(key, sorted(known))} (top-level keys: {', '.join(sorted(TOP_LEVEL_KEYS))}; sections: {', '.join(sorted(set(CORE_SECTIONS) | set(owners)))})",
            source=source(key),
            key=key,
        )
    for name, section_schema in {**CORE_SECTIONS, **{s: owners[s][1] for s in owners}}.items():
        value = table.get(name, {})
        if not isinstance(value, Mapping):
            raise RecipeError(f"expected a table [{name}], got {schema.show(value)}", source=source(name), key=name)
        if name in ("model", "data") and name not in table:
            raise RecipeError(f"missing section [{name}]; every recipe needs one", source=source(""), key=name)
        sections[name] = schema.build(section_schema, value, name, source)

    trainers = plugins.trainer_builders()
    if len(trainers) > 1:
        raise RecipeError(
            f"methods {' and '.join(repr(t) for t in trainers)} both build the trainer; a run has one trainer, keep one of them",
            source=source("methods"),
            key="methods",
        )
    _check_name(table.get("name"), source)
    _check_paths(sections, source)
    name = table.get("name") or (path.stem if path else "run")
    return Recipe(
        name=name,
        methods=list(methods),
        seed=table.get("seed", 42),
        sections=sections,
        path=path,
        description=table.get("description", ""),
        plugin_sections={s: owner for s, (owner, _) in owners.items()},
        plugins=plugins,
    )


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith((".jsonl", ".json", ".csv", ".parquet"))


def _path_exists(value: str, directory: bool = False) -> bool:
    try:
        path = Path(value).expanduser()
        return path.is_dir() if directory else path.exists()
    except (OSError, ValueError, RuntimeError):  # NUL bytes, an unknown ~user, a name too long
        return False


def _check_name(name: Any, source: Any) -> None:
    """The name becomes the default run directory ``runs/<name>``: one plain path component."""
    if not isinstance(name, str):
        return
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0") or not name.isprintable():
        raise RecipeError(
            f"{schema.show(name)} cannot name a run directory; use letters, digits, '-', '_' or '.' (no '/', no '..')",
            source=source("name"),
            key="name",
        )


def _check_paths(sections: dict[str, Any], source: Any) -> None:
    """Local files named by the recipe must exist: found now, not after loading a model."""
    output: OutputSection = sections["output"]
    if output.dir is not None:
        try:
            target = Path(output.dir).expanduser()
            is_file = target.is_file()
        except (OSError, ValueError, RuntimeError) as err:
            raise RecipeError(f"{schema.show(output.dir)} is not a usable directory path ({err})", source=source("output.dir"), key="output.dir") from None
        if not output.dir.strip() or is_file:
            raise RecipeError(f"{schema.show(output.dir)} is not a directory path; name a directory", source=source("output.dir"), key="output.dir")
    data: DataSection = sections["data"]
    for key in ("source", "eval_source"):
        value = getattr(data, key)
        if value and not value.startswith("builtin:") and _looks_local(value):
            if not _path_exists(value):
                raise RecipeError(
                    f"data file {value!r} not found (relative paths are read from {Path.cwd()}); check the path",
                    source=source(f"data.{key}"),
                    key=f"data.{key}",
                )
    if data.source.startswith("builtin:") and data.source not in BUILTIN_SOURCES:
        raise RecipeError(
            f"unknown builtin data source {data.source!r}; the bundled ones are {', '.join(map(repr, BUILTIN_SOURCES))}",
            source=source("data.source"),
            key="data.source",
        )
    if data.source in BUILTIN_SOURCES:
        from ptrain.tasks import TASKS

        for i, task in enumerate(data.tasks):
            if task not in TASKS:
                raise RecipeError(
                    f"unknown task {task!r}{schema.suggest(task, list(TASKS))} (tasks: {', '.join(TASKS)})",
                    source=source("data.tasks"),
                    key=f"data.tasks[{i}]",
                )
    model: ModelSection = sections["model"]
    from ptrain.models import BUILTIN_MODELS, PRETRAINED_OFFLINE, gguf_file

    builtin = model.name.removeprefix("builtin:")
    if model.name.startswith("builtin:") and builtin not in {**BUILTIN_MODELS, **PRETRAINED_OFFLINE}:
        raise RecipeError(
            f"unknown builtin model {model.name!r}{schema.suggest(builtin, [*BUILTIN_MODELS, *PRETRAINED_OFFLINE])} "
            f"(available: {', '.join('builtin:' + m for m in [*BUILTIN_MODELS, *PRETRAINED_OFFLINE])})",
            source=source("model.name"),
            key="model.name",
        )
    if model.name.startswith("builtin:") and builtin in PRETRAINED_OFFLINE:
        try:
            gguf_file(builtin)
        except UsageError as err:
            raise RecipeError(str(err), source=source("model.name"), key="model.name") from None
    if _looks_local(model.name) and not _path_exists(model.name, directory=True):
        raise RecipeError(
            f"model directory {model.name!r} not found; give an existing directory, a hub ID or builtin:tiny-llama",
            source=source("model.name"),
            key="model.name",
        )
