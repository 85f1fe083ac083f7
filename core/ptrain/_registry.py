"""Finding, loading and describing plugins.

Plugins are found through the ``ptrain`` entry-point group without importing anything. A run
imports only the plugins its recipe names and registers them with a fresh pluggy manager in
recipe order, after the core's own (``core``); a plugin that fails to import is reported by
name, distribution, version and error, and never affects runs or listings that do not need it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from ptrain import hookspecs
from ptrain._errors import PluginLoadError, RecipeError, UsageError
from ptrain._schema import suggest

GROUP = "ptrain"
DISABLE_ENV = "PTRAIN_DISABLE_PLUGINS"
CORE_NAME = "core"
DECLARING = ("recipe_sections", "method_traits", "data_formats", "data_sources", "reward_functions", "tools", "report_rows")
"""Hooks that declare things (called on each plugin on its own, results kept per plugin)."""
MODIFYING = ("load_model", "prepare_data", "training_setup", "evaluate", "export", "validate_recipe")


@dataclass
class PluginInfo:
    """What ``ptrain list`` reports about one plugin."""

    name: str
    target: str
    distribution: str
    version: str
    status: str = "not loaded"
    """``ok``, ``failed``, ``disabled`` or ``not loaded``."""
    hooks: list[str] = field(default_factory=list)
    kind: str = ""
    """``trainer``, ``modifier``, ``data``, ``reward``, ``tools``, ``evaluator`` (comma-joined when several)."""
    description: str = ""
    error: str = ""
    sections: dict[str, type] = field(default_factory=dict)
    formats: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    rewards: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    traits: list[str] = field(default_factory=list)
    traceback: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "kind": self.kind,
            "hooks": self.hooks,
            "status": self.status,
            "description": self.description,
            "sections": sorted(self.sections),
            "formats": self.formats,
            "sources": self.sources,
            "rewards": self.rewards,
            "tools": self.tools,
            "traits": self.traits,
            "module": self.target,
            "error": self.error,
        }


def hashable_plugin(name: str, obj: Any) -> Any:
    """``obj`` itself, or for an object pluggy cannot register (pluggy keys plugins by hash: a
    ``SimpleNamespace``, a dataclass instance) a module holding the same attributes."""
    try:
        hash(obj)
        return obj
    except TypeError:
        import types

        module = types.ModuleType(f"ptrain_plugin_{name}", getattr(obj, "__doc__", None))
        for attr in dir(obj):
            if not attr.startswith("__"):
                setattr(module, attr, getattr(obj, attr))
        return module


def disabled_names() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("ptrain")
    pm.add_hookspecs(hookspecs)
    return pm


class PluginRegistry:
    """Every installed plugin, found through entry points; imports only what is asked for."""

    def __init__(self, entries: dict[str, PluginInfo], extra: dict[str, Any] | None = None):
        self._entries = entries
        self._extra = dict(extra or {})
        self._loaded: dict[str, Any] = {}

    @classmethod
    def discover(cls, extra: Mapping[str, Any] | None = None) -> PluginRegistry:
        """Read the ``ptrain`` entry points (no import).

        ``extra`` adds in-process plugins by name: an object (module, instance) or a module path
        imported on first use, as an entry point would be.
        """
        if extra is not None and not isinstance(extra, Mapping):
            raise UsageError(f"plugins= takes a mapping of name -> module, object or module path, got {type(extra).__name__}")
        entries: dict[str, PluginInfo] = {}
        blocked = disabled_names()
        for ep in importlib.metadata.entry_points(group=GROUP):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                target=ep.value,
                distribution=dist.metadata["Name"] if dist else "?",
                version=dist.version if dist else "?",
            )
            if ep.name in entries:
                first = entries[ep.name]
                if (first.distribution, first.target) == (info.distribution, info.target):
                    continue  # the same distribution seen twice on sys.path
                first.status = "failed"
                first.error = (
                    f"plugin name {ep.name!r} is registered by both {first.distribution} ({first.target}) "
                    f"and {info.distribution} ({info.target}); uninstall one"
                )
                continue
            if ep.name in blocked:
                info.status = "disabled"
                info.error = f"blocked by {DISABLE_ENV}"
            entries[ep.name] = info
        for name, obj in (extra or {}).items():
            if not isinstance(name, str) or not name or name == CORE_NAME:
                raise UsageError(f"plugins=: {name!r} cannot name a plugin; use a non-empty name other than {CORE_NAME!r}")
            if obj is None:
                raise UsageError(f"plugins=: {name!r} maps to None; give a module, an object with hooks, or a module path")
            entries[name] = PluginInfo(
                name=name,
                target=obj if isinstance(obj, str) else getattr(obj, "__name__", type(obj).__name__),
                distribution="(in-process)",
                version="",
                status="disabled" if name in blocked else "not loaded",
                error=f"blocked by {DISABLE_ENV}" if name in blocked else "",
            )
        return cls(entries, dict(extra or {}))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def info(self, name: str) -> PluginInfo:
        return self._entries[name]

    def _import(self, name: str) -> Any:
        """Import one plugin's module; record and re-raise failures with the plugin's name."""
        info = self._entries[name]
        if name in self._loaded:
            return self._loaded[name]
        if info.status == "disabled":
            raise PluginLoadError(f"plugin {name!r} is disabled by {DISABLE_ENV}={os.environ.get(DISABLE_ENV, '')}")
        if info.status == "failed" and info.error:
            raise PluginLoadError(f"plugin {name!r} cannot be used: {info.error}")
        try:
            if name in self._extra and not isinstance(self._extra[name], str):
                obj = hashable_plugin(name, self._extra[name])
            else:
                module_name, _, attr = info.target.partition(":")
                obj = importlib.import_module(module_name)
                for part in filter(None, attr.split(".")):
                    obj = getattr(obj, part)
        except Exception as err:  # any import-time failure of third-party code
            info.status = "failed"
            info.error = f"{type(err).__name__}: {err}"
            info.traceback = traceback.format_exc()
            raise PluginLoadError(
                f"plugin {name!r} (distribution {info.distribution} {info.version}) failed to import: {info.error}"
            ) from err
        doc = (getattr(obj, "__doc__", None) or "").strip()
        info.description = doc.splitlines()[0] if doc else ""
        self._loaded[name] = obj
        return obj

    def load(self, methods: list[str], source: str = "recipe") -> MethodSet:
        """A plugin manager with the core and exactly these plugins, in call order."""
        for i, name in enumerate(methods):
            if name not in self._entries:
                raise RecipeError(
                    f"unknown method {name!r}{suggest(name, self.names())} (installed: {', '.join(self.names()) or 'none'})",
                    source=source,
                    key=f"methods[{i}]",
                )
        objects = [(name, self._import(name)) for name in methods]
        pm = new_manager()
        from ptrain import _core_plugin

        pm.register(_core_plugin, name=CORE_NAME)
        # pluggy calls the last registered first: register in reverse so the recipe's order is the call order.
        for name, obj in reversed(objects):
            try:
                pm.register(obj, name=name)
            except (pluggy.PluginValidationError, ValueError) as err:
                raise PluginLoadError(f"plugin {name!r} is not a valid ptrain plugin: {err}") from err
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as err:
            name = pm.get_name(err.plugin) if err.plugin is not None else "?"
            known = sorted(h for h in vars(pm.hook) if not h.startswith("_"))
            raise PluginLoadError(
                f"plugin {name!r} implements a hook ptrain does not define ({err}); the hooks are {', '.join(known)}"
            ) from err
        methods_set = MethodSet(pm, list(methods))
        for name, _ in objects:
            info = self._entries[name]
            info.status = "ok"
            info.hooks = methods_set.hooks_of(name)
            info.kind = methods_set.kind(name)
        return methods_set

    def inspect_all(self) -> list[PluginInfo]:
        """The core, then every plugin loaded on its own, recording status, kind, hooks and what it declares; never raises."""
        for name, info in sorted(self._entries.items()):
            if info.status in ("disabled", "failed") and info.error:
                continue
            try:
                methods = self.load([name])
                info.sections = {s: schema for s, (_, schema) in methods.section_owners().items()}
                info.formats = [f.name for f in methods.declared(name, "data_formats")]
                info.sources = [s.name for s in methods.declared(name, "data_sources")]
                info.rewards = [r.name for r in methods.declared(name, "reward_functions")]
                info.tools = [t.name for t in methods.declared(name, "tools")]
                info.traits = sorted(set(methods.declared(name, "method_traits")))
            except Exception as err:  # reported in the listing, never raised
                if info.status != "failed":
                    info.status = "failed"
                    info.error = str(err)
        return [self.core_info(), *(self._entries[n] for n in self.names())]

    def core_info(self) -> PluginInfo:
        """The core as ``ptrain list`` shows it: what every recipe has without naming a plugin (formats, sources, rewards, tools)."""
        methods = self.load([])
        try:
            version = importlib.metadata.version("ptrain")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        return PluginInfo(
            name=CORE_NAME,
            target="ptrain._core_plugin",
            distribution="ptrain",
            version=version,
            status="ok",
            hooks=methods.hooks_of(CORE_NAME),
            kind=methods.kind(CORE_NAME),
            description="built in: the data formats, sources, rewards and tools every recipe has",
            formats=[f.name for f in methods.declared(CORE_NAME, "data_formats")],
            sources=[s.name for s in methods.declared(CORE_NAME, "data_sources")],
            rewards=[r.name for r in methods.declared(CORE_NAME, "reward_functions")],
            tools=[t.name for t in methods.declared(CORE_NAME, "tools")],
        )

    def providers(self, hook: str, wanted: str) -> list[str]:
        """Installed plugins (not disabled or broken) whose ``hook`` declares something named ``wanted``; for error hints."""
        found = []
        for name in self.names():
            try:
                if any(getattr(item, "name", None) == wanted for item in self.load([name]).declared(name, hook)):
                    found.append(name)
            except Exception:  # a broken plugin provides nothing
                continue
        return found

    def source_readers(self, location: str, exclude: list[str]) -> list[str]:
        """Installed plugins (not in ``exclude``, not broken) with a data source whose ``matches`` accepts ``location``."""
        found = []
        for name in self.names():
            if name in exclude or self._entries[name].status in ("disabled", "failed"):
                continue
            try:
                if any(source.matches(location) for source in self.load([name]).declared(name, "data_sources")):
                    found.append(name)
            except Exception:  # a broken plugin reads nothing
                continue
        return found

    def section_owner(self, section: str) -> str | None:
        """The plugin owning a recipe section, loading plugins as needed (for error messages)."""
        for name in self.names():
            try:
                if section in self.load([name]).section_owners():
                    return name
            except Exception:
                continue
        return None


@dataclass
class MethodSet:
    """The pluggy manager of one run: the core plus the recipe's plugins."""

    pm: pluggy.PluginManager
    methods: list[str]

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def declared(self, name: str, hook: str) -> list[Any]:
        """What plugin ``name`` alone returns from the declaring ``hook`` (a list; a mapping for recipe_sections)."""
        others = [plugin for other, plugin in self.pm.list_name_plugin() if other != name]
        results = self.pm.subset_hook_caller(hook, remove_plugins=others)()
        if hook == "recipe_sections":
            merged: dict[str, type] = {}
            for result in results:
                merged.update(result or {})
            return merged  # type: ignore[return-value]
        return [item for result in results for item in (result or [])]

    def collect_by_plugin(self, hook: str) -> dict[str, list[Any]]:
        """Plugin -> what it declares through ``hook``: the core's first for report rows, else the methods' first."""
        order = [CORE_NAME, *self.methods] if hook == "report_rows" else [*self.methods, CORE_NAME]
        return {name: self.declared(name, hook) for name in order}

    def call_each(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call ``hook`` on each of the recipe's methods on its own, in recipe order: ``[(method, result)]``."""
        results = []
        for name in self.methods:
            if hook in self.hooks_of(name):
                others = [plugin for other, plugin in self.pm.list_name_plugin() if other != name]
                results.extend((name, result) for result in self.pm.subset_hook_caller(hook, remove_plugins=others)(**kwargs))
        return results

    def section_owners(self) -> dict[str, tuple[str, type]]:
        """Recipe section -> (owning plugin, schema)."""
        owners: dict[str, tuple[str, type]] = {}
        for name in self.methods:
            for section, schema in self.declared(name, "recipe_sections").items():
                if section in owners:
                    raise RecipeError(
                        f"methods {owners[section][0]!r} and {name!r} both claim recipe section [{section}]; keep one of them"
                    )
                owners[section] = (name, schema)
        return owners

    def _wrappers(self, hook: str) -> set[str]:
        return {i.plugin_name for i in getattr(self.pm.hook, hook).get_hookimpls() if i.wrapper or i.hookwrapper}

    def trainer_owners(self) -> list[str]:
        """Methods that build the trainer (a plain ``build_trainer``); wrappers modify it and do not count."""
        wrappers = self._wrappers("build_trainer")
        return [name for name in self.methods if "build_trainer" in self.hooks_of(name) and name not in wrappers]

    def trainer_modifiers(self) -> list[str]:
        """Methods that shape a trainer another method builds: ``training_setup`` or a ``build_trainer`` wrapper."""
        wrappers = self._wrappers("build_trainer")
        return [name for name in self.methods if "training_setup" in self.hooks_of(name) or name in wrappers]

    def hooks_of(self, name: str) -> list[str]:
        plugin = self.pm.get_plugin(name)
        return sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])

    def kind(self, name: str) -> str:
        hooks = set(self.hooks_of(name))
        kinds = []
        if name in self.trainer_owners():
            kinds.append("trainer")
        if hooks & {"data_formats", "data_sources"}:
            kinds.append("data")
        if "reward_functions" in hooks:
            kinds.append("reward")
        if "tools" in hooks:
            kinds.append("tools")
        changes = hooks & (set(MODIFYING) - {"evaluate", "validate_recipe"}) or name in self.trainer_modifiers()
        if not kinds and "evaluate" in hooks and not changes:
            kinds.append("evaluator")  # measures the model, changes nothing another method does
        if not kinds and (hooks & set(MODIFYING) or name in self.trainer_modifiers()):
            kinds.append("modifier")
        return ", ".join(kinds) or "modifier"
