"""A testing kit for plugin authors: build and run recipes in-process, with throwaway plugins.

Installed with ptrain as a pytest plugin (the ``pytest11`` entry point), so its fixtures are
available in any test suite of an environment where ptrain is installed; elsewhere, add
``pytest_plugins = ["ptrain.testing"]`` to your top-level ``conftest.py``.

Fixtures:

- ``ptrain_recipe``: a small recipe dict on ``builtin:tiny-llama`` to copy and change.
- ``ptrain_validate(recipe, plugins=...)``: validate a recipe dict or file, as ``ptrain validate`` does.
- ``ptrain_run(recipe, *overrides, plugins=...)``: validate and execute it into a temporary run
  directory; returns the finished :class:`ptrain.Run` (``run.metrics``, ``run.dir``…).
- ``ptrain_cli(*args)``: invoke the ``ptrain`` command line in-process (a click ``Result``).

``plugins={"mymethod": module_or_object}`` registers a method for that one call only, as if it
were installed: nothing global is touched, so nothing needs cleaning up. The same functions are
importable for use outside pytest: :func:`tiny_recipe`, :func:`validate`, :func:`execute`.

Importing this module imports no heavy library.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest


def _unshadow() -> None:
    """A directory named ``ptrain`` without ``__init__.py`` (a checkout of ptrain itself, run from its parent)
    is a namespace package that Python prefers over an editable install's finder: ``from ptrain import
    RecipeError`` then fails with "unknown location". This module is still found (the finder maps
    submodules), so it puts the real package back and says so once."""
    found = sys.modules.get("ptrain")
    if found is None or getattr(found, "__file__", None):
        return
    import importlib.util
    import warnings

    real = Path(__file__).resolve().parent
    spec = importlib.util.spec_from_file_location("ptrain", real / "__init__.py", submodule_search_locations=[str(real)])
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["ptrain"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    shadow = ", ".join(str(p) for p in getattr(found, "__path__", []))
    warnings.warn(f"ptrain: directory {shadow} (no __init__.py) shadows the installed package; using {real}. "
                  "Run pytest from inside that directory, or rename it, to silence this", stacklevel=1)


_unshadow()

from ptrain._recipe import Recipe, load_recipe, load_recipe_dict  # noqa: E402  (after _unshadow)
from ptrain._registry import PluginRegistry  # noqa: E402
from ptrain._run import Run  # noqa: E402

__all__ = ["tiny_recipe", "registry", "validate", "execute", "ptrain_recipe", "ptrain_validate", "ptrain_run", "ptrain_cli"]
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}


def tiny_recipe(methods: list[str], **sections: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe dict that trains ``builtin:tiny-llama`` for a few steps; ``sections`` merge over it.

    ``tiny_recipe(["dpo"], data={"source": "builtin:preferences"}, dpo={"beta": 0.2})``
    """
    recipe: dict[str, Any] = {
        "name": "test",
        "methods": list(methods),
        "model": {"name": "builtin:tiny-llama"},
        "data": {"source": "builtin:tasks", "tasks": ["reverse", "uppercase"], "num_examples": 200, "eval_size": 20},
        "train": {"max_steps": 5, "batch_size": 8, "learning_rate": 1e-3, "max_length": 128, "logging_steps": 1},
        "eval": {"max_samples": 10, "max_new_tokens": 8, "batch_size": 32},
        "output": {"plots": False},
    }
    for name, table in sections.items():
        recipe[name] = {**recipe.get(name, {}), **table} if isinstance(table, Mapping) else table
    return recipe


def registry(plugins: Mapping[str, Any] | None = None) -> PluginRegistry:
    """The installed plugins plus ``plugins`` (name -> module, object or module path), in-process only."""
    return PluginRegistry.discover(extra=plugins)


def validate(recipe: Mapping[str, Any] | str | Path, *overrides: str, plugins: Mapping[str, Any] | None = None) -> Recipe:
    """Validate a recipe dict or file exactly as ``ptrain validate`` does: sections, the whole recipe,
    and every row of local data files (no heavy import)."""
    found = registry(plugins)
    if isinstance(recipe, Mapping):
        return load_recipe_dict(recipe, registry=found, overrides=overrides)
    if not isinstance(recipe, (str, Path)):
        from ptrain._errors import UsageError

        raise UsageError(f"validate() takes a recipe dict or a path to a recipe file, got {type(recipe).__name__}")
    return load_recipe(recipe, overrides, registry=found)


def execute(
    recipe: Mapping[str, Any] | str | Path,
    *overrides: str,
    output_dir: str | Path,
    plugins: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Run:
    """Validate and run a recipe into ``output_dir``; returns the finished :class:`ptrain.Run`."""
    from ptrain._lifecycle import execute as run_stages

    return run_stages(validate(recipe, *overrides, plugins=plugins), output_dir=str(output_dir), **kwargs)


# ------------------------------------------------------------------ pytest plugin


def pytest_configure(config: pytest.Config) -> None:
    """Offline, quiet, and a per-session cache for the ``builtin:`` models."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PTRAIN_CACHE", tempfile.mkdtemp(prefix="ptrain-cache-"))
    config.addinivalue_line("markers", "slow: trains a model end to end (seconds to a minute)")


@pytest.fixture
def ptrain_recipe() -> dict[str, Any]:
    """A fresh :func:`tiny_recipe` with ``methods = ["sft"]``; change it freely."""
    return tiny_recipe(["sft"])


@pytest.fixture
def ptrain_validate() -> Any:
    """``ptrain_validate(recipe, *overrides, plugins=None) -> Recipe``."""
    return validate


@pytest.fixture
def ptrain_run(tmp_path: Path) -> Any:
    """``ptrain_run(recipe, *overrides, plugins=None, output_dir=None) -> Run``; runs land in tmp_path."""
    count = iter(range(1_000_000))

    def run(recipe: Mapping[str, Any] | str | Path, *overrides: str, output_dir: str | Path | None = None, **kwargs: Any) -> Run:
        return execute(recipe, *overrides, output_dir=output_dir or tmp_path / f"run{next(count)}", **kwargs)

    return run


@pytest.fixture
def ptrain_cli() -> Any:
    """``ptrain_cli("validate", "recipe.toml") -> click.testing.Result`` (exit_code, output)."""
    from click.testing import CliRunner

    from ptrain._cli import cli

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke
