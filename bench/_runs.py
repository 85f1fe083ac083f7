"""What the bench scripts share: one ``ptrain run`` in its own process, its metrics back."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def ptrain_run(label: str, recipe: Path, overrides: list[str], out: Path) -> dict:
    """``ptrain run RECIPE --set ...`` into ``out`` (replaced), in a fresh process so that its memory
    figures are its own; the run's ``metrics.json`` with ``process_s`` (the process's wall time) added.
    Exits with the run's output when it fails."""
    command = [sys.executable, "-m", "ptrain", "run", str(recipe), "--output-dir", str(out), "--overwrite"]
    for item in overrides:
        command += ["--set", item]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{label}: ptrain run failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["process_s"] = time.perf_counter() - started
    return metrics
