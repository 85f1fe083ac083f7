"""IA³: learned vectors that rescale attention keys, values and the MLP (peft); the fewest trainable parameters.

``methods = ["sft", "ia3"]``. (IA)³ (Liu et al., 2022) multiplies the output of each targeted
layer by a trained vector (the input, for feed-forward layers), starting at ones: about 0.02 % of
a model's parameters. The vectors fold into the weights, so export writes ``adapter/`` and, with
``merge = true``, the merged ``model/``. It wants a higher learning rate than LoRA (3e-3 to 1e-2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptrain import LoadedModel, ModelFacts, RecipeError, Run

from .adapters import AdapterMethod, check_target_modules, check_targets, linear_module_names

AUTO = "auto"


@dataclass
class IA3Section:
    """``[ia3]``: which layers get a scaling vector."""

    target_modules: list[str] | str = AUTO
    """Linear layers to rescale: ``"auto"`` (peft's choice for the architecture: keys, values and the
    MLP's output projection), a list of module names, or a regular expression on full names."""
    feedforward_modules: list[str] | str = AUTO
    """Which of ``target_modules`` are feed-forward layers (their *input* is rescaled): ``"auto"``
    with ``target_modules = "auto"``, else a subset of ``target_modules`` (``[]`` for none)."""
    merge: bool = True
    """Also export ``model/``: the vectors folded into the unquantized base."""

    def validate(self) -> None:
        check_target_modules(self.target_modules, (AUTO,))
        if self.feedforward_modules == AUTO and self.target_modules != AUTO:
            raise RecipeError(
                'is "auto", which only goes with target_modules = "auto"; name the feed-forward layers among '
                'target_modules (e.g. ["down_proj"]), or [] for none',
                key="feedforward_modules",
            )
        if self.feedforward_modules != AUTO and self.target_modules == AUTO:
            raise RecipeError(
                'must be a subset of target_modules, which is "auto"; name target_modules too (e.g. '
                '["k_proj", "v_proj", "down_proj"])',
                key="feedforward_modules",
            )
        if isinstance(self.feedforward_modules, list) and isinstance(self.target_modules, list):
            outside = [m for m in self.feedforward_modules if m not in self.target_modules]
            if outside:
                raise RecipeError(
                    f"{', '.join(repr(m) for m in outside)} not in target_modules; feed-forward layers are a subset of "
                    f"the targets (peft's rule): add them to target_modules or remove them here",
                    key="feedforward_modules",
                )


def ia3_config(section: IA3Section, loaded: LoadedModel, run: Run) -> Any:
    import torch
    from peft import IA3Config
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
    )
    from transformers.pytorch_utils import Conv1D

    model = loaded.model
    targets, feedforward = section.target_modules, section.feedforward_modules
    if targets == AUTO:
        model_type = getattr(model.config, "model_type", None)
        if model_type not in TARGETS or model_type not in FEEDFORWARD:
            raise RecipeError(
                f'peft has no IA³ defaults for model type {model_type!r}; name the layers to rescale (its linear '
                f"modules are {', '.join(linear_module_names(model))}) and the feed-forward ones among them",
                source=run.recipe.source_of("ia3.target_modules"),
                key="ia3.target_modules",
            )
        targets, feedforward = list(TARGETS[model_type]), list(FEEDFORWARD[model_type])
    check_targets(
        model, targets, "ia3.target_modules", run.recipe.source_of("ia3.target_modules"),
        layer_types=(torch.nn.Linear, Conv1D), method="ia3",
    )
    return IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward)


def ia3_parameters(section: IA3Section, facts: ModelFacts) -> int:
    """One scaling vector per targeted projection and layer: its output width, its input width for a feed-forward one
    (``auto``: keys, values and the MLP's down projection, peft's choice for llama-like models)."""
    targets = ["k_proj", "v_proj", "down_proj"] if section.target_modules == AUTO else section.target_modules
    feedforward = ["down_proj"] if section.feedforward_modules == AUTO else section.feedforward_modules
    total = 0
    for target in [targets] if isinstance(targets, str) else targets:
        shapes = facts.matching_projections(target if isinstance(targets, str) else [target])
        total += sum(i if target in feedforward else o for i, o in shapes)
    return facts.layers * total


METHOD = AdapterMethod("ia3", IA3Section, ia3_config, trainable=ia3_parameters)
recipe_sections, method_traits, validate_recipe, report_rows, load_model, evaluate, export = METHOD.hooks()
plan_memory = METHOD.plan_hook()
