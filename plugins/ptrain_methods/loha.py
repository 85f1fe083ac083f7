"""LoHa: low-rank Hadamard-product adapters (peft, from LyCORIS); more expressive than LoRA at the same rank.

``methods = ["sft", "loha"]``. Each targeted linear layer's update is the element-wise product of
two low-rank matrices, ``(B1 A1) ⊙ (B2 A2)``, whose rank can reach r² where LoRA's is r, for about
twice LoRA's parameters at equal r. It merges: export writes ``adapter/`` and, with
``merge = true``, the merged ``model/``. Linear layers only (not GPT-2's ``Conv1D``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptrain import LoadedModel, Run

from .adapters import AdapterMethod, LycorisSection, low_rank_parameters, lycoris_options


@dataclass
class LoHaSection(LycorisSection):
    """``[loha]``: the Hadamard-product adapters added to the model."""


def loha_config(section: LoHaSection, loaded: LoadedModel, run: Run) -> Any:
    from peft import LoHaConfig

    return LoHaConfig(**lycoris_options(section, loaded, run, "loha"))


METHOD = AdapterMethod("loha", LoHaSection, loha_config, trainable=lambda section, facts: low_rank_parameters(section, facts, 2),
    activation_share=0.6,
)
recipe_sections, method_traits, validate_recipe, report_rows, load_model, evaluate, export = METHOD.hooks()
plan_memory = METHOD.plan_hook()
