"""The lock against what is installed, and the suite's outcomes against the locked run's.

    python .ci/drift.py check              this environment against requirements.lock (.ci/run, locked)
    python .ci/drift.py packages           which packages moved since the lock (the canary, after installing)
    python .ci/drift.py outcomes JUNIT     which tests changed outcome against .ci/results-locked.xml,
                                           the junit file the last locked .ci/run left on this machine
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from ptrain._lock import differences, installed, read_lock

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
LOCKED_RESULTS = ROOT / ".ci" / "results-locked.xml"
EDITABLE = {"ptrain", "ptrain-dpo", "ptrain-neftune", "ptrain-sharegpt", "ptrain-edit-reward", "ptrain-regex-match"}


def check() -> int:
    pins, present = read_lock(LOCK), installed()
    moved = differences(pins, present)
    unlisted = sorted(n for n in present if n not in pins and n not in EDITABLE and not n.startswith(("pip", "setuptools", "wheel")))
    print(f"lock: {LOCK.name}, {len(pins)} pins; installed versions {'match' if not moved else 'DIFFER: ' + '; '.join(moved)}")
    if unlisted:
        print(f"lock: installed but not in the lock (refresh it with the canary): {', '.join(unlisted)}")
    return 0


def packages() -> int:
    pins, present = read_lock(LOCK), installed()
    moved = differences(pins, present)
    new = sorted(f"{n} {present[n]}" for n in present if n not in pins and n not in EDITABLE
                 and not n.startswith(("pip", "setuptools", "wheel")))
    gone = sorted(f"{n} {v}" for n, v in pins.items() if n not in present)
    print(f"packages moved since {LOCK.name} ({len(moved)} of {len(pins)} pins):")
    print("\n".join(f"  {line}" for line in moved) or "  none")
    print(f"new (not in the lock): {', '.join(new) or 'none'}")
    print(f"no longer installed: {', '.join(gone) or 'none'}")
    return 0


def _outcomes(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        found[name] = ("failed" if "failure" in kinds else "error" if "error" in kinds
                       else "skipped" if "skipped" in kinds else "passed")
    return found


def outcomes(latest_file: str) -> int:
    latest = _outcomes(Path(latest_file))
    if LOCKED_RESULTS.is_file():
        locked, against = _outcomes(LOCKED_RESULTS), LOCKED_RESULTS.name
    else:
        locked, against = {}, "no locked results on this machine (run bash .ci/run first): every test taken as passed"
    counts: dict[str, int] = {}
    for outcome in latest.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    print(f"latest releases: {', '.join(f'{n} {k}' for k, n in sorted(counts.items()))} (against {against})")
    changed = [(name, locked.get(name, "passed" if not locked else "absent"), now)
               for name, now in sorted(latest.items()) if now != locked.get(name, "passed" if not locked else now)]
    print(f"tests whose outcome changed: {len(changed)}")
    for name, before, now in changed:
        print(f"  {before} -> {now}: {name}")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["check"]:
        return check()
    if argv[:1] == ["packages"]:
        return packages()
    if argv[:1] == ["outcomes"] and len(argv) == 2:
        return outcomes(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
