"""Prefix tuning: trained key/value prefixes at every attention layer (peft); P-tuning v2. No weight changes.

``methods = ["sft", "prefix_tuning"]``. Li & Liang (2021), and P-tuning v2 (Liu et al., 2022),
which is the same method applied to every layer: each layer attends to ``num_virtual_tokens``
trained keys and values before the input. With ``projection = true`` the prefixes are produced
by a small MLP while training (more stable); the adapter saves the prefixes it produced. **No
merged model**: prefixes are extra attention inputs, not a change to any weight, so export
writes ``adapter/`` alone and that is the run's model (``PeftModel.from_pretrained(base, "adapter")``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptrain import LoadedModel, RecipeError, Run

from .adapters import AdapterMethod, VirtualTokensSection


@dataclass
class PrefixTuningSection(VirtualTokensSection):
    """``[prefix_tuning]``: the per-layer prefixes."""

    projection: bool = False
    """Reparametrize the prefixes through a two-layer MLP while training (Li & Liang's recipe)."""
    projection_hidden_size: int = 0
    """Width of that MLP; 0: the model's hidden size."""

    def validate(self) -> None:
        super().validate()
        if self.projection_hidden_size < 0:
            raise RecipeError(f"must be 0 (the model's hidden size) or a positive width, got {self.projection_hidden_size}", key="projection_hidden_size")
        if self.projection_hidden_size and not self.projection:
            raise RecipeError("is the width of the projection MLP; set projection = true or remove it", key="projection_hidden_size")


def prefix_tuning_config(section: PrefixTuningSection, loaded: LoadedModel, run: Run) -> Any:
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=section.num_virtual_tokens,
        prefix_projection=section.projection,
        encoder_hidden_size=section.projection_hidden_size or loaded.model.config.hidden_size,
    )


METHOD = AdapterMethod("prefix_tuning", PrefixTuningSection, prefix_tuning_config, prompt_learning=True)
recipe_sections, validate_recipe, report_rows, load_model, evaluate, export = METHOD.hooks()
