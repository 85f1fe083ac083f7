"""LoKr: low-rank Kronecker-product adapters (peft, from LyCORIS); the fewest parameters of the weight adapters.

``methods = ["sft", "lokr"]``. Each targeted linear layer's update is a Kronecker product
``C ⊗ (B A)`` of a small dense factor and a low-rank one, so a layer costs far fewer parameters
than LoRA's at the same rank. It merges: export writes ``adapter/`` and, with ``merge = true``,
the merged ``model/``. Linear layers only (not GPT-2's ``Conv1D``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptrain import LoadedModel, RecipeError, Run

from .adapters import AdapterMethod, LycorisSection, low_rank_parameters, lycoris_options


@dataclass
class LoKrSection(LycorisSection):
    """``[lokr]``: the Kronecker-product adapters added to the model."""

    decompose_both: bool = False
    """Also factor the small Kronecker factor into two low-rank matrices."""
    decompose_factor: int = -1
    """Size of the small factor's side (-1: as close to the square root of the layer's size as divides it)."""

    def validate(self) -> None:
        super().validate()
        if self.decompose_factor == 0 or self.decompose_factor < -1:
            raise RecipeError(f"must be -1 (automatic) or a positive size, got {self.decompose_factor}", key="decompose_factor")


def lokr_config(section: LoKrSection, loaded: LoadedModel, run: Run) -> Any:
    from peft import LoKrConfig

    return LoKrConfig(
        **lycoris_options(section, loaded, run, "lokr"),
        decompose_both=section.decompose_both,
        decompose_factor=section.decompose_factor,
    )


METHOD = AdapterMethod("lokr", LoKrSection, lokr_config, trainable=low_rank_parameters, activation_share=0.6)
recipe_sections, method_traits, validate_recipe, report_rows, load_model, evaluate, export = METHOD.hooks()
plan_memory = METHOD.plan_hook()
