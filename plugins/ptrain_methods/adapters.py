"""What every peft method of ptrain shares: one ``AdapterMethod`` gives a method its hooks.

``lora``, ``ia3``, ``loha``, ``lokr``, ``prompt_tuning``, ``prefix_tuning`` and ``p_tuning`` are
each a plugin module of their own (a section, a peft config built from it, a paragraph of
documentation) whose hooks come from one ``AdapterMethod``::

    METHOD = AdapterMethod("ia3", IA3Section, ia3_config, prompt_learning=False)
    recipe_sections, method_traits, validate_recipe, report_rows, load_model, evaluate, export = METHOD.hooks()

The hooks: the section; the whole-recipe checks (a trainer to train the adapter, one adapter
method per recipe, what prompt learning cannot do); a ``load_model`` wrapper that puts the
adapter on whatever model the inner loaders return (``get_peft_model``) and reports trainable
parameters under ``metrics.json[<method>]``; an ``export`` that writes ``adapter/`` (loads with
``PeftModel.from_pretrained``) and, where the method's weights can be folded into the model's,
``model/``: the adapter merged into a freshly loaded, unquantized base at the recipe's dtype.
Soft prompts and prefixes are extra inputs, not changes to any weight: those methods export the
adapter alone, and ``adapter/`` is the run's model.

This module is not a plugin (it has no entry point); it uses only the public ``ptrain`` API.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptrain import (
    LoadedModel,
    ModelFacts,
    Recipe,
    RecipeError,
    ReportRow,
    Run,
    TrainingPlan,
    atomic_dir,
    dir_size,
    hookimpl,
    is_language_model,
    load_pretrained,
    write_model_card,
)

ALL_LINEAR = "all-linear"
ADAPTER_SIZE = ReportRow("adapter size (MiB)", "final.adapter_size_mb")
ADAPTER_WEIGHTS = ReportRow("adapter weights (MiB)", "final.adapter_weights_mb")
"""``adapter/``'s weights file alone: its size without the tokenizer files saved beside it (about 3 MiB for SmolLM2)."""
ADAPTER_NAME = "default"
"""The name ``get_peft_model`` gives the adapter (and under which ``adapter/`` holds it at its root)."""


# ------------------------------------------------------------------ sections


def check_target_modules(targets: list[str] | str, choices: Sequence[str] = (ALL_LINEAR,)) -> None:
    """The section-level check of a ``target_modules`` key: a non-empty list, one of ``choices``, or a regex."""
    if isinstance(targets, list) and not targets:
        raise RecipeError(f'is empty; name modules (e.g. ["q_proj", "v_proj"]) or use "{choices[0]}"', key="target_modules")
    if isinstance(targets, str) and targets not in choices:
        try:
            re.compile(targets)
        except re.error as err:
            named = " nor ".join(f'"{c}"' for c in choices)
            raise RecipeError(
                f"{targets!r} is neither {named} nor a valid regular expression ({err}); "
                'use a list of module names such as ["q_proj", "v_proj"]',
                key="target_modules",
            ) from None


def check_probability(value: float, key: str) -> None:
    if not 0 <= value < 1:
        raise RecipeError(f"must be in [0, 1), got {value}", key=key)


@dataclass
class LowRankSection:
    """Keys shared by the low-rank weight adapters (``[lora]``, ``[loha]``, ``[lokr]``)."""

    r: int = 16
    """Rank of the low-rank update."""
    alpha: float = 32.0
    """Scaling numerator: updates are scaled by ``alpha / r``."""
    target_modules: list[str] | str = ALL_LINEAR
    """Module names to adapt (``["q_proj", "v_proj"]``, matched against the end of each module's
    name), ``"all-linear"`` (every linear layer but the output head), or a regular expression
    matched against full module names."""
    merge: bool = True
    """Also export ``model/``: the adapter merged into the unquantized base."""

    def validate(self) -> None:
        if self.r < 1:
            raise RecipeError(f"must be a positive rank, got {self.r}; typical values are 8 to 64", key="r")
        if self.alpha <= 0:
            raise RecipeError(f"must be > 0, got {self.alpha}; a common choice is 2 * r", key="alpha")
        check_target_modules(self.target_modules)


@dataclass
class LycorisSection(LowRankSection):
    """Keys shared by the LyCORIS adapters (``[loha]``, ``[lokr]``)."""

    r: int = 8
    alpha: float = 8.0
    rank_dropout: float = 0.0
    """Dropout on each rank of the update while training."""
    module_dropout: float = 0.0
    """Probability of leaving a whole layer's update out of a training step."""

    def validate(self) -> None:
        super().validate()
        check_probability(self.rank_dropout, "rank_dropout")
        check_probability(self.module_dropout, "module_dropout")


def lycoris_options(section: LycorisSection, loaded: LoadedModel, run: Run, method: str) -> dict[str, Any]:
    """The peft config arguments LoHa and LoKr share, after checking their targets: linear layers only."""
    import torch

    key = f"{method}.target_modules"
    check_targets(loaded.model, section.target_modules, key, run.recipe.source_of(key), layer_types=(torch.nn.Linear,), method=method)
    return {
        "task_type": "CAUSAL_LM",
        "r": section.r,
        "alpha": section.alpha,
        "rank_dropout": section.rank_dropout,
        "module_dropout": section.module_dropout,
        "target_modules": section.target_modules,
    }


@dataclass
class VirtualTokensSection:
    """Keys shared by the prompt-learning methods (``[prompt_tuning]``, ``[prefix_tuning]``, ``[p_tuning]``)."""

    num_virtual_tokens: int = 20
    """Trainable tokens (soft prompt or per-layer prefix) the model sees before every input."""
    merge: bool = False
    """Always false: virtual tokens are extra input, not a change to any weight, so there is no
    merged model; ``adapter/`` is the run's model. (The key exists so that ``merge = true`` says so.)"""

    def validate(self) -> None:
        if self.merge:
            raise RecipeError(
                "cannot be true: virtual tokens are extra input, not a change to any weight, so there is no merged "
                "model to export; remove the key (adapter/ is the model: PeftModel.from_pretrained(base, adapter))",
                key="merge",
            )
        if not 1 <= self.num_virtual_tokens <= 512:
            raise RecipeError(f"must be in [1, 512], got {self.num_virtual_tokens}; typical values are 8 to 100", key="num_virtual_tokens")


def low_rank_parameters(section: Any, facts: ModelFacts, factor: int = 1) -> int:
    """Parameters of rank-``r`` adapters on the projections ``section.target_modules`` names: ``r x (in + out)``
    per projection and layer (``factor`` such pairs each: LoHa has two)."""
    shapes = facts.matching_projections(section.target_modules)
    extra = sum(out for _, out in shapes) if getattr(section, "use_dora", False) else 0  # DoRA's magnitude vectors
    return facts.layers * (factor * section.r * sum(i + o for i, o in shapes) + extra)


# ------------------------------------------------------------------ target modules


def linear_module_names(model: Any) -> list[str]:
    """Distinct short names of the model's linear layers (``q_proj``, ``c_attn``…), the valid targets."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))})


def matched_modules(model: Any, target: str, regex: bool = False) -> list[tuple[str, Any]]:
    """The model's modules a target names, as peft matches them: a regex on the full name, else the name's end."""
    found = [(n, m) for n, m in model.named_modules() if n]
    if regex:
        return [(n, m) for n, m in found if re.fullmatch(target, n)]
    return [(n, m) for n, m in found if n == target or n.endswith("." + target)]


def check_targets(
    model: Any,
    targets: list[str] | str,
    key: str,
    source: str | None = None,
    layer_types: tuple[type, ...] | None = None,
    method: str = "",
) -> None:
    """Raise a RecipeError naming the model's linear layers when a target matches no module, or
    (with ``layer_types``) matches a layer the method cannot adapt."""
    head = model.get_output_embeddings()
    if targets == ALL_LINEAR:
        if layer_types is None:
            return
        import torch
        from transformers.pytorch_utils import Conv1D

        matches = [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head]
    else:
        names = [targets] if isinstance(targets, str) else targets
        per_target = {t: matched_modules(model, t, regex=isinstance(targets, str)) for t in names}
        missing = [t for t, found in per_target.items() if not found]
        if missing:
            raise RecipeError(
                f"{', '.join(repr(m) for m in missing)} not found in the model; its linear modules are "
                f"{', '.join(linear_module_names(model))} (or use \"all-linear\")",
                source=source,
                key=key,
            )
        matches = [pair for found in per_target.values() for pair in found]
    if layer_types is not None:
        unfit = next(((n, m) for n, m in matches if not isinstance(m, layer_types)), None)
        if unfit is not None:
            kinds = " or ".join(t.__name__ for t in layer_types)
            fits = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, layer_types) and m is not head})
            raise RecipeError(
                f"{unfit[0]!r} is a {type(unfit[1]).__name__}, and {method} adapts only {kinds} layers; "
                + (f"this model's are {', '.join(fits)}" if fits else "this model has none (use lora or ia3)"),
                source=source,
                key=key,
            )


# ------------------------------------------------------------------ adapters under autocast

FP32_OUTPUT_BYTES = 5.75
"""What ``fp32_lora`` adds to a training peak, in bytes per adapted projection output value (token x layer x output
width): measured on SmolLM2-135M, LoRA on every projection, batch 8 x 256, against the same run in bf16 (+1746 MiB;
the quickstart's +0.9-1.1 GiB agrees). The outputs, and what the next ops keep of them, are fp32 instead of bf16."""
FP32_OUTPUT_BYTES_CHECKPOINTED = 2.5
"""The same with gradient checkpointing (+759 MiB measured there, +836 MiB in a rerun): none of it is live tensors.
With glibc's mmap threshold fixed at 128 KiB, which returns every freed tensor to the system at once, the two runs
peak at 1828 and 1834 MiB: this term stands for freed pages of the recomputed layers' larger (fp32) transients that
the C allocator keeps with its default settings (bench/README.md, memory_levers)."""
_FULL_PRECISION_LINEAR: type | None = None


def full_precision_linear() -> type:
    """``torch.nn.Linear`` whose matmul leaves autocast: under bf16 autocast it runs in its weight's precision."""
    global _FULL_PRECISION_LINEAR
    if _FULL_PRECISION_LINEAR is None:
        import torch

        class FullPrecisionLinear(torch.nn.Linear):
            """An adapter's own projection, computed in its weight's dtype (fp32) even under autocast."""

            def forward(self, x: Any) -> Any:
                device = x.device.type
                if not torch.is_autocast_enabled(device):
                    return super().forward(x)
                with torch.autocast(device, enabled=False):
                    return torch.nn.functional.linear(x.to(self.weight.dtype), self.weight, self.bias)

        _FULL_PRECISION_LINEAR = FullPrecisionLinear
    return _FULL_PRECISION_LINEAR


def _fp32_under_autocast(module: Any, args: Any, output: Any) -> Any:
    """Forward hook: a base projection's autocast (bf16) output, upcast to fp32 so the adapter's update adds in fp32."""
    import torch

    if isinstance(output, torch.Tensor) and output.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(output.device.type):
        return output.float()
    return output


def fp32_lora(peft_model: Any) -> int:
    """Keep the LoRA adapters' precision under bf16 autocast; returns how many layers were changed.

    Under autocast each adapted projection computed ``W·x`` in bf16 (fast: the FLOPs), then the update ``B·A·x``
    in bf16 too, added it in bf16, and passed a bf16 sum on. Here ``lora_A`` and ``lora_B`` compute in their weights'
    dtype (fp32) and the base projection's bf16 output is upcast, so the update is added in fp32 and the sum goes on
    in fp32 (the next matmul casts it to bf16 again). Measured on the quickstart (bench/README.md): at equal steps
    bf16 autocast lost 1-4 answers of 30 at two of three seeds and 7-18 % eval loss, with this fp32's answers and eval
    loss (+0.8 % on average) at bf16's speed; it costs activation memory (the adapted projections' outputs are fp32).
    Without autocast (fp32 training, a bf16-loaded model, generation) nothing changes.
    """
    import torch

    linear = full_precision_linear()
    changed = 0
    for module in peft_model.modules():
        adapters = [getattr(module, name, None) for name in ("lora_A", "lora_B")]
        if not all(isinstance(a, torch.nn.ModuleDict) and len(a) for a in adapters):
            continue
        for projection in (p for a in adapters for p in a.values()):
            if type(projection) is torch.nn.Linear:
                projection.__class__ = linear
        base = getattr(module, "base_layer", None)
        if isinstance(base, torch.nn.Module) and _fp32_under_autocast not in base._forward_hooks.values():
            base.register_forward_hook(_fp32_under_autocast)
        changed += 1
    return changed


# ------------------------------------------------------------------ the method


def trainable_summary(peft_model: Any) -> dict[str, Any]:
    """Trainable and total parameters of a peft model, as the method's metrics report them."""
    trainable, total = peft_model.get_nb_trainable_parameters()
    return {
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": round(100 * trainable / total if total else 0.0, 4),
        "adapted_modules": len(getattr(peft_model, "targeted_module_names", None) or []),
    }


def merged_model(run: Run, adapter_dir: Path) -> Any:
    """The saved adapter merged into a fresh, unquantized copy of the base at the recipe's dtype."""
    from peft import PeftModel

    extra = {k: v for k, v in run.model_kwargs.items() if k not in ("quantization_config", "device_map")}
    if not is_language_model(run.model):
        extra |= {"head": "sequence_classification", "num_labels": run.model.config.num_labels}
    base, _ = load_pretrained(run.recipe.model, seed=run.recipe.seed, **extra)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


class AdapterMethod:
    """The hooks of one peft method (see the module docstring).

    :param name: the method's name, which is also its section and its ``metrics.json`` key.
    :param section: the section's dataclass.
    :param config: ``config(section, loaded, run)`` → the peft config for the loaded model; it
        checks what only the model can tell (target modules) and raises RecipeError.
    :param prompt_learning: a soft prompt or prefix (no merge; no packed sequences).
    :param rows: the method's report rows (the adapter's size is always one).
    :param prepare: ``prepare(peft_model, section, loaded)``, run once the adapter is on the model.
    :param check: ``check(recipe)``, the method's own whole-recipe checks.
    :param rewrites_base: ``rewrites_base(section)``: the adapter's initialisation moved part of
        the base weights into the adapter (PiSSA, OLoRA), so the base model is the model *with* it.
    :param trainable: ``trainable(section, facts)``: the adapter's parameter count, for ``plan_memory``.
    :param activation_share: the adapters' own activations, as a share of the adapted projections'
        outputs per token (measured: 0.6 for LoRA on CPU).
    :param input_tokens: a prompt-learning method's virtual tokens go through the model as inputs
        (prompt tuning, P-tuning: every sequence is longer for ``plan_memory``); False where they are
        only keys and values the layers attend to (prefix tuning).
    """

    def __init__(
        self,
        name: str,
        section: type,
        config: Callable[[Any, LoadedModel, Run], Any],
        *,
        prompt_learning: bool = False,
        rows: Sequence[ReportRow] = (),
        prepare: Callable[[Any, Any, LoadedModel], None] | None = None,
        check: Callable[[Recipe], None] | None = None,
        rewrites_base: Callable[[Any], bool] = lambda section: False,
        trainable: Callable[[Any, ModelFacts], int] | None = None,
        activation_share: float = 0.0,
        input_tokens: bool = True,
    ):
        self.name, self.section, self.config = name, section, config
        self.prompt_learning, self.rows, self.prepare, self.check = prompt_learning, [ADAPTER_SIZE, ADAPTER_WEIGHTS, *rows], prepare, check
        self.rewrites_base = rewrites_base
        self.trainable = trainable
        self.activation_share = activation_share
        self.input_tokens = input_tokens

    def plan_hook(self) -> Callable[..., Any]:
        """The method's ``plan_memory``: its adapters are what trains (``trainable(section, facts)`` counts them)."""

        @hookimpl
        def plan_memory(plan: TrainingPlan) -> None:
            section = plan.recipe.section(self.name)
            plan.trainable_parameters = self.trainable(section, plan.facts) if self.trainable else 0
            plan.adds_parameters = True
            if self.prompt_learning:
                plan.layers_train = False  # only the virtual tokens train: the layers' projections keep no inputs
            if self.prompt_learning and self.input_tokens:
                plan.sequence_length += section.num_virtual_tokens
            if self.activation_share and hasattr(section, "target_modules"):
                outputs = sum(o for _, o in plan.facts.matching_projections(section.target_modules))
                values = plan.tokens_per_step * plan.facts.layers * outputs * self.activation_share
                if plan.recipe.train.gradient_checkpointing:
                    values /= plan.facts.layers  # recomputed layer by layer
                plan.add(
                    "adapter activations", values * plan.compute_bytes / 2**20, "activations_and_other",
                    f"{self.activation_share:g} x the adapted projections' outputs per token and layer", method=self.name,
                )
                if getattr(section, "fp32_adapters", False) and plan.autocast and not plan.recipe.methods_with("quantizes_base"):
                    # the adapted projections' outputs go on in fp32 (fp32_lora); a 4-bit base hands fp32 on already
                    per_value = FP32_OUTPUT_BYTES_CHECKPOINTED if plan.recipe.train.gradient_checkpointing else FP32_OUTPUT_BYTES
                    values = plan.tokens_per_step * plan.facts.layers * outputs
                    plan.add(
                        "fp32 adapter outputs", values * per_value / 2**20, "activations_and_other",
                        f"{per_value:g} bytes per adapted projection output, token and layer (lora.fp32_adapters under autocast)",
                        method=self.name,
                    )

        return plan_memory

    def hooks(self) -> tuple[Callable[..., Any], ...]:
        """``recipe_sections, method_traits, validate_recipe, report_rows, load_model, evaluate, export``, for the method's module."""
        return self.recipe_sections, self.method_traits, self.validate_recipe, self.report_rows, self.load_model, self.evaluate, self.export

    def merges(self, section: Any) -> bool:
        return not self.prompt_learning and bool(getattr(section, "merge", False))

    @hookimpl
    def recipe_sections(self) -> dict[str, type]:
        return {self.name: self.section}

    @hookimpl
    def method_traits(self) -> list[str]:
        return ["adds_adapters", "prompt_learning"] if self.prompt_learning else ["adds_adapters"]

    @hookimpl
    def validate_recipe(self, recipe: Recipe) -> None:
        if recipe.trainer_owner is None:
            raise RecipeError(
                f"{self.name} adds adapters for a trainer to train, and no method in methods builds one; "
                f"add one (e.g. methods = {['sft', *recipe.methods]!r})",
                key="methods",
            )
        others = [m for m in recipe.methods_with("adds_adapters") if m != self.name]
        if others:
            kept = [m for m in recipe.methods if m not in others]
            raise RecipeError(
                f"{self.name} and {others[0]} both put a peft adapter on the model, and a recipe trains one; "
                f"keep one of them (e.g. methods = {kept!r})",
                key="methods",
            )
        owner = recipe.trainer_owner
        if self.prompt_learning and getattr(recipe.sections.get(owner), "packing", False):
            raise RecipeError(
                f"{self.name} puts its virtual tokens before each sequence, and a packed sequence holds several "
                f"examples (peft ignores the position ids that would separate them); set {owner}.packing = false",
                key=f"{owner}.packing",
            )
        if self.check is not None:
            self.check(recipe)

    @hookimpl
    def report_rows(self) -> list[ReportRow]:
        return list(self.rows)

    @hookimpl(wrapper=True)
    def load_model(self, run: Run) -> Any:
        from peft import get_peft_model

        loaded = yield
        section = run.section(self.name)
        config = self.config(section, loaded, run)
        model = loaded.model
        if not is_language_model(model):
            # a classifier's new head (a reward model's score) trains in full next to the adapters: peft's SEQ_CLS does that
            config.task_type = "SEQ_CLS"
        if run.recipe.train.gradient_checkpointing:
            # checkpointed blocks need an input that requires grad, or no gradient reaches the adapters
            model.enable_input_require_grads()
        if self.prompt_learning:
            # generate() passes position ids, which peft rightly recomputes with the virtual tokens in front
            warnings.filterwarnings("ignore", message="Position ids are not supported for parameter efficient tuning")
        peft_model = get_peft_model(model, config, adapter_name=ADAPTER_NAME)
        if self.prepare is not None:
            self.prepare(peft_model, section, loaded)
        summary = trainable_summary(peft_model)
        run.log.info(
            "%s: %d trainable parameters of %d (%.2f%%)",
            self.name, summary["trainable_parameters"], summary["total_parameters"], summary["trainable_percent"],
        )
        run.metrics[self.name] = {**summary, "peft_type": str(config.peft_type.value), "mergeable": not self.prompt_learning}
        return LoadedModel(peft_model, loaded.tokenizer)

    @hookimpl(wrapper=True)
    def evaluate(self, run: Run, stage: str) -> Any:
        # "base" is the model before the method: a soft prompt, a prefix or a non-zero initialisation
        # (gaussian, orthogonal) changes the model before any training, so every measurement of that
        # stage (the core's and other methods') runs with the adapter switched off, unless the
        # adapter holds part of the base itself (PiSSA, OLoRA: the base keeps only the residual)
        if stage != "base" or self.rewrites_base(run.section(self.name)):
            return (yield)
        with run.model.disable_adapter():
            return (yield)

    @hookimpl
    def export(self, run: Run) -> list[str]:
        if not run.recipe.output.save_model:
            return []
        section = run.section(self.name)
        adapter = run.dir / "adapter"
        with atomic_dir(adapter) as tmp:
            # the adapter this method put on the model, alone: a trainer may have added others
            # (TRL's DPO adds "ref", a frozen copy of the initial adapter, as its reference)
            run.model.save_pretrained(tmp, safe_serialization=True, selected_adapters=[ADAPTER_NAME])
            run.tokenizer.save_pretrained(tmp)
        run.artifacts["adapter"] = str(adapter)
        final = run.metrics.setdefault("final", {})
        final["adapter_size_mb"] = round(dir_size(adapter) / 2**20, 3)
        final["adapter_weights_mb"] = round(sum(f.stat().st_size for f in adapter.glob("*.safetensors")) / 2**20, 4)
        write_model_card(run, adapter)
        written = [str(adapter)]
        if self.merges(section):
            target = run.dir / "model"
            with atomic_dir(target) as tmp:
                model = merged_model(run, adapter)
                model.save_pretrained(tmp, safe_serialization=True)
                run.tokenizer.save_pretrained(tmp)
                del model
            run.artifacts["model"] = str(target)
            final["model_size_mb"] = round(dir_size(target) / 2**20, 3)
            write_model_card(run, target)
            written.append(str(target))
        else:
            if self.prompt_learning:
                run.log.info(
                    "%s: no merged model: virtual tokens are extra input, not a change to any weight; "
                    "adapter/ is the model (PeftModel.from_pretrained(base, adapter))",
                    self.name,
                )
            # the adapter is this run's model: keep the core from saving the peft wrapper a second time
            run.artifacts["model"] = str(adapter)
            final["model_size_mb"] = final["adapter_size_mb"]
        return written
