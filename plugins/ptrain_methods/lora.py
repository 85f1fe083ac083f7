"""LoRA: train low-rank adapters (peft) instead of the model's weights; export the adapter and a merged model.

``methods = ["sft", "lora"]`` trains adapters with SFT. ``lora`` wraps ``load_model``: whatever
model the inner loaders return (full precision, or 4-bit from ``qlora`` listed after it) gets
adapters on the modules named by ``[lora] target_modules``. Export writes ``adapter/`` (loads
with ``PeftModel.from_pretrained``) and, with ``merge = true``, ``model/``: the adapter merged
into a freshly loaded, unquantized base at the recipe's dtype (loads with plain
``AutoModelForCausalLM.from_pretrained``). Both carry the tokenizer and its chat template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ptrain import (
    LoadedModel,
    Recipe,
    RecipeError,
    ReportRow,
    Run,
    atomic_dir,
    dir_size,
    hookimpl,
    load_pretrained,
)

ALL_LINEAR = "all-linear"


@dataclass
class LoraSection:
    """``[lora]``: the adapters added to the model."""

    r: int = 16
    """Rank of the low-rank update."""
    alpha: float = 32.0
    """Scaling numerator: updates are scaled by ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``)."""
    dropout: float = 0.05
    target_modules: list[str] | str = ALL_LINEAR
    """Module names to adapt (``["q_proj", "v_proj"]``, matched against the end of each module's
    name), ``"all-linear"`` (every linear layer but the output head), or a regular expression
    matched against full module names."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases to train as well."""
    modules_to_save: list[str] = field(default_factory=list)
    """Modules trained in full and saved with the adapter (e.g. ``["lm_head"]``)."""
    use_rslora: bool = False
    """Rank-stabilised scaling ``alpha / sqrt(r)``."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA): slower, sometimes better at low rank."""
    merge: bool = True
    """Also export ``model/``: the adapter merged into the unquantized base."""

    def validate(self) -> None:
        if self.r < 1:
            raise RecipeError(f"must be a positive rank, got {self.r}; typical values are 8 to 64", key="r")
        if self.alpha <= 0:
            raise RecipeError(f"must be > 0, got {self.alpha}; a common choice is 2 * r", key="alpha")
        if not 0 <= self.dropout < 1:
            raise RecipeError(f"must be in [0, 1), got {self.dropout}", key="dropout")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise RecipeError('is empty; name modules (e.g. ["q_proj", "v_proj"]) or use "all-linear"', key="target_modules")
        if isinstance(self.target_modules, str) and self.target_modules != ALL_LINEAR:
            try:
                re.compile(self.target_modules)
            except re.error as err:
                raise RecipeError(
                    f'{self.target_modules!r} is neither "all-linear" nor a valid regular expression ({err}); '
                    'use a list of module names such as ["q_proj", "v_proj"]',
                    key="target_modules",
                ) from None


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"lora": LoraSection}


@hookimpl
def validate_recipe(recipe: Recipe) -> None:
    if recipe.trainer_owner is None:
        raise RecipeError(
            f"lora adds adapters for a trainer to train, and no method in methods builds one; add one (e.g. methods = {['sft', *recipe.methods]!r})",
            key="methods",
        )


@hookimpl
def report_rows() -> list[ReportRow]:
    return [
        ReportRow("adapter size (MiB)", "final.adapter_size_mb"),
        ReportRow("LoRA trainable share (%)", "lora.trainable_percent"),
    ]


def linear_module_names(model: Any) -> list[str]:
    """Distinct short names of the model's linear layers (``q_proj``, ``c_attn``…), the valid targets."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))})


def check_targets(model: Any, targets: list[str] | str, source: str | None = None) -> None:
    """Raise a RecipeError naming the model's linear layers when a target matches no module."""
    if targets == ALL_LINEAR:
        return
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(targets, str):
        missing = [] if any(re.fullmatch(targets, n) for n in names) else [targets]
    else:
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise RecipeError(
            f"{', '.join(repr(m) for m in missing)} not found in the model; its linear modules are "
            f"{', '.join(linear_module_names(model))} (or use \"all-linear\")",
            source=source,
            key="lora.target_modules",
        )


def generates(model: Any) -> bool:
    """A causal LM (adapters of task ``CAUSAL_LM``) rather than a classifier such as a reward model (``SEQ_CLS``)."""
    can_generate = getattr(model, "can_generate", None)
    return bool(can_generate()) if callable(can_generate) else True


def peft_config(section: LoraSection, task_type: str = "CAUSAL_LM") -> Any:
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type,
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=section.target_modules,
        bias=section.bias,
        modules_to_save=list(section.modules_to_save) or None,
        use_rslora=section.use_rslora,
        use_dora=section.use_dora,
    )


@hookimpl(wrapper=True)
def load_model(run: Run) -> Any:
    from peft import get_peft_model

    loaded = yield
    section: LoraSection = run.section("lora")
    model = loaded.model
    check_targets(model, section.target_modules, run.recipe.source_of("lora.target_modules"))
    if run.recipe.train.gradient_checkpointing:
        # checkpointed blocks need an input that requires grad, or no gradient reaches the adapters
        model.enable_input_require_grads()
    # a classifier's new head (a reward model's score) trains in full next to the adapters: peft's SEQ_CLS does that
    peft_model = get_peft_model(model, peft_config(section, "CAUSAL_LM" if generates(model) else "SEQ_CLS"))
    trainable, total = peft_model.get_nb_trainable_parameters()
    percent = 100 * trainable / total if total else 0.0
    run.log.info("lora: %d trainable parameters of %d (%.2f%%)", trainable, total, percent)
    run.metrics["lora"] = {
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": round(percent, 4),
        "adapted_modules": len(peft_model.targeted_module_names),
    }
    return LoadedModel(peft_model, loaded.tokenizer)


def merged_model(run: Run, adapter_dir: Path) -> Any:
    """The saved adapter merged into a fresh, unquantized copy of the base at the recipe's dtype."""
    from peft import PeftModel

    extra = {k: v for k, v in run.model_kwargs.items() if k not in ("quantization_config", "device_map")}
    if not generates(run.model):
        extra |= {"head": "sequence_classification", "num_labels": run.model.config.num_labels}
    base, _ = load_pretrained(run.recipe.model, seed=run.recipe.seed, **extra)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


@hookimpl
def export(run: Run) -> list[str]:
    if not run.recipe.output.save_model:
        return []
    section: LoraSection = run.section("lora")
    adapter = run.dir / "adapter"
    with atomic_dir(adapter) as tmp:
        run.model.save_pretrained(tmp, safe_serialization=True)
        run.tokenizer.save_pretrained(tmp)
    run.artifacts["adapter"] = str(adapter)
    final = run.metrics.setdefault("final", {})
    final["adapter_size_mb"] = round(dir_size(adapter) / 2**20, 3)
    written = [str(adapter)]
    if section.merge:
        target = run.dir / "model"
        with atomic_dir(target) as tmp:
            model = merged_model(run, adapter)
            model.save_pretrained(tmp, safe_serialization=True)
            run.tokenizer.save_pretrained(tmp)
            del model
        run.artifacts["model"] = str(target)
        final["model_size_mb"] = round(dir_size(target) / 2**20, 3)
        written.append(str(target))
    else:
        # the adapter is this run's model: keep the core from saving the peft wrapper a second time
        run.artifacts["model"] = str(adapter)
        final["model_size_mb"] = final["adapter_size_mb"]
    return written
