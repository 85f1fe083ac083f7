"""ORPO: supervised fine-tuning and preference optimisation in one loss, without a reference model.

Odds Ratio Preference Optimization (Hong et al., 2024) adds to the chosen answer's cross-entropy a
term that raises the odds of the chosen answer against the rejected one (weighted by ``beta``,
the paper's λ). No reference model is kept, so it costs about what SFT costs. TRL 1.16 ships it
as ``trl.experimental.orpo.ORPOTrainer``; it trains on CPU and GPU alike. Held-out pairs are
scored by preference accuracy at base and final (:func:`ptrain.preference_metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptrain import (
    Recipe,
    RecipeError,
    ReportRow,
    Run,
    TrainingPlan,
    hookimpl,
    training_arguments,
)

from .pairs import PREFERENCE_ROWS, pair_metrics, pair_splits, plan_pairs_in_one_batch, require_pairs


@dataclass
class ORPOSection:
    """``[orpo]``: options of ORPO (optimisation settings live in ``[train]``)."""

    beta: float = 0.1
    """Weight of the odds-ratio term against the chosen answer's cross-entropy (λ in the paper; 0.1 to 0.25 there)."""

    def validate(self) -> None:
        if self.beta <= 0:
            raise RecipeError("must be > 0 (the paper uses 0.1 to 0.25)", key="beta")


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"orpo": ORPOSection}


@hookimpl
def method_traits() -> list[str]:
    return ["needs_pairs"]


@hookimpl
def plan_memory(plan: TrainingPlan) -> None:
    """Chosen and rejected answers in one batch, the whole logits; no reference model."""
    plan_pairs_in_one_batch(plan)


@hookimpl
def validate_recipe(recipe: Recipe) -> None:
    require_pairs(recipe, "orpo", "trains on")


@hookimpl
def report_rows() -> list[ReportRow]:
    return list(PREFERENCE_ROWS)


@hookimpl
def build_trainer(run: Run) -> Any:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    section: ORPOSection = run.section("orpo")
    train, evaluation = pair_splits(run, "orpo")
    args = training_arguments(run, ORPOConfig, beta=section.beta, max_length=run.recipe.train.max_length, dataset_num_proc=None)
    run.metrics["orpo"] = {"beta": section.beta}
    return ORPOTrainer(model=run.model, args=args, train_dataset=train, eval_dataset=evaluation, processing_class=run.tokenizer)


@hookimpl
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    return pair_metrics(run)
