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
    DataError,
    Recipe,
    RecipeError,
    ReportRow,
    Run,
    hookimpl,
    preference_metrics,
    training_arguments,
)

PAIRED = ("prompt", "chosen", "rejected")


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
def validate_recipe(recipe: Recipe) -> None:
    fields = recipe.data_fields
    if fields is not None and not {"chosen", "rejected"} <= fields:
        raise RecipeError(
            f"orpo trains on preference pairs, and {recipe.data.source!r} gives {recipe.data_format!r} rows; use "
            'data.source = "builtin:preferences", or rows with prompt, chosen and rejected (data.format = "preference")',
            key="data.source" if recipe.data.format == "auto" else "data.format",
        )


@hookimpl
def report_rows() -> list[ReportRow]:
    return [
        ReportRow("preference accuracy", "final.preference_accuracy", base=True, chart="quality"),
        ReportRow("preference margin", "final.preference_margin", base=True),
    ]


def _pairs(dataset: Any, source: str) -> Any:
    missing = [c for c in PAIRED if c not in dataset.column_names]
    if missing:
        raise DataError(f"{source}: orpo needs prompt, chosen and rejected columns; the data has no {', '.join(missing)}")
    return dataset.select_columns(list(PAIRED))


@hookimpl
def build_trainer(run: Run) -> Any:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    section: ORPOSection = run.section("orpo")
    train = _pairs(run.train_dataset, run.recipe.data.source)
    evaluation = _pairs(run.eval_dataset, run.recipe.data.eval_source or run.recipe.data.source) if run.recipe.train.eval_steps else None
    args = training_arguments(run, ORPOConfig, beta=section.beta, max_length=run.recipe.train.max_length, dataset_num_proc=None)
    run.metrics["orpo"] = {"beta": section.beta}
    return ORPOTrainer(model=run.model, args=args, train_dataset=train, eval_dataset=evaluation, processing_class=run.tokenizer)


@hookimpl
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    rows = [r for r in (run.eval_dataset or []) if r.get("chosen") and r.get("rejected")]
    if not rows:
        return None
    return preference_metrics(
        run.model, run.tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows],
        batch_size=run.recipe.eval.batch_size, max_length=run.recipe.train.max_length,
    )
