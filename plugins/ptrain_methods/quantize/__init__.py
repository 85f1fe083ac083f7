"""Post-training quantization: bitsandbytes (INT8 LLM.int8, 4-bit NF4/FP4) and torchao (INT8) exports, each measured.

The method needs no trainer: ``methods = ["quantize"]`` quantizes the recipe's model (or
``quantize.source``); after a training method it quantizes the trained model. Its ``export`` hook
is a wrapper: every other exporter runs first (the core saves ``model/``, a LoRA method its merged
model), then each variant is quantized from that directory, saved to ``quantized/<variant>/``
(safetensors + ``quantization_config`` in ``config.json``, reloadable with plain
``from_pretrained``), reloaded from disk and measured against the unquantized model on the same
text and prompts. The table lands in ``metrics.json`` under ``quantize`` and on the terminal; each
model row names the backend (and its version) that made it.

Backends: bitsandbytes (the default; the GPU path, NF4/FP4, what QLoRA trains on) and, with
``pip install torchao``, torchao's ``ao-int8-weight`` (int8 weights with per-row scales, activations
in the compute dtype) and ``ao-int8-dynamic`` (int8 weights and per-token int8 activations). On CPU
torchao's INT8 weight-only is the better INT8: on SmolLM2-135M it lost 0.8 % perplexity and ran at
1.2x fp32 speed where bitsandbytes INT8 lost 3.1 % at 0.46x (bench/quantize_smollm2.py). Both
backends go through transformers: ``from_pretrained(quantization_config=BitsAndBytesConfig(...) or
TorchAoConfig(...))``.

Export format of the torchao variants: safetensors as well. transformers' torchao quantizer flattens
each torchao tensor subclass into plain tensors (``...down_proj._weight_qdata``, ``_weight_scale``,
``_weight_zero_point``) and records the subclass (``Int8Tensor``) in the safetensors header; a plain
``from_pretrained(dir)`` rebuilds it, with torchao installed. That needs torchao >= 0.16 and the
configs' ``version=2`` (before 0.18 the default, version 1, makes an ``AffineQuantizedTensor`` that
safetensors export rejects). No int4 torchao variant: torchao 0.18's ``Int4WeightOnlyConfig`` needs
mslk or CUDA, and the CPU-capable ``IntxWeightOnlyConfig(torch.int4)`` keeps one int4 value per int8
byte, no smaller than INT8.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ptrain import Recipe, RecipeError, ReportRow, Run, check_model_name, hookimpl

from .backends import (
    TORCHAO_VARIANTS,
    VARIANTS,
    Variant,
    backend,
    bitsandbytes_problem,
    probe,
    torchao_problem,
)
from .measure import quantize_and_measure, source_model

__all__ = ["QuantizeSection", "TORCHAO_VARIANTS", "VARIANTS", "Variant", "backend", "probe"]


@dataclass
class QuantizeSection:
    """``[quantize]``: which quantized variants to export and how to measure them."""

    variants: list[Variant] = field(default_factory=lambda: ["int8", "nf4"])
    """Variants to export. bitsandbytes: ``int8`` (LLM.int8), ``nf4``/``fp4`` (4-bit), ``nf4-dq``/``fp4-dq``
    (4-bit with double quantization). torchao (``pip install torchao``): ``ao-int8-weight`` (int8
    weight-only, the faster INT8 on CPU), ``ao-int8-dynamic`` (int8 weights and activations)."""
    source: str | None = None
    """Model directory (or a previous run's directory holding ``model/``) or hub ID to quantize;
    default: this run's model (the trained one when the recipe trains, else ``[model]``)."""
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """dtype of the 4-bit matmuls and of the modules left unquantized; ``auto``: bfloat16 (or float16)
    on a GPU, float32 on CPU. The unquantized reference is measured in ``[model].dtype``."""
    keep_modules: list[str] = field(default_factory=list)
    """Linear layers the 4-bit variants (``nf4``, ``fp4``, ``-dq``) leave unquantized, kept in ``compute_dtype``
    (8-bit variants, near-lossless already, quantize every layer): names as transformers matches them,
    a name's end (``"down_proj"``), a prefix (``"model.layers.0"``) or a regular expression.
    On SmolLM2 keeping ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` and ``down_proj`` in bfloat16 takes
    NF4's perplexity cost from +47 % to +10 % at 0.35x the fp32 footprint, and also keeping the first and
    last blocks (``"model.layers.0"``, ``"model.layers.29"``) to +6.7 % at 0.36x (bench/README.md)."""
    llm_int8_threshold: float = 6.0
    """bitsandbytes INT8 outlier threshold: activations above it are computed in 16-bit (LLM.int8 mixed decomposition)."""
    evaluate: bool = True
    """Measure every variant against the unquantized model; false only exports."""
    perplexity_text: str | None = None
    """UTF-8 text file for perplexity; default: the eval split, prompt + completion of each row joined by blank lines."""
    window: int = 512
    """Sliding-window length for perplexity (capped at the model's maximum positions)."""
    stride: int = 256
    """Tokens between window starts; each window scores only its last ``stride`` tokens (context >= window - stride)."""
    max_tokens: int = 32768
    """Perplexity reads at most this many tokens of the text."""

    def validate(self) -> None:
        if not self.variants:
            raise RecipeError("needs at least one variant, e.g. [\"int8\", \"nf4\"]", key="variants")
        duplicates = sorted({v for v in self.variants if self.variants.count(v) > 1})
        if duplicates:
            raise RecipeError(f"variant {duplicates[0]!r} is listed twice", key="variants")
        if not 0 < self.stride <= self.window:
            raise RecipeError(f"need 0 < stride <= window, got stride {self.stride} and window {self.window}", key="stride")
        if self.max_tokens < 2:
            raise RecipeError("must be >= 2", key="max_tokens")
        for name in self.keep_modules:
            if not isinstance(name, str) or not name.strip():
                raise RecipeError(f"needs module names such as \"down_proj\", got {name!r}", key="keep_modules")
            try:
                re.compile(name)
            except re.error as err:
                raise RecipeError(f"{name!r} is not a valid name pattern ({err}); e.g. \"down_proj\" or \"model.layers.0\"", key="keep_modules") from None
        if self.llm_int8_threshold <= 0:
            raise RecipeError("must be > 0 (6.0 is the LLM.int8 paper's value)", key="llm_int8_threshold")
        if self.perplexity_text is not None and not Path(self.perplexity_text).expanduser().is_file():
            raise RecipeError(f"text file {self.perplexity_text!r} not found (relative paths are read from {Path.cwd()})", key="perplexity_text")
        if self.source is not None:
            check_model_name(self.source, "source")


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"quantize": QuantizeSection}


@hookimpl
def validate_recipe(recipe: Recipe) -> None:
    """A variant whose backend is missing or too old fails here, before anything is loaded."""
    section: QuantizeSection = recipe.section("quantize")
    for name, problem_of in (("bitsandbytes", bitsandbytes_problem), ("torchao", torchao_problem)):
        wanted = [v for v in section.variants if backend(v) == name]
        problem = problem_of() if wanted else None
        if problem:
            raise RecipeError(f"variant {wanted[0]!r} cannot be made: {problem}", key="quantize.variants")


@hookimpl
def report_rows() -> list[ReportRow]:
    return [
        ReportRow("perplexity, sliding window over the eval text", "final.window_perplexity"),
        ReportRow("perplexity change vs unquantized (%)", "final.perplexity_increase_pct"),
    ]


@hookimpl(wrapper=True)
def load_model(run: Run) -> Any:
    """Before anything is loaded or trained: prove every variant runs on this machine's backend."""
    section: QuantizeSection = run.section("quantize")
    for variant in section.variants:
        probe(variant, section)
    return (yield)


@hookimpl(wrapper=True)
def export(run: Run) -> Any:
    written = yield
    section: QuantizeSection = run.section("quantize")
    with source_model(run, section) as source:
        paths = quantize_and_measure(run, section, source)
    return [*(written or []), paths]  # one list per implementation, as the core expects
