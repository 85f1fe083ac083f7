"""Finding, loading and reporting methods (plugins).

Methods are found through the ``ptrain`` entry-point group without importing anything. A run
imports only the methods its recipe names and registers them with a fresh pluggy manager in
recipe order; a method that fails to import is reported by name, distribution, version and
error, and never affects runs or listings that do not need it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import traceback
from dataclasses import dataclass, field
from typing import Any

import pluggy

from ptrain import hookspecs
from ptrain.errors import PluginLoadError, RecipeError
from ptrain.schema import suggest

GROUP = "ptrain"
DISABLE_ENV = "PTRAIN_DISABLE_PLUGINS"
CORE_NAME = "core"


@dataclass
class PluginInfo:
    """What ``ptrain list`` reports about one method."""

    name: str
    target: str
    distribution: str
    version: str
    status: str = "not loaded"
    """``ok``, ``failed``, ``disabled`` or ``not loaded``."""
    hooks: list[str] = field(default_factory=list)
    description: str = ""
    error: str = ""
    sections: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "status": self.status,
            "description": self.description,
            "sections": self.sections,
            "module": self.target,
            "error": self.error,
        }


def disabled_names() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("ptrain")
    pm.add_hookspecs(hookspecs)
    return pm


class PluginRegistry:
    """Every installed method, found through entry points; loads only what is asked for."""

    def __init__(self, entries: dict[str, PluginInfo], extra: dict[str, Any] | None = None):
        self._entries = entries
        self._extra = dict(extra or {})
        self._loaded: dict[str, Any] = {}

    @classmethod
    def discover(cls, extra: dict[str, Any] | None = None) -> PluginRegistry:
        """Read the ``ptrain`` entry points (no import).

        ``extra`` adds in-process plugins by name: an object (module, instance) or a module path
        imported on first use, as an entry point would be.
        """
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
                    f"method name {ep.name!r} is registered by both {first.distribution} ({first.target}) "
                    f"and {info.distribution} ({info.target}); uninstall one"
                )
                continue
            if ep.name in blocked:
                info.status = "disabled"
                info.error = f"blocked by {DISABLE_ENV}"
            entries[ep.name] = info
        registry = cls(entries, extra)
        for name, obj in (extra or {}).items():
            entries[name] = PluginInfo(
                name=name,
                target=obj if isinstance(obj, str) else getattr(obj, "__name__", type(obj).__name__),
                distribution="(in-process)",
                version="",
                status="disabled" if name in blocked else "not loaded",
                error=f"blocked by {DISABLE_ENV}" if name in blocked else "",
            )
        return registry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def info(self, name: str) -> PluginInfo:
        return self._entries[name]

    def _import(self, name: str) -> Any:
        """Import one method's module; record and re-raise failures with the method's name."""
        info = self._entries[name]
        if name in self._loaded:
            return self._loaded[name]
        if info.status == "disabled":
            raise PluginLoadError(f"method {name!r} is disabled by {DISABLE_ENV}={os.environ.get(DISABLE_ENV, '')}")
        if info.status == "failed" and info.error:
            raise PluginLoadError(f"method {name!r} cannot be used: {info.error}")
        try:
            if name in self._extra and not isinstance(self._extra[name], str):
                obj = self._extra[name]
            else:
                module_name, _, attr = info.target.partition(":")
                obj = importlib.import_module(module_name)
                for part in filter(None, attr.split(".")):
                    obj = getattr(obj, part)
        except Exception as err:  # any import-time failure of third-party code
            info.status = "failed"
            info.error = f"{type(err).__name__}: {err}"
            info.traceback = traceback.format_exc()  # type: ignore[attr-defined]
            raise PluginLoadError(
                f"method {name!r} (distribution {info.distribution} {info.version}) failed to import: {info.error}"
            ) from err
        doc = (getattr(obj, "__doc__", None) or "").strip()
        info.description = doc.splitlines()[0] if doc else ""
        self._loaded[name] = obj
        return obj

    def load(self, methods: list[str], source: str = "recipe") -> MethodSet:
        """A plugin manager with the core defaults and exactly these methods, in call order."""
        for i, name in enumerate(methods):
            if name not in self._entries:
                raise RecipeError(
                    f"unknown method {name!r}{suggest(name, self.names())} (installed methods: {', '.join(self.names()) or 'none'})",
                    source=source,
                    key=f"methods[{i}]",
                )
        objects = [(name, self._import(name)) for name in methods]
        pm = new_manager()
        from ptrain import defaults

        pm.register(defaults, name=CORE_NAME)
        # pluggy calls the last registered first: register in reverse so the recipe's order is the call order.
        for name, obj in reversed(objects):
            try:
                pm.register(obj, name=name)
            except (pluggy.PluginValidationError, ValueError) as err:
                raise PluginLoadError(f"method {name!r} is not a valid ptrain plugin: {err}") from err
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as err:
            name = pm.get_name(err.plugin) if err.plugin is not None else "?"
            known = sorted(h for h in vars(pm.hook) if not h.startswith("_"))
            raise PluginLoadError(
                f"method {name!r} implements a hook ptrain does not define ({err}); the hooks are {', '.join(known)}"
            ) from err
        for name, obj in objects:
            info = self._entries[name]
            info.status = "ok"
            info.hooks = sorted(c.name for c in pm.get_hookcallers(obj) or [])
        return MethodSet(pm, list(methods))

    def inspect_all(self) -> list[PluginInfo]:
        """Load every method on its own, recording status and hooks; never raises."""
        for name, info in sorted(self._entries.items()):
            if info.status in ("disabled", "failed") and info.error:
                continue
            try:
                methods = self.load([name])
                info.sections = sorted(methods.section_owners())
            except Exception as err:  # reported in the listing, never raised
                if info.status != "failed":
                    info.status = "failed"
                    info.error = str(err)
        return [self._entries[n] for n in self.names()]

    def section_owner(self, section: str) -> str | None:
        """The method owning a recipe section, loading methods as needed (for error messages)."""
        for name in self.names():
            try:
                if section in self.load([name]).section_owners():
                    return name
            except Exception:
                continue
        return None


@dataclass
class MethodSet:
    """The pluggy manager of one run: the core defaults plus the recipe's methods."""

    pm: pluggy.PluginManager
    methods: list[str]

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def section_owners(self) -> dict[str, tuple[str, type]]:
        """Recipe section -> (owning method, schema), asking each method on its own."""
        owners: dict[str, tuple[str, type]] = {}
        for name in self.methods:
            others = [plugin for other, plugin in self.pm.list_name_plugin() if other != name]
            for sections in self.pm.subset_hook_caller("recipe_sections", remove_plugins=others)():
                for section, schema in (sections or {}).items():
                    if section in owners:
                        raise RecipeError(
                            f"methods {owners[section][0]!r} and {name!r} both claim recipe section [{section}]; keep one of them"
                        )
                    owners[section] = (name, schema)
        return owners

    def trainer_builders(self) -> list[str]:
        """Methods that build the trainer; a ``build_trainer`` wrapper adapts it and does not count."""
        wrappers = {i.plugin_name for i in self.pm.hook.build_trainer.get_hookimpls() if i.wrapper or i.hookwrapper}
        return [name for name in self.methods if "build_trainer" in self.hooks_of(name) and name not in wrappers]

    def hooks_of(self, name: str) -> list[str]:
        plugin = self.pm.get_plugin(name)
        return sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])
