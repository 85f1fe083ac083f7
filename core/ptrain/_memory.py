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

* **breakdown** (:func:`training_breakdown`): the training peak above the baseline split into the
  model as loaded (parameters and buffers, ``footprint_bytes``), gradients (one per trainable
  parameter, its dtype), optimizer state (the optimizer's tensors after training) and the rest:
  activations, logits, temporaries, and memory the allocator holds (on CPU, freed memory that was not
  returned to the system counts as resident).

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
    return sum(_bytes(t) for t in [*model.parameters(), *model.buffers()])


def trim_freed_memory() -> None:
    """Give memory freed inside the process back to the system (glibc ``malloc_trim``), so that what
    loading allocated and freed (a model quantized after loading, a converted checkpoint) is not counted
    as resident for the rest of the run. A no-op on CUDA memory and on other C libraries."""
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _bytes(tensor: Any) -> int:
    """Bytes of a tensor as stored; a tensor subclass (torchao, a sharded DTensor) by the tensors inside it."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(_bytes(inner) for inner in (getattr(tensor, n, None) for n in names) if hasattr(inner, "nbytes") or hasattr(inner, "__tensor_flatten__"))
    return int(getattr(tensor, "nbytes", 0))


def training_breakdown(model: Any, optimizer: Any, usage: MemoryUsage) -> dict[str, float]:
    """Where the training peak above the baseline went, in MiB: ``weights`` (the model's parameters and
    buffers), ``gradients`` (trainable parameters' size), ``optimizer_state`` (tensors the optimizer
    holds) and ``activations_and_other``, the remainder (activations, logits, temporaries, allocator
    slack). On CUDA every term is allocated memory; on CPU the remainder also holds what the C
    allocator kept."""
    import torch

    weights = footprint_bytes(model)
    gradients = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = 0
    for per_parameter in getattr(optimizer, "state", {}).values():
        for value in per_parameter.values() if isinstance(per_parameter, dict) else ():
            if isinstance(value, torch.Tensor):
                state += _bytes(value)
    parts = {"weights": weights / MIB, "gradients": gradients / MIB, "optimizer_state": state / MIB}
    parts["activations_and_other"] = max(usage.above_baseline_mb - sum(parts.values()), 0.0)
    return {name: round(value, 1) for name, value in parts.items()}
