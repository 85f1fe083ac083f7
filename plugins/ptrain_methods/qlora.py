"""QLoRA: load the base model in 4 bits (bitsandbytes NF4/FP4) so LoRA adapters train on top of it.

Composition rule: ``qlora`` only quantizes the base; the adapters come from ``lora``, listed
*before* it, with their settings in ``[lora]``::

    methods = ["sft", "lora", "qlora"]

The recipe order is the call order, so ``lora`` is the outer ``load_model`` wrapper and ``qlora``
the inner one: ``qlora`` sets ``run.model_kwargs["quantization_config"]`` before the core loads
the base and runs ``prepare_model_for_kbit_training`` on the 4-bit model; ``lora`` then adds
adapters to whatever model it receives. Neither plugin knows the other's code. A 4-bit base alone
cannot be trained, so a recipe naming ``qlora`` without ``lora`` before it is rejected by
``ptrain validate``. Export is ``lora``'s: the adapter, and the merge into an unquantized base at the
recipe's dtype (a merge into 4-bit weights would lose the base's precision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ptrain import (
    Recipe,
    RecipeError,
    ReportRow,
    Run,
    TrainingPlan,
    hookimpl,
    release_checkpoint_file,
    resolve_dtype,
)

ADAPTER_METHOD = "lora"
"""The adapter method suggested when a recipe has none (any method with trait ``adds_adapters`` will do)."""


@dataclass
class QLoraSection:
    """``[qlora]``: how the base model is quantized (adapter settings are in ``[lora]``)."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type of the base weights: NormalFloat4 (the QLoRA paper's) or plain FP4."""
    double_quant: bool = True
    """Also quantize the quantization constants (saves about 0.4 bit per weight)."""
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Dtype the 4-bit weights are de-quantized to for each matmul; ``auto`` is ``[model] dtype``'s choice."""


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"qlora": QLoraSection}


@hookimpl
def method_traits() -> list[str]:
    return ["quantizes_base"]


@hookimpl
def plan_memory(plan: TrainingPlan) -> None:
    """The base's attention and MLP projections are held in 4 bits (the core sizes them); the adapters train.
    Each 4-bit matmul de-quantizes its weight (one layer's at a time), and on CPU bitsandbytes' own code and
    buffers load after the baseline (measured about 35 MiB)."""
    plan.base_bits = 4
    facts = plan.facts
    plan.add(
        "de-quantized layer", 2 * facts.linear_parameters / facts.layers * plan.compute_bytes / 2**20, "activations_and_other",
        "one layer's projections at the compute dtype, forward and backward", method="qlora",
    )
    if plan.device == "cpu":
        plan.add("bitsandbytes runtime", 35.0, "activations_and_other", "measured on CPU", method="qlora")


@hookimpl
def validate_recipe(recipe: Recipe) -> None:
    methods = recipe.methods
    adapters = [m for m in recipe.methods_with("adds_adapters") if methods.index(m) < methods.index("qlora")]
    if not adapters:
        fixed = [m for m in methods if m not in ("qlora", ADAPTER_METHOD)] + [ADAPTER_METHOD, "qlora"]
        raise RecipeError(
            f"qlora only quantizes the base; the adapters that train come from {ADAPTER_METHOD!r} (or another method that "
            f"adds adapters), which must be listed before 'qlora' (got {methods}); use methods = {fixed}",
            key="methods",
        )
    if recipe.distributed.backend == "fsdp":
        raise RecipeError(
            "qlora is not supported with backend = 'fsdp': ptrain does not load the 4-bit base for sharding (its packed "
            "weights lose their 4-bit type in the shards) and has not verified it; use backend = 'ddp' (the 4-bit base "
            "is small enough to keep whole in every process)",
            key="distributed.backend",
        )
    import importlib.metadata

    try:
        importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        raise RecipeError("qlora needs bitsandbytes (pip install 'bitsandbytes>=0.45')", key="methods") from None


@hookimpl
def report_rows() -> list[ReportRow]:
    return [ReportRow("QLoRA base memory (MiB)", "qlora.base_memory_footprint_mb")]


def quantization_config(run: Run) -> Any:
    from transformers import BitsAndBytesConfig

    section: QLoraSection = run.section("qlora")
    dtype = run.recipe.model.dtype if section.compute_dtype == "auto" else section.compute_dtype
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=section.quant_type,
        bnb_4bit_use_double_quant=section.double_quant,
        bnb_4bit_compute_dtype=resolve_dtype(dtype),
    )


def quantized_summary(model: Any) -> dict[str, Any]:
    """What is 4-bit in ``model``: layer count, storage and the base's memory footprint."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    state = layers[0].weight.quant_state if layers else None
    return {
        "quantized_linear_layers": len(layers),
        "base_weight_bits": 4 if layers else None,
        "quant_type": getattr(state, "quant_type", None),
        "double_quant": bool(getattr(state, "nested", False)),
        "compute_dtype": str(layers[0].compute_dtype).removeprefix("torch.") if layers else None,
        "weight_storage_dtype": str(layers[0].weight.dtype).removeprefix("torch.") if layers else None,
        "base_memory_footprint_mb": round(model.get_memory_footprint() / 2**20, 3),
    }


@hookimpl(wrapper=True)
def load_model(run: Run) -> Any:
    from peft import prepare_model_for_kbit_training

    run.model_kwargs["quantization_config"] = quantization_config(run)
    loaded = yield
    summary = quantized_summary(loaded.model)
    if not summary["quantized_linear_layers"]:
        raise RecipeError(f"model.name = {run.recipe.model.name!r}: bitsandbytes quantized no linear layer of this model")
    run.log.info(
        "qlora: %d linear layers in 4-bit %s, base %.1f MiB",
        summary["quantized_linear_layers"],
        summary["quant_type"],
        summary["base_memory_footprint_mb"],
    )
    run.metrics["qlora"] = summary
    prepare_model_for_kbit_training(loaded.model, use_gradient_checkpointing=run.recipe.train.gradient_checkpointing)
    # the fp32 checkpoint quantizing read would otherwise stay mapped (and resident) for the whole run
    release_checkpoint_file(loaded.model)
    return loaded
