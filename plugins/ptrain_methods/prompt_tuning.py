"""Prompt tuning: a trained soft prompt (virtual token embeddings) before every input (peft); no weight changes.

``methods = ["sft", "prompt_tuning"]``. Lester et al. (2021): the model stays frozen and only
``num_virtual_tokens`` input embeddings train, a few thousand parameters. It wants a high learning
rate (1e-2 to 3e-1) and more steps than LoRA, and starts best from the embeddings of a task
description (``init = "text"``). **No merged model**: a soft prompt is extra input, not a change
to any weight, so export writes ``adapter/`` alone and that is the run's model
(``PeftModel.from_pretrained(base, "adapter")``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ptrain import LoadedModel, RecipeError, Run

from .adapters import AdapterMethod, VirtualTokensSection


@dataclass
class PromptTuningSection(VirtualTokensSection):
    """``[prompt_tuning]``: the soft prompt."""

    init: Literal["vocab", "text", "random"] = "vocab"
    """Start the virtual tokens from the embeddings of random vocabulary tokens (``vocab``), of
    ``init_text``'s tokens (``text``, repeated or cut to ``num_virtual_tokens``), or from noise."""
    init_text: str = ""
    """With ``init = "text"``: a description of the task, e.g. "Write the AVRO schema of this entity"."""

    def validate(self) -> None:
        super().validate()
        if self.init == "text" and not self.init_text.strip():
            raise RecipeError('is empty, and init = "text" starts the prompt from it; describe the task in a sentence', key="init_text")
        if self.init != "text" and self.init_text:
            raise RecipeError(f'is used only with init = "text" (init is {self.init!r}); set init = "text" or remove it', key="init_text")


def prompt_tuning_config(section: PromptTuningSection, loaded: LoadedModel, run: Run) -> Any:
    from peft import PromptTuningConfig

    # "text" is applied in text_init() with the run's own tokenizer: peft would load a tokenizer by name
    init = {"vocab": "SAMPLE_VOCAB", "text": "RANDOM", "random": "RANDOM"}[section.init]
    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=section.num_virtual_tokens, prompt_tuning_init=init)


def text_init(peft_model: Any, section: PromptTuningSection, loaded: LoadedModel) -> None:
    """peft's TEXT initialisation: the embeddings of ``init_text``'s tokens, repeated or cut to fit."""
    import torch

    if section.init != "text":
        return
    ids = loaded.tokenizer(section.init_text, add_special_tokens=False)["input_ids"]
    ids = (ids * (section.num_virtual_tokens // len(ids) + 1))[: section.num_virtual_tokens]
    embedding = peft_model.prompt_encoder[peft_model.active_adapter].embedding
    with torch.no_grad():
        words = peft_model.get_input_embeddings()(torch.tensor(ids, device=embedding.weight.device))
        embedding.weight.copy_(words.to(embedding.weight.dtype))


METHOD = AdapterMethod("prompt_tuning", PromptTuningSection, prompt_tuning_config, prompt_learning=True, prepare=text_init,
    trainable=lambda section, facts: section.num_virtual_tokens * facts.hidden_size,
)
recipe_sections, method_traits, validate_recipe, report_rows, load_model, evaluate, export = METHOD.hooks()
plan_memory = METHOD.plan_hook()
