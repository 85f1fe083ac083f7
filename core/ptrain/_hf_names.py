"""Names transformers accepts (schedulers, optimizers, loggers), read from its source without importing it.

``ptrain validate`` must not import torch, and importing transformers' training modules does. The
lists are transformers' own (``SchedulerType``, ``OptimizerNames``, ``INTEGRATION_TO_CALLBACK``), so a
newer transformers brings its new names along; when the source cannot be read the check is skipped.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path


def _source(relative: str) -> ast.Module | None:
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        return ast.parse((Path(next(iter(spec.submodule_search_locations))) / relative).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, StopIteration):
        return None


@functools.cache
def enum_values(relative: str, class_name: str) -> tuple[str, ...]:
    """The string values of ``class_name``'s members in transformers' ``relative`` module ("" when unreadable)."""
    tree = _source(relative)
    for node in tree.body if tree else []:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return tuple(
                item.value.value
                for item in node.body
                if isinstance(item, ast.Assign) and isinstance(item.value, ast.Constant) and isinstance(item.value.value, str)
            )
    return ()


@functools.cache
def dict_keys(relative: str, name: str) -> tuple[str, ...]:
    tree = _source(relative)
    for node in tree.body if tree else []:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets) and isinstance(node.value, ast.Dict):
            return tuple(k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
    return ()


def schedulers() -> tuple[str, ...]:
    return enum_values("trainer_utils.py", "SchedulerType")


def optimizers() -> tuple[str, ...]:
    return enum_values("training_args.py", "OptimizerNames")


def loggers() -> tuple[str, ...]:
    found = dict_keys("integrations/integration_utils.py", "INTEGRATION_TO_CALLBACK")
    return (*found, "all", "none") if found else ()
