"""The machine's own limits: whether a CPU computes bf16 faster than fp32, its matmul peak, and a run's utilisation.

``train.precision = "auto"`` on a CPU picks bf16 autocast only where the CPU has bf16 instructions
(``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``) *and* a short matmul probe measures bf16
faster than fp32 by :data:`BF16_MIN_SPEEDUP`, for models large enough for matmuls to dominate a
step (:data:`BF16_MIN_PARAMETERS`). The probe (fp32 and bf16 GFLOP/s of square matmuls, about a
second) is cached per CPU, thread count and torch version in ``~/.cache/ptrain/matmul_peak.json``
(``PTRAIN_CACHE_DIR`` moves it); the same peak is what a run's model-FLOPs utilisation is measured against.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("ptrain")

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_MIN_SPEEDUP = 1.15
"""bf16 matmuls must be this much faster than fp32's for ``auto`` to choose them (autocast adds casts)."""
BF16_MIN_PARAMETERS = 20_000_000
"""Below this, a CPU step is dominated by overheads, not matmuls: ``auto`` stays fp32 (tests' tiny models)."""
PROBE_SIZE = 1024


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``train.precision`` became on this machine, and why (logged, saved in ``env.json``)."""

    requested: str
    chosen: str  # "fp32", "bf16" or "fp16"
    reason: str

    def flags(self) -> dict[str, bool]:
        return {"bf16": self.chosen == "bf16", "fp16": self.chosen == "fp16"}


def _cpuinfo(field: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    return set(_cpuinfo("flags").split())


def _cache_file() -> Path:
    root = os.environ.get("PTRAIN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ptrain")
    return Path(root) / "matmul_peak.json"


def _probe_key() -> str:
    import platform

    import torch

    return f"{_cpuinfo('model name') or platform.processor()}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def measure_matmul_gflops(dtype: Any, *, size: int = PROBE_SIZE, seconds: float = 0.4) -> float:
    """GFLOP/s of ``size × size`` matmuls on the CPU in ``dtype``, the best of repeated timings."""
    import torch

    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # warm: first-call dispatch and allocation
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        started = time.perf_counter()
        torch.mm(a, b)
        took = time.perf_counter() - started
        best, spent = min(best, took), spent + took
    return 2 * size**3 / best / 1e9


def matmul_peak(*, refresh: bool = False) -> dict[str, float]:
    """``{"fp32": GFLOP/s, "bf16": GFLOP/s}`` of this CPU, measured once and cached."""
    import torch

    cache = _cache_file()
    key = _probe_key()
    known: dict[str, Any] = {}
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not refresh and isinstance(known.get(key), dict):
        return known[key]
    peak = {"fp32": round(measure_matmul_gflops(torch.float32), 1), "bf16": round(measure_matmul_gflops(torch.bfloat16), 1)}
    known[key] = peak
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=1), encoding="utf-8")
    except OSError:  # a read-only home: measured again next time
        pass
    return peak


def _cpu_bf16_ruled_out(parameters: int | None) -> str | None:
    """Why ``auto`` stays fp32 on this CPU before any matmul is timed, or None."""
    if not cpu_flags() & set(CPU_BF16_FLAGS):
        return "this CPU has no bf16 instructions (avx512_bf16, amx_bf16)"
    if parameters is not None and parameters < BF16_MIN_PARAMETERS:
        return f"a model of {parameters / 1e6:.1f} M parameters is too small for bf16 to pay on a CPU"
    return None


def cpu_bf16_choice(parameters: int | None = None) -> tuple[bool, str]:
    """``(train in bf16 on this CPU, why)`` for ``auto``."""
    ruled_out = _cpu_bf16_ruled_out(parameters)
    if ruled_out:
        return False, ruled_out
    flags = cpu_flags() & set(CPU_BF16_FLAGS)
    peak = matmul_peak()
    speedup = peak["bf16"] / max(peak["fp32"], 1e-9)
    measured = f"bf16 matmuls measured {speedup:.2f}x fp32's ({peak['bf16']:.0f} vs {peak['fp32']:.0f} GFLOP/s)"
    if speedup < BF16_MIN_SPEEDUP:
        return False, f"{measured}, under the {BF16_MIN_SPEEDUP}x that pays for autocast"
    return True, f"the CPU has {', '.join(sorted(flags))} and {measured}"


def cpu_bf16_expected(parameters: int | None = None) -> bool:
    """Whether ``auto`` will pick bf16 on this CPU, told without measuring or importing torch (for ``ptrain plan``):
    the CPU's flags, the model's size, and the cached probe of this CPU model where there is one (flags alone otherwise)."""
    if _cpu_bf16_ruled_out(parameters):
        return False
    try:
        known = json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    model = _cpuinfo("model name")
    speedups = [
        peak["bf16"] / max(peak["fp32"], 1e-9)
        for key, peak in known.items()
        if isinstance(peak, dict) and key.split("|", 1)[0] == model and {"bf16", "fp32"} <= peak.keys()
    ]
    return not speedups or max(speedups) >= BF16_MIN_SPEEDUP


def choose_precision(
    precision: str, *, cuda: bool, bf16: bool, cpu_bf16: bool | None = None, parameters: int | None = None
) -> PrecisionChoice:
    """What ``train.precision`` means here. ``cuda``/``bf16`` describe the GPU; ``cpu_bf16`` whether
    ``auto`` should use bf16 on this CPU (probed when left out)."""
    from ptrain._errors import RecipeError

    if cuda:
        if precision == "auto":
            chosen = "bf16" if bf16 else "fp16"
            return PrecisionChoice(precision, chosen, "the GPU computes bf16" if bf16 else "the GPU has no bf16 (before Ampere): fp16")
        return PrecisionChoice(precision, precision, "set in the recipe")
    if precision == "fp16":
        raise RecipeError("train.precision = 'fp16' needs a CUDA GPU; use 'bf16', 'auto' or 'fp32' on this machine")
    if precision == "auto":
        if cpu_bf16 is None:
            use, why = cpu_bf16_choice(parameters)
        else:
            use, why = cpu_bf16, "given"
        return PrecisionChoice(precision, "bf16" if use else "fp32", why)
    return PrecisionChoice(precision, precision, "set in the recipe" + (" (bf16 autocast on the CPU)" if precision == "bf16" else ""))


def training_flops(model: Any, tokens: int, sequence_length: float) -> float:
    """Model FLOPs of training on ``tokens`` tokens: forward ``2·P``, backward through the activations
    ``2·P``, weight gradients ``2·P_trainable`` per token (``6·P`` for full fine-tuning), plus
    attention's ``12 · layers · hidden · sequence length`` (PaLM's count); P leaves out the input embedding."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    skip = {id(p) for p in embedding.parameters()} if embedding is not None else set()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        skip -= {id(p) for p in head.parameters()}  # a tied head is a matmul every token
    params = [p for p in model.parameters() if id(p) not in skip]
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", 0) or 0
    hidden = getattr(config, "hidden_size", 0) or 0
    return float(tokens) * (4 * total + 2 * trainable + 12 * layers * hidden * sequence_length)


def utilisation(model: Any, tokens: int, seconds: float, sequence_length: float, precision: str) -> dict[str, Any]:
    """``{"model_tflops": achieved, "peak_tflops": this CPU's matmul peak, "mfu": their ratio}`` of a training run on CPU."""
    if seconds <= 0 or not tokens:
        return {}
    achieved = training_flops(model, tokens, sequence_length) / seconds
    peak = matmul_peak()["bf16" if precision == "bf16" else "fp32"] * 1e9
    return {"model_tflops": round(achieved / 1e12, 4), "peak_tflops": round(peak / 1e12, 4), "mfu": round(achieved / peak, 4)}
