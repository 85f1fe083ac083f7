"""Reward model: a sequence-classification head trained to score chosen answers above rejected ones.

The ``reward`` method loads the recipe's model with a one-output classification head
(``load_pretrained(..., head="sequence_classification")``: the language model's body, a new head)
and trains it with TRL's ``RewardTrainer`` on preference pairs (Bradley-Terry loss). Held-out
pairwise accuracy (the chosen answer scored above the rejected one) is measured at base (the
untrained head: about chance) and final. The exported ``model/`` loads with
``AutoModelForSequenceClassification.from_pretrained`` and serves ``grpo`` as a model-based
reward: ``[grpo] reward_models = { "runs/reward_tiny" = 1.0 }``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptrain import (
    LoadedModel,
    Recipe,
    RecipeError,
    ReportRow,
    Run,
    TrainingPlan,
    hookimpl,
    load_pretrained,
    reward_scores,
    training_arguments,
)

from .pairs import held_out_pairs, pair_splits, require_pairs


@dataclass
class RewardSection:
    """``[reward]``: options of reward-model training (optimisation settings live in ``[train]``)."""

    center_rewards_coefficient: float | None = None
    """Also pull the mean score towards 0 with this weight (0.01 in the paper that proposed it): scores of
    different prompts then share one scale."""

    def validate(self) -> None:
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            raise RecipeError("must be >= 0 (e.g. 0.01), or left out", key="center_rewards_coefficient")


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"reward": RewardSection}


@hookimpl
def method_traits() -> list[str]:
    return ["needs_pairs"]


@hookimpl
def plan_memory(plan: TrainingPlan) -> None:
    """Chosen and rejected answers in one batch, scored by a one-output head: no vocabulary logits."""
    plan.sequences_factor = 2
    plan.vocab_logits = False


@hookimpl
def validate_recipe(recipe: Recipe) -> None:
    require_pairs(recipe, "reward", "learns from")


@hookimpl
def report_rows() -> list[ReportRow]:
    return [
        ReportRow("pairwise accuracy (reward model)", "final.pairwise_accuracy", base=True, chart="quality"),
        ReportRow("score margin chosen − rejected", "final.score_margin", base=True),
    ]


@hookimpl
def load_model(run: Run) -> LoadedModel:
    """The recipe's model with a one-output classification head; ``lora`` and ``qlora`` wrap it as usual."""
    return load_pretrained(run.recipe.model, seed=run.recipe.seed, head="sequence_classification", num_labels=1, **run.model_kwargs)


@hookimpl
def build_trainer(run: Run) -> Any:
    from trl import RewardConfig, RewardTrainer

    section: RewardSection = run.section("reward")
    train, evaluation = pair_splits(run, "reward")
    args = training_arguments(
        run,
        RewardConfig,
        max_length=run.recipe.train.max_length,
        center_rewards_coefficient=section.center_rewards_coefficient,
        dataset_num_proc=None,
    )
    return RewardTrainer(model=run.model, args=args, train_dataset=train, eval_dataset=evaluation, processing_class=run.tokenizer)


@hookimpl
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    """Pairwise accuracy: how often the chosen answer of a held-out pair scores above the rejected one."""
    rows = held_out_pairs(run)
    if not rows:
        return None
    options = {"batch_size": run.recipe.eval.batch_size, "max_length": run.recipe.train.max_length}
    prompts = [r["prompt"] for r in rows]
    chosen = reward_scores(run.model, run.tokenizer, prompts, [r["chosen"] for r in rows], **options)
    rejected = reward_scores(run.model, run.tokenizer, prompts, [r["rejected"] for r in rows], **options)
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {
        "pairwise_accuracy": round(sum(m > 0 for m in margins) / len(margins), 4),
        "score_margin": round(sum(margins) / len(margins), 4),
        "pairwise_pairs": len(margins),
    }
