"""Prefix tuning: trained key/value prefixes at every attention layer (peft); P-tuning v2. No weight changes.

``methods = ["sft", "prefix_tuning"]``. Li & Liang (2021), and P-tuning v2 (Liu et al., 2022),
which is the same method applied to every layer: each layer attends to ``num_virtual_tokens``
trained keys and values before the input. With ``projection = true`` the prefixes are produced
by a small MLP while training; the adapter saves the prefixes it produced. Random prefixes
disrupt a pretrained model (SmolLM2's loss goes from 1.1 to 13 before any step); ``init = "text"``
starts them from the keys and values the model itself computes for a task description (Li &
Liang's initialisation from real words; peft's ``initialize_kv_prefix_from_past_key_values``), so
training starts from the model with that text before its input. **No
merged model**: prefixes are extra attention inputs, not a change to any weight, so export
writes ``adapter/`` alone and that is the run's model (``PeftModel.from_pretrained(base, "adapter")``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ptrain import LoadedModel, ModelFacts, Recipe, RecipeError, Run

from .adapters import AdapterMethod, VirtualTokensSection


@dataclass
class PrefixTuningSection(VirtualTokensSection):
    """``[prefix_tuning]``: the per-layer prefixes."""

    init: Literal["random", "text"] = "random"
    """Start the prefixes from noise (peft's default) or from the keys and values the model computes
    for ``init_text`` (repeated or cut to ``num_virtual_tokens`` tokens)."""
    init_text: str = ""
    """With ``init = "text"``: a description of the task, e.g. "Write the AVRO record schema of the entity as JSON."."""
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
        if self.init == "text" and not self.init_text.strip():
            raise RecipeError('is empty, and init = "text" starts the prefixes from it; describe the task in a sentence', key="init_text")
        if self.init != "text" and self.init_text:
            raise RecipeError(f'is used only with init = "text" (init is {self.init!r}); set init = "text" or remove it', key="init_text")
        if self.init == "text" and self.projection:
            raise RecipeError(
                'is "text", which sets the prefixes themselves, and projection = true produces them from an MLP '
                "(peft cannot start it from text); set projection = false or init = \"random\"",
                key="init",
            )


def prefix_tuning_config(section: PrefixTuningSection, loaded: LoadedModel, run: Run) -> Any:
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=section.num_virtual_tokens,
        prefix_projection=section.projection,
        encoder_hidden_size=section.projection_hidden_size or loaded.model.config.hidden_size,
    )


def text_init(peft_model: Any, section: PrefixTuningSection, loaded: LoadedModel) -> None:
    """The keys and values the base model computes for ``init_text`` (repeated or cut to fit) become the prefixes."""
    import torch
    from peft import initialize_kv_prefix_from_past_key_values

    if section.init != "text":
        return
    ids = loaded.tokenizer(section.init_text, add_special_tokens=False)["input_ids"]
    ids = (ids * (section.num_virtual_tokens // len(ids) + 1))[: section.num_virtual_tokens]
    device = peft_model.get_input_embeddings().weight.device
    input_ids = torch.tensor([ids], device=device)
    with torch.no_grad(), peft_model.disable_adapter():
        outputs = peft_model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=True)
    initialize_kv_prefix_from_past_key_values(peft_model, past_key_values=outputs.past_key_values)


def check_composition(recipe: Recipe) -> None:
    if recipe.train.gradient_checkpointing:
        # measured: a checkpointed llama layer ignores past_key_values while training, and the
        # attention mask (which counts the prefix) no longer matches the keys
        raise RecipeError(
            "prefix_tuning hands its prefixes to every layer as cached keys and values, and a checkpointed layer "
            "drops that cache while training (transformers); set train.gradient_checkpointing = false",
            key="train.gradient_checkpointing",
        )


def prefix_parameters(section: PrefixTuningSection, facts: ModelFacts) -> int:
    """A key and a value per virtual token, head and layer (the projection's MLP, when on, trains too)."""
    prefixes = section.num_virtual_tokens * facts.layers * 2 * facts.kv_heads * facts.head_dim
    if not section.projection:
        return prefixes
    width = section.projection_hidden_size or facts.hidden_size
    out = facts.layers * 2 * facts.kv_heads * facts.head_dim
    return section.num_virtual_tokens * facts.hidden_size + facts.hidden_size * width + width + width * out + out


METHOD = AdapterMethod(
    "prefix_tuning", PrefixTuningSection, prefix_tuning_config, prompt_learning=True, prepare=text_init, check=check_composition,
    trainable=prefix_parameters, input_tokens=False,  # the prefixes are keys and values, not inputs (measured: bench/README.md)
)
recipe_sections, method_traits, validate_recipe, report_rows, load_model, evaluate, export = METHOD.hooks()
plan_memory = METHOD.plan_hook()
