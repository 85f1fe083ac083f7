"""CPO: preference optimisation without a reference model, plus the chosen answer's cross-entropy.

Contrastive Preference Optimization (Xu et al., 2024) drops DPO's reference model: the loss compares the
policy's own log-probabilities of the chosen and rejected answers (``loss_type``: ``sigmoid`` as DPO,
``hinge``, ``ipo``) and adds ``cpo_alpha`` times the chosen answer's negative log-likelihood (the paper's
behaviour-cloning term). It costs about what SFT on both answers costs. TRL 1.16 ships it as
``trl.experimental.cpo.CPOTrainer``, which also runs SimPO (the ``simpo`` method: the same trainer with
length normalisation and a margin). Held-out pairs are scored by preference accuracy at base and final
(:func:`ptrain.preference_metrics`), the columns dpo, kto and orpo report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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
class CPOSection:
    """``[cpo]``: options of CPO (optimisation settings live in ``[train]``)."""

    beta: float = 0.1
    """Temperature of the preference term: the scale of the log-probability gap it acts on (0.1 in the paper)."""
    loss_type: Literal["sigmoid", "hinge", "ipo", "simpo"] = "sigmoid"
    """TRL's CPO loss: ``sigmoid`` (the paper's), ``hinge`` or ``ipo``. TRL's ``simpo`` is refused here with a
    pointer to the ``simpo`` method, whose section holds SimPO's own options (``gamma``)."""
    cpo_alpha: float = 1.0
    """Weight of the chosen answer's cross-entropy (behaviour cloning); 0 leaves the preference term alone."""
    label_smoothing: float = 0.0
    """Assumed fraction of flipped labels (``sigmoid`` only); in [0, 0.5)."""

    def validate(self) -> None:
        if self.loss_type == "simpo":
            raise RecipeError('SimPO is its own method: methods = ["simpo"] with [simpo] beta, gamma, cpo_alpha', key="loss_type")
        if self.beta <= 0:
            raise RecipeError("must be > 0 (the paper uses 0.1)", key="beta")
        if self.cpo_alpha < 0:
            raise RecipeError("must be >= 0 (the paper uses 1.0; 0 drops the cross-entropy term)", key="cpo_alpha")
        if not 0 <= self.label_smoothing < 0.5:
            raise RecipeError("must be in [0, 0.5)", key="label_smoothing")
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise RecipeError(f"loss_type {self.loss_type!r} ignores label_smoothing; use 'sigmoid' or remove it", key="label_smoothing")


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"cpo": CPOSection}


@hookimpl
def method_traits() -> list[str]:
    return ["needs_pairs"]


@hookimpl
def plan_memory(plan: TrainingPlan) -> None:
    """Chosen and rejected answers in one batch, the whole logits; no reference model."""
    plan_pairs_in_one_batch(plan)


@hookimpl
def validate_recipe(recipe: Recipe) -> None:
    require_pairs(recipe, "cpo", "trains on")


@hookimpl
def report_rows() -> list[ReportRow]:
    return list(PREFERENCE_ROWS)


def cpo_trainer(run: Run, method: str, **options: Any) -> Any:
    """TRL's CPOTrainer on the run's pairs with ``options`` (CPOConfig fields); shared by ``cpo`` and ``simpo``."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    train, evaluation = pair_splits(run, method)
    args = training_arguments(
        run, CPOConfig, **options, max_length=run.recipe.train.max_length, dataset_num_proc=None,
        remove_unused_columns=False,  # TRL's pair collator needs every column; it would switch this off with a warning
    )
    run.metrics[method] = dict(options)
    run.log.info("%s: %s (no reference model)", method, ", ".join(f"{key} {value}" for key, value in options.items()))
    return CPOTrainer(model=run.model, args=args, train_dataset=train, eval_dataset=evaluation, processing_class=run.tokenizer)


@hookimpl
def build_trainer(run: Run) -> Any:
    section: CPOSection = run.section("cpo")
    return cpo_trainer(
        run, "cpo", beta=section.beta, loss_type=section.loss_type, cpo_alpha=section.cpo_alpha,
        label_smoothing=section.label_smoothing,
    )


@hookimpl
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    return pair_metrics(run)
