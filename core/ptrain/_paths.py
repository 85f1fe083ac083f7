"""The one rule for "is this name a path on this machine", used for models, data and outputs alike.

A name is local when it starts with ``.``, ``/`` or ``~``, ends with a data-file suffix, or names
something that exists; ``builtin:NAME`` names a bundled model or data source; anything else is a
Hugging Face Hub ID. A ptrain run directory stands for the model it exported (``run/model``).
"""

from __future__ import annotations

from pathlib import Path

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
BUILTIN = "builtin:"


def expand(name: str) -> Path | None:
    """``name`` as a path (``~`` expanded), or None when it cannot be one (NUL bytes, unknown ``~user``, too long)."""
    try:
        path = Path(name).expanduser()
        path.exists()  # raises for names the OS cannot take
        return path
    except (OSError, ValueError, RuntimeError):
        return None


def is_local(name: str) -> bool:
    """Whether ``name`` means a path on this machine rather than a hub ID or a ``builtin:`` name."""
    if name.startswith(BUILTIN):
        return False
    if name.startswith((".", "/", "~")) or name.endswith(DATA_SUFFIXES):
        return True
    path = expand(name)
    return path is not None and path.exists()


def exists(name: str, directory: bool = False) -> bool:
    path = expand(name)
    if path is None:
        return False
    try:
        return path.is_dir() if directory else path.exists()
    except OSError:
        return False


def model_dir(name: str) -> Path | None:
    """The local model directory ``name`` stands for: itself when it holds ``config.json``, the
    ``model/`` of a ptrain run directory, else None (a hub ID, a missing path)."""
    if not is_local(name):
        return None
    path = expand(name)
    if path is None or not path.is_dir():
        return None
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    return path
