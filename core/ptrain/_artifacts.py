"""Writing run outputs so that nothing is lost and nothing is half-written.

Directories are written under a temporary name beside their target and renamed into place;
files are written to a temporary file and replaced atomically. Text and JSON go through the
redaction pass (:mod:`ptrain._redact`) on the way: nothing shaped like a token, no secret-named
key's value and no secret environment value reaches the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a run directory is meant to be shared
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)


def write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically, secrets masked (``***``)."""
    from ptrain._redact import redact

    write_bytes(path, redact(text).encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON atomically; values of secret-named keys (``token``, ``api_key``…)
    and token-shaped strings masked."""
    from ptrain._redact import redact_data

    data = redact_data(json.loads(json.dumps(data, default=str)))
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``path`` with one JSON object per line atomically, redacted as :func:`write_json` does."""
    from ptrain._redact import redact_data

    write_text(path, "".join(json.dumps(redact_data(row), ensure_ascii=False, default=str) + "\n" for row in rows))


def dir_size(path: str | Path) -> int:
    """Bytes on disk of every file under ``path``."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
