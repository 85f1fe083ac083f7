"""Recipes: TOML files that say which plugins take part in a run and how.

Loading a recipe reads the file, merges it over its ``extends`` chain, applies ``--set``
overrides, then validates it: every section against its schema (the core's and each plugin's),
then the recipe as a whole (trainer ownership, data sources and formats, each plugin's
``validate_recipe``), and, unless told not to, every row of local data files. All of it happens
before torch is imported, and ``ptrain validate``, ``ptrain run`` and the testing kit share it.
Every error names the file (or ``--set``) that holds the offending key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptrain import _data, _paths, _rewards, _schema, _tools
from ptrain._errors import DataError, RecipeError
from ptrain._sections import (
    DataSection,
    DistributedSection,
    EvalSection,
    ModelSection,
    OutputSection,
    TrainSection,
)
from ptrain._types import RewardFunction, Tool

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
    """A validated recipe: the plugins in call order and one validated object per section.

    What ``validate_recipe`` hooks read: ``methods``, ``section(name)`` (and the core sections as
    ``model``, ``data``, ``train``, ``eval``, ``output``, ``distributed``), ``trainer_owner``,
    ``traits(method)`` and ``methods_with(trait)``, ``data_fields``, ``data_format``,
    ``data_options(name)``, ``reward_functions`` and ``reward_function(name, key)``, ``tools`` and ``tool(name, key)``.
    """

    name: str
    methods: list[str]
    seed: int
    sections: dict[str, Any]
    path: Path | None = None
    description: str = ""
    plugin_sections: dict[str, str] = field(default_factory=dict)
    """Section name -> the plugin that owns it."""
    trainer_owner: str | None = None
    """The method that builds the trainer, or None when the recipe does not train."""
    data_plan: Any = field(default=None, repr=False, compare=False)
    catalog: Any = field(default=None, repr=False, compare=False)
    plugins: Any = field(default=None, repr=False, compare=False)
    """The :class:`ptrain._registry.MethodSet` of this recipe (the core's, not for plugins)."""
    rewards: dict[str, tuple[str, Any]] = field(default_factory=dict, repr=False, compare=False)
    """Reward name -> (plugin, :class:`ptrain.RewardFunction`) (the core's; plugins read ``reward_functions``)."""
    tool_registry: dict[str, tuple[str, Any]] = field(default_factory=dict, repr=False, compare=False)
    """Tool name -> (plugin, :class:`ptrain.Tool`) (the core's; plugins read ``tools``)."""
    registry: Any = field(default=None, repr=False, compare=False)
    """Every installed plugin (the core's, for hints naming a plugin the recipe does not list)."""
    source_of: Callable[[str], str] = field(default=lambda key: "recipe", repr=False, compare=False)
    """Dotted key -> the file (or ``--set``) that set it."""
    method_traits: dict[str, frozenset[str]] = field(default_factory=dict, repr=False, compare=False)
    """Method -> its traits (the ``method_traits`` hook, plus ``owns_trainer``); read with :meth:`traits`."""

    def traits(self, method: str) -> frozenset[str]:
        """What ``method`` (one of ``methods``) declared it is (``ptrain.TRAITS``), plus ``owns_trainer`` if it builds the trainer."""
        if method not in self.method_traits:
            raise KeyError(f"{method!r} is not in this recipe's methods ({', '.join(self.methods)})")
        return self.method_traits[method]

    def methods_with(self, trait: str) -> list[str]:
        """The recipe's methods that have ``trait`` (``"adds_adapters"``, ``"quantizes_base"``…), in recipe order:
        ask what another method is, never list its name."""
        return [m for m in self.methods if trait in self.method_traits.get(m, frozenset())]

    def section(self, name: str) -> Any:
        """The validated object of section ``name`` (a KeyError names the sections there are)."""
        try:
            return self.sections[name]
        except KeyError:
            raise KeyError(f"no section [{name}] in this recipe (sections: {', '.join(self.sections)})") from None

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

    @property
    def data_fields(self) -> frozenset[str] | None:
        """Normalised fields every data row will have (``instruction``, ``output``, ``chosen``…), or None
        when only loading the data can tell (a hub dataset with ``data.format = "auto"``)."""
        return self.data_plan.fields if self.data_plan is not None else None

    @property
    def data_format(self) -> str | None:
        """The name of the training data's format, or None when only loading can tell."""
        return self.data_plan.format_name if self.data_plan is not None else None

    def data_options(self, name: str) -> Any:
        """The validated ``[data.<name>]`` options of data source or format ``name`` (its defaults when the recipe
        has no such table); a KeyError when no source or format of this recipe declares options by that name."""
        schemas = self.catalog.option_schemas()
        if name not in schemas:
            raise KeyError(f"no data source or format of this recipe declares options named {name!r} ({', '.join(schemas) or 'none'})")
        if name not in self.catalog.options:
            item = next(i for _, i in [*self.catalog.sources, *self.catalog.formats.values()] if i.name == name and i.options)
            self.catalog.settings(item)
        return self.catalog.options[name]

    @property
    def reward_functions(self) -> dict[str, RewardFunction]:
        """Every reward function this recipe can name: the core's built-ins and those of the plugins in ``methods``."""
        return {name: reward for name, (_, reward) in self.rewards.items()}

    def reward_function(self, name: str, key: str) -> RewardFunction:
        """The reward function called ``name``; else a RecipeError for ``key`` naming close names and an
        installed plugin that provides it but is not in ``methods``. For ``validate_recipe`` and run-time hooks."""
        if name in self.rewards:
            return self.rewards[name][1]
        providers = self.registry.providers("reward_functions", name) if self.registry is not None else []
        raise self.error(_rewards.unknown(name, list(self.rewards), providers), key)

    @property
    def tools(self) -> dict[str, Tool]:
        """Every tool this recipe can name: the core's built-ins and those of the plugins in ``methods``."""
        return {name: tool for name, (_, tool) in self.tool_registry.items()}

    def tool(self, name: str, key: str) -> Tool:
        """The tool called ``name``; else a RecipeError for ``key`` naming the known tools and an installed plugin
        that provides it but is not in ``methods``. For ``validate_recipe`` and run-time hooks."""
        if name in self.tool_registry:
            return self.tool_registry[name][1]
        providers = self.registry.providers("tools", name) if self.registry is not None else []
        raise self.error(_tools.unknown(name, list(self.tool_registry), providers), key)

    def error(self, message: str, key: str) -> RecipeError:
        """A RecipeError for ``key`` naming the file that set it."""
        return RecipeError(message, source=self.source_of(key), key=key)

    def to_table(self) -> dict[str, Any]:
        """The fully resolved recipe (defaults filled in, ``extends`` flattened)."""
        table: dict[str, Any] = {"name": self.name}
        if self.description:
            table["description"] = self.description
        table["methods"] = list(self.methods)
        table["seed"] = self.seed
        for name, value in self.sections.items():
            table[name] = _schema.to_table(value)
        for name, value in (self.catalog.options if self.catalog is not None else {}).items():
            table["data"][name] = _schema.to_table(value)
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
        raise RecipeError(f"expected a path string, got {_schema.show(parent)}", source=_display(path), key="extends")
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


def load_recipe(path: str | Path, overrides: Iterable[str] = (), registry: Any = None, check_data: bool = True) -> Recipe:
    """Read, merge and validate a recipe file. Imports no heavy library.

    ``check_data``: also read local data files and normalise every row (``ptrain validate`` and
    ``ptrain run`` do; a pipeline stage whose data an earlier stage writes checks it when its turn comes).
    """
    provenance = _Provenance()
    path = Path(path)
    table = _load_chain(path, provenance)
    provenance.origin[""] = _display(path)
    table = apply_overrides(table, overrides, provenance)
    return validate_table(table, provenance, path=path, registry=registry, check_data=check_data)


def load_recipe_dict(
    table: Mapping[str, Any], registry: Any = None, source: str = "recipe", overrides: Iterable[str] = (), check_data: bool = True
) -> Recipe:
    """Validate a recipe given as a dict (tests, the plugin-author kit), as :func:`load_recipe` does a file."""
    import copy

    provenance = _Provenance()
    provenance.record(table, source)
    provenance.origin[""] = source
    table = apply_overrides(copy.deepcopy(dict(table)), overrides, provenance)
    return validate_table(table, provenance, path=None, registry=registry, check_data=check_data)


def _with_source(err: RecipeError, source: Callable[[str], str]) -> RecipeError:
    """A RecipeError raised with a key but no file gets the file that set the key."""
    if err.source is None and err.key:
        return RecipeError(err.detail, source=source(err.key), key=err.key)
    return err


def validate_table(
    table: dict[str, Any], source: Callable[[str], str], *, path: Path | None, registry: Any = None, check_data: bool = True
) -> Recipe:
    from ptrain._registry import PluginRegistry

    registry = registry or PluginRegistry.discover()
    for key, expected in TOP_LEVEL_KEYS.items():
        if key in table and not isinstance(table[key], expected):
            raise RecipeError(
                f"expected {_schema.type_name(expected)}, got {_schema.show(table[key])}", source=source(key), key=key
            )
    seed = table.get("seed", 42)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise RecipeError(f"expected an integer in [0, 2**32), got {_schema.show(seed)}", source=source("seed"), key="seed")
    methods = table.get("methods")
    if methods is None:
        raise RecipeError(
            'no "methods" list; add e.g. methods = ["sft"] (installed: ' + ", ".join(registry.names()) + ")",
            source=source(""),
        )
    if not methods:
        raise RecipeError(
            "is empty: a run needs at least one method (installed: " + ", ".join(registry.names()) + ")",
            source=source("methods"), key="methods",
        )
    for i, method in enumerate(methods):
        if not isinstance(method, str):
            raise RecipeError(f"expected a method name string, got {_schema.show(method)}", source=source("methods"), key=f"methods[{i}]")
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
                f"section [{key}] belongs to plugin {owner!r}, which is not in methods; add {owner!r} to methods or remove the section",
                source=source(key),
                key=key,
            )
        raise RecipeError(
            f"unknown key{_schema.suggest(key, sorted(known))} (top-level keys: {', '.join(sorted(TOP_LEVEL_KEYS))}; sections: {', '.join(sorted(set(CORE_SECTIONS) | set(owners)))})",
            source=source(key),
            key=key,
        )
    catalog = _data.Catalog()
    try:
        for plugin, items in plugins.collect_by_plugin("data_formats").items():
            catalog.add_formats(plugin, items)
        for plugin, items in plugins.collect_by_plugin("data_sources").items():
            catalog.add_sources(plugin, items)
        if isinstance(table.get("data"), Mapping):  # [data.<name>] tables: a source's or format's own options
            table = {**table, "data": catalog.take_options(dict(table["data"]), source)}
    except RecipeError as err:
        raise _with_source(err, source) from None
    catalog.unlisted_readers = lambda location: registry.source_readers(location, exclude=methods)
    for section_name, section_schema in {**CORE_SECTIONS, **{s: owners[s][1] for s in owners}}.items():
        value = table.get(section_name, {})
        if not isinstance(value, Mapping):
            raise RecipeError(f"expected a table [{section_name}], got {_schema.show(value)}", source=source(section_name), key=section_name)
        if section_name in ("model", "data") and section_name not in table:
            raise RecipeError(f"missing section [{section_name}]; every recipe needs one", source=source(""), key=section_name)
        sections[section_name] = _schema.build(section_schema, value, section_name, source)

    trainers = plugins.trainer_owners()
    if len(trainers) > 1:
        raise RecipeError(
            f"methods {' and '.join(repr(t) for t in trainers)} both build the trainer; a run has one trainer, keep one of them",
            source=source("methods"),
            key="methods",
        )
    modifiers = plugins.trainer_modifiers()
    if modifiers and not trainers:
        raise RecipeError(
            f"{' and '.join(repr(m) for m in modifiers)} {'shapes' if len(modifiers) == 1 else 'shape'} the trainer another method "
            "builds, and no method in methods builds one; add a trainer method (e.g. methods = "
            f"{['sft', *methods]!r})",
            source=source("methods"),
            key="methods",
        )
    name = table.get("name") or (path.stem if path else "run")
    _check_name(name, source, derived=not table.get("name"))
    _check_output(sections["output"], source)

    try:
        data_plan = _data.plan(sections["data"], catalog, seed, read_local=check_data)
        rewards = _rewards.collect(plugins.collect_by_plugin("reward_functions"))
        tools = _tools.collect(plugins.collect_by_plugin("tools"))
    except RecipeError as err:
        raise _with_source(err, source) from None
    except DataError as err:
        raise _data_hint(err, sections["data"], catalog, registry) from None
    recipe = Recipe(
        name=name,
        methods=list(methods),
        seed=seed,
        sections=sections,
        path=path,
        description=table.get("description", ""),
        plugin_sections={s: owner for s, (owner, _) in owners.items()},
        trainer_owner=trainers[0] if trainers else None,
        data_plan=data_plan,
        catalog=catalog,
        plugins=plugins,
        rewards=rewards,
        tool_registry=tools,
        registry=registry,
        source_of=source,
        method_traits=_traits(plugins, trainers, source),
    )
    try:
        plugins.hook.validate_recipe(recipe=recipe)
    except RecipeError as err:
        raise _with_source(err, source) from None
    return recipe


def _traits(plugins: Any, trainers: list[str], source: Callable[[str], str]) -> dict[str, frozenset[str]]:
    """Method -> the traits it declares (``method_traits``), plus ``owns_trainer`` for the trainer owner."""
    traits: dict[str, frozenset[str]] = {}
    for method in plugins.methods:
        declared = plugins.declared(method, "method_traits")
        for trait in declared:
            if not isinstance(trait, str) or not TRAIT_NAME.match(trait):
                raise RecipeError(
                    f"plugin {method!r} declares trait {_schema.show(trait)}; a trait is lower-case words joined by '_' "
                    "(e.g. 'adds_adapters'); fix its method_traits",
                    source=source("methods"), key="methods",
                )
            if trait == "owns_trainer":
                raise RecipeError(
                    f"plugin {method!r} declares trait 'owns_trainer', which the core sets for the method that builds the "
                    "trainer; remove it from its method_traits", source=source("methods"), key="methods",
                )
        traits[method] = frozenset(declared) | ({"owns_trainer"} if method in trainers else set())
    return traits


TRAIT_NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*\Z")


def _data_hint(err: DataError, section: DataSection, catalog: Any, registry: Any) -> DataError:
    """A data error, with a hint when an installed plugin that is not in methods provides the format asked for."""
    if section.format == "auto" or section.format in catalog.formats:
        return err
    providers = registry.providers("data_formats", section.format)
    return DataError(f"{err}; plugin {providers[0]!r} provides format {section.format!r}: add it to methods") if providers else err


def _check_name(name: Any, source: Callable[[str], str], derived: bool = False) -> None:
    """The name becomes the default run directory ``runs/<name>``: one plain path component, whether
    the recipe sets it or it comes from the file name."""
    if not isinstance(name, str):
        return
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0") or not name.isprintable() or len(name) > 200:
        fix = "; set name = \"...\" in the recipe" if derived else ""
        raise RecipeError(
            f"{_schema.show(name)}{' (from the file name)' if derived else ''} cannot name a run directory; use letters, "
            f"digits, '-', '_' or '.' (no '/', no '..', at most 200 characters){fix}",
            source=source("name") if not derived else source(""),
            key="name",
        )


def _check_output(output: OutputSection, source: Callable[[str], str]) -> None:
    if output.dir is None:
        return
    target = _paths.expand(output.dir)
    if target is None:
        raise RecipeError(f"{_schema.show(output.dir)} is not a usable directory path", source=source("output.dir"), key="output.dir")
    if not output.dir.strip() or target.is_file():
        raise RecipeError(f"{_schema.show(output.dir)} is not a directory path; name a directory", source=source("output.dir"), key="output.dir")
