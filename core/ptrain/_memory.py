"""Memory, with one meaning everywhere: the core's training figures, every method's, and ``bench/``.

* **in use**: on CUDA the bytes of allocated tensors (``torch.cuda.memory_allocated``); elsewhere the
  process's resident memory (``VmRSS``);
* **peak**: the highest "in use" while a block ran (CUDA: ``max_memory_allocated`` after a reset;
  Linux: ``VmHWM`` after resetting it through ``/proc/self/clear_refs``; elsewhere the process's
  lifetime peak, ``ru_maxrss``, which can only overstate);
* **above baseline**: the peak minus what was in use at a chosen earlier point. The core's baseline
  is taken before the model loads, so a run's ``memory_above_baseline_mb`` is what loading and
  training cost on top of the libraries the process imported (about 480 MiB of torch,
  transformers, trl and peft on CPU, the same for every method).

All figures in MiB.
"""

from __future__ import annotations

import contextlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 2**20


def _cuda() -> bool:
    if "torch" not in sys.modules:
        return False
    import torch

    return torch.cuda.is_available()


def _status_kib(field: str) -> int | None:
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def memory_in_use_mb() -> float:
    """Memory in use now, in MiB (CUDA: allocated tensors; else resident memory)."""
    if _cuda():
        import torch

        return torch.cuda.memory_allocated() / MIB
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib / 1024
    return _lifetime_peak_mb()


def _lifetime_peak_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def _reset_peak() -> None:
    if _cuda():
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS


def _peak_mb() -> float:
    if _cuda():
        import torch

        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / MIB
    kib = _status_kib("VmHWM")
    return kib / 1024 if kib is not None else _lifetime_peak_mb()


@dataclass
class MemoryUsage:
    """Result of :class:`measure_memory`, in MiB."""

    peak_mb: float = 0.0
    """The highest memory in use while the block ran."""
    baseline_mb: float = 0.0
    """Memory in use at the baseline (the block's start unless one was given)."""
    device: str = "cpu"

    @property
    def above_baseline_mb(self) -> float:
        return max(self.peak_mb - self.baseline_mb, 0.0)

    def as_metrics(self, prefix: str = "") -> dict[str, Any]:
        return {f"{prefix}peak_memory_mb": round(self.peak_mb, 1), f"{prefix}memory_above_baseline_mb": round(self.above_baseline_mb, 1)}


class measure_memory:
    """``with measure_memory() as usage: ...`` then ``usage.peak_mb``, ``usage.above_baseline_mb``.

    ``baseline_mb``: the zero of ``above_baseline_mb``; default the memory in use when the block starts.
    """

    def __init__(self, baseline_mb: float | None = None):
        self.usage = MemoryUsage(device="cuda" if _cuda() else "cpu")
        self.given = baseline_mb

    def __enter__(self) -> MemoryUsage:
        _reset_peak()
        self.usage.baseline_mb = self.given if self.given is not None else memory_in_use_mb()
        return self.usage

    def __exit__(self, *exc: Any) -> None:
        self.usage.peak_mb = _peak_mb()


def footprint_bytes(model: Any) -> int:
    """Bytes of a model's parameters and buffers as stored: a tensor subclass (torchao) is counted by
    the inner tensors that hold it, where ``get_memory_footprint`` counts it at its outer dtype."""

    def size(tensor: Any) -> int:
        if hasattr(tensor, "__tensor_flatten__"):
            names, _ = tensor.__tensor_flatten__()
            return sum(size(inner) for inner in (getattr(tensor, n) for n in names) if inner is not None)
        return tensor.nbytes

    return sum(size(t) for t in [*model.parameters(), *model.buffers()])
