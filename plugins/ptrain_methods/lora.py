"""LoRA: train low-rank adapters (peft) instead of the model's weights; export the adapter and a merged model.

``methods = ["sft", "lora"]`` trains adapters with SFT. ``lora`` wraps ``load_model``: whatever
model the inner loaders return (full precision, or 4-bit from ``qlora`` listed after it) gets
adapters on the modules named by ``[lora] target_modules``. Export writes ``adapter/`` (loads
with ``PeftModel.from_pretrained``) and, with ``merge = true``, ``model/``: the adapter merged
into a freshly loaded, unquantized base at the recipe's dtype (loads with plain
``AutoModelForCausalLM.from_pretrained``). Both carry the tokenizer and its chat template.

Its variants are keys of ``[lora]``: ``use_dora`` (DoRA), ``use_rslora`` (rank-stabilised
scaling), and ``init``: ``pissa`` and ``olora`` start the adapter from the principal components
(SVD) or a QR decomposition of each weight and train on the residual. peft re-derives that
residual from the base whenever it loads the adapter, so ``adapter/`` still loads with plain
``PeftModel.from_pretrained`` on the original model. LoftQ is not offered: peft 0.21 computes it
on CUDA or XPU only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ptrain import LoadedModel, Recipe, RecipeError, ReportRow, Run

from .adapters import (
    AdapterMethod,
    LowRankSection,
    check_probability,
    check_targets,
    fp32_lora,
    low_rank_parameters,
)

RESIDUAL_INITS = ("pissa", "olora")
"""Initialisations that rewrite the base weights as a residual."""


@dataclass
class LoraSection(LowRankSection):
    """``[lora]``: the adapters added to the model."""

    dropout: float = 0.05
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases to train as well."""
    modules_to_save: list[str] = field(default_factory=list)
    """Modules trained in full and saved with the adapter (e.g. ``["lm_head"]``)."""
    use_rslora: bool = False
    """Rank-stabilised scaling ``alpha / sqrt(r)`` (rsLoRA)."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA): slower, sometimes better at low rank."""
    fp32_adapters: bool = True
    """Under bf16 autocast (``train.precision`` bf16, or ``auto`` where it picks bf16) compute the adapters' update and
    its sum with the base projection in fp32, the base projection's matmul still in bf16: fp32's quality at bf16's
    speed, for more activation memory (bench/README.md); false: all of it in bf16, as autocast alone does."""
    init: Literal["default", "gaussian", "orthogonal", "pissa", "olora"] = "default"
    """How A and B start: ``default`` (B = 0, the adapter a no-op), ``gaussian``, ``orthogonal``,
    ``pissa`` (the top-r singular vectors of each weight; the base keeps the residual) or ``olora``
    (a QR decomposition of each weight, likewise)."""

    def validate(self) -> None:
        super().validate()
        check_probability(self.dropout, "dropout")


def lora_config(section: LoraSection, loaded: LoadedModel, run: Run) -> Any:
    from peft import LoraConfig

    check_targets(loaded.model, section.target_modules, "lora.target_modules", run.recipe.source_of("lora.target_modules"))
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=section.target_modules,
        bias=section.bias,
        modules_to_save=list(section.modules_to_save) or None,
        use_rslora=section.use_rslora,
        use_dora=section.use_dora,
        init_lora_weights=True if section.init == "default" else section.init,
    )


def check_composition(recipe: Recipe) -> None:
    init = recipe.section("lora").init
    quantized = recipe.methods_with("quantizes_base")
    if init in RESIDUAL_INITS and quantized:
        raise RecipeError(
            f"{init} rewrites the base weights as a residual of the adapter, and a quantized base ({quantized[0]}) would hold a "
            f"re-quantized residual that no saved model matches; use lora.init = 'default' with {quantized[0]}, or drop {quantized[0]}",
            key="lora.init",
        )


METHOD = AdapterMethod(
    "lora",
    LoraSection,
    lora_config,
    rows=[ReportRow("LoRA trainable share (%)", "lora.trainable_percent")],
    check=check_composition,
    prepare=lambda peft_model, section, loaded: fp32_lora(peft_model) if section.fp32_adapters else None,
    rewrites_base=lambda section: section.init in RESIDUAL_INITS,
    trainable=low_rank_parameters,
    activation_share=0.6,
)
recipe_sections, method_traits, validate_recipe, report_rows, load_model, evaluate, export = METHOD.hooks()
plan_memory = METHOD.plan_hook()
