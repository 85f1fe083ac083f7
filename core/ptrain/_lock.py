"""The lock: ``requirements.lock``, the exact versions CI last passed with (pip constraints).

Every install the README gives reads it, ``env.json`` records its identity and whether this environment
matches it, and ``ptrain compare`` says when runs were made with different libraries. The drift canary
(``bash .ci/run --latest``, through ``.ci/drift.py``) uses the same reading.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

LOCK_NAME = "requirements.lock"


def canonical(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_file() -> Path | None:
    """``$PTRAIN_LOCK``, else the lock of the checkout ptrain is installed from (an editable install);
    None for an install from a wheel, which carries no lock."""
    named = os.environ.get("PTRAIN_LOCK")
    candidates = [Path(named)] if named else [Path(__file__).resolve().parents[2] / LOCK_NAME]
    return next((p for p in candidates if p.is_file()), None)


def read_lock(path: Path) -> dict[str, str]:
    """``name==version`` lines (comments and blank lines skipped), by canonical name; a local version
    label (``+cpu``) is not part of the pin."""
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical(name.split("[", 1)[0].strip())] = version.strip().split("+", 1)[0]
    return pins


def installed() -> dict[str, str]:
    """Every installed distribution's version, by canonical name (local labels dropped)."""
    import importlib.metadata

    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            found.setdefault(canonical(name), str(dist.version).split("+", 1)[0])
    return found


def differences(pins: dict[str, str], present: dict[str, str]) -> list[str]:
    """Each locked package installed at another version: ``name lock -> installed``. One not installed is
    no difference (an extra the user did not choose)."""
    return [
        f"{name} {version} -> {present[name]}"
        for name, version in sorted(pins.items())
        if name in present and present[name] != version
    ]


def lock_status() -> dict[str, Any]:
    """What ``env.json`` records: the lock's identity (sha256 of its pins) and whether the installed
    versions match it, with the first differences."""
    path = lock_file()
    if path is None:
        return {"file": None, "sha256": None, "matches": None, "note": "no lock beside this install (installed from a wheel?)"}
    pins = read_lock(path)
    identity = hashlib.sha256("\n".join(f"{n}=={v}" for n, v in sorted(pins.items())).encode()).hexdigest()[:16]
    moved = differences(pins, installed())
    return {"file": path.name, "sha256": identity, "matches": not moved, "differences": moved[:20]}
