"""The errors ptrain shows to users.

Anything derived from :class:`UsageError` is the user's to fix (a recipe key, a data row, a missing
file): the CLI prints its one-line message and exits with code 2. Any other exception is a runtime
failure: exit code 1, a short message and the path of the full log.
"""

from __future__ import annotations


class PtrainError(Exception):
    """Base class of every error ptrain raises on purpose."""


class UsageError(PtrainError):
    """Something the user can fix: the message names the file, key or row and says how."""


class RecipeError(UsageError):
    """A recipe is invalid: unknown key, wrong type, impossible combination of methods."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.detail = message
        self.source = source
        self.key = key
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class DataError(UsageError):
    """A data file or row cannot be used."""


class PluginLoadError(UsageError):
    """A plugin named by the recipe failed to import."""


class RunInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C or SIGTERM after saving a checkpoint; the message says how to resume."""


class ProcessLost(PtrainError):
    """Another process of a distributed run died (killed, out of memory, a lost node): this one stops
    too, with one line on what happened and how to resume. Every surviving process reports it."""
