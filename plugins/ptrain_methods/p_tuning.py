"""P-tuning: virtual tokens produced by a trained prompt encoder (MLP or LSTM) before every input (peft).

``methods = ["sft", "p_tuning"]``. Liu et al. (2021): like prompt tuning, but the virtual token
embeddings come out of a small encoder network, which trains more stably. (P-tuning *v2* puts
prefixes in every layer: that is ``prefix_tuning``.) The adapter saves the virtual tokens the
encoder produced. **No merged model**: virtual tokens are extra input, not a change to any
weight, so export writes ``adapter/`` alone and that is the run's model
(``PeftModel.from_pretrained(base, "adapter")``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ptrain import LoadedModel, ModelFacts, RecipeError, Run

from .adapters import AdapterMethod, VirtualTokensSection, check_probability

MLP_LAYERS = 2


@dataclass
class PTuningSection(VirtualTokensSection):
    """``[p_tuning]``: the virtual tokens and their encoder."""

    encoder: Literal["mlp", "lstm"] = "mlp"
    """The prompt encoder: a two-layer MLP, or a bidirectional LSTM followed by an MLP."""
    encoder_hidden_size: int = 0
    """Width of the encoder; 0: the model's hidden size."""
    encoder_layers: int = MLP_LAYERS
    """LSTM layers (``encoder = "lstm"``); peft's MLP encoder always has two."""
    encoder_dropout: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.encoder_hidden_size < 0:
            raise RecipeError(f"must be 0 (the model's hidden size) or a positive width, got {self.encoder_hidden_size}", key="encoder_hidden_size")
        if self.encoder_layers < 1:
            raise RecipeError(f"must be a positive number of layers, got {self.encoder_layers}", key="encoder_layers")
        if self.encoder == "mlp" and self.encoder_layers != MLP_LAYERS:
            raise RecipeError(
                f"peft's MLP prompt encoder has {MLP_LAYERS} layers, got {self.encoder_layers}; "
                'encoder_layers applies to encoder = "lstm"',
                key="encoder_layers",
            )
        check_probability(self.encoder_dropout, "encoder_dropout")


def p_tuning_config(section: PTuningSection, loaded: LoadedModel, run: Run) -> Any:
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=section.num_virtual_tokens,
        encoder_reparameterization_type=section.encoder.upper(),
        encoder_hidden_size=section.encoder_hidden_size or loaded.model.config.hidden_size,
        encoder_num_layers=section.encoder_layers,
        encoder_dropout=section.encoder_dropout,
    )


def p_tuning_parameters(section: PTuningSection, facts: ModelFacts) -> int:
    """The virtual tokens' embeddings and the encoder that produces them (an MLP of two hidden layers, or an LSTM then one)."""
    h, w = facts.hidden_size, section.encoder_hidden_size or facts.hidden_size
    tokens = section.num_virtual_tokens * h
    if section.encoder == "mlp":
        return tokens + (h * w + w) + (w * w + w) + (w * h + h)
    lstm = 2 * 4 * (w * (h + w) + 2 * w) * section.encoder_layers
    return tokens + lstm + (2 * w * 2 * w + 2 * w) + (2 * w * h + h)


METHOD = AdapterMethod("p_tuning", PTuningSection, p_tuning_config, prompt_learning=True, trainable=p_tuning_parameters)
recipe_sections, method_traits, validate_recipe, report_rows, load_model, evaluate, export = METHOD.hooks()
plan_memory = METHOD.plan_hook()
