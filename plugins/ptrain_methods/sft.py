"""Supervised fine-tuning with TRL's SFTTrainer (loss on completions by default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptrain import Run, hookimpl, training_arguments, training_tokens, use_chunked_loss


@dataclass
class SFTSection:
    """``[sft]``: options of supervised fine-tuning (optimisation settings live in ``[train]``)."""

    completion_only_loss: bool = True
    """Learn only the completion; false also trains on the prompt tokens."""
    packing: bool = False
    """Pack several short examples into one sequence of ``train.max_length`` tokens (TRL's best-fit packing,
    padding-free: each example attends only to itself, told apart by its position ids). Measured on a CPU
    (bench/README.md): more tokens/s than padding, but a worse eval loss after the same tokens; off by default."""


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"sft": SFTSection}


@hookimpl
def build_trainer(run: Run) -> Any:
    from trl import SFTConfig, SFTTrainer

    section: SFTSection = run.section("sft")
    args = training_arguments(
        run,
        SFTConfig,
        completion_only_loss=section.completion_only_loss,
        packing=section.packing,
        max_length=run.recipe.train.max_length,
        dataset_num_proc=None,
    )
    columns = ["prompt", "completion"]

    def rows(dataset: Any) -> Any:
        # every assistant turn of a conversation in the loss: tokenized by the core, span by span
        tokens = training_tokens(dataset, run.tokenizer)
        return tokens if tokens is not None else dataset.select_columns(columns)

    train = rows(run.train_dataset)
    evaluation = rows(run.eval_dataset) if run.recipe.train.eval_steps else None
    trainer = SFTTrainer(
        model=run.model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=run.tokenizer,
    )
    use_chunked_loss(run, trainer)  # train.chunked_loss: the loss never holds the full-vocabulary logits
    return trainer
