"""ptrain: plugin-based, recipe-driven LLM post-training.

The public API a method needs::

    from ptrain import hookimpl, Run, LoadedModel, DataSplits, RecipeError

Importing ``ptrain`` imports no heavy library; the modules that touch torch do so inside
functions.
"""

from __future__ import annotations

from ptrain.errors import DataError, PtrainError, RecipeError, UsageError
from ptrain.hookspecs import hookimpl
from ptrain.run import DataSplits, LoadedModel, Run

__version__ = "0.1.0"
__all__ = ["hookimpl", "Run", "LoadedModel", "DataSplits", "RecipeError", "UsageError", "DataError", "PtrainError"]
