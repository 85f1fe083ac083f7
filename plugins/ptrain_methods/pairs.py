"""What the methods that learn from preference pairs (``orpo``, ``cpo``, ``simpo``, ``reward``; ``kto`` also takes pairs) share.

Not a method: no entry point names this module. A third-party preference method would hold the same
few lines (see examples/ptrain-dpo); they use only names in ``ptrain.__all__``.
"""

from __future__ import annotations

from typing import Any

from ptrain import DataError, Recipe, RecipeError, ReportRow, Run, TrainingPlan, preference_metrics

PAIRED = ("prompt", "chosen", "rejected")
PREFERENCE_ROWS = [
    ReportRow("preference accuracy", "final.preference_accuracy", base=True, chart="quality"),
    ReportRow("preference margin", "final.preference_margin", base=True),
]


def require_pairs(recipe: Recipe, method: str, learns: str) -> None:
    """``validate_recipe``: refuse data without prompt, chosen and rejected, naming the key to change."""
    fields = recipe.data_fields
    if fields is not None and not {"chosen", "rejected"} <= fields:
        raise RecipeError(
            f"{method} {learns} preference pairs, and {recipe.data.source!r} gives {recipe.data_format!r} rows; use "
            'data.source = "builtin:preferences", or rows with prompt, chosen and rejected (data.format = "preference")',
            key="data.source" if recipe.data.format == "auto" else "data.format",
        )


def pair_splits(run: Run, method: str) -> tuple[Any, Any]:
    """The train split, and the eval split when the recipe evaluates during training, as prompt/chosen/rejected."""

    def pairs(dataset: Any, source: str) -> Any:
        missing = [c for c in PAIRED if c not in dataset.column_names]
        if missing:
            raise DataError(f"{source}: {method} needs prompt, chosen and rejected columns; the data has no {', '.join(missing)}")
        return dataset.select_columns(list(PAIRED))

    data = run.recipe.data
    train = pairs(run.train_dataset, data.source)
    evaluation = pairs(run.eval_dataset, data.eval_source or data.source) if run.recipe.train.eval_steps else None
    return train, evaluation


TRL_OWN_LOGITS = 4.5
"""Vocabulary-wide fp32 copies per token that TRL's ORPO and CPO trainers (CPO also runs SimPO) hold at their peak:
they take the whole logits, not the chunked head (measured on SmolLM2 ORPO, bench/README.md)."""


def plan_pairs_in_one_batch(plan: TrainingPlan) -> None:
    """``plan_memory`` of a reference-free pair method on TRL's ORPO/CPO trainers: chosen and rejected answers go
    through the model in one batch, and the trainer takes the whole logits."""
    plan.sequences_factor = 2
    plan.own_logits = TRL_OWN_LOGITS


def held_out_pairs(run: Run) -> list[dict[str, Any]]:
    """The held-out rows that are whole pairs (the base and final stages score the same ones)."""
    return [r for r in (run.eval_dataset or []) if r.get("chosen") and r.get("rejected")]


def pair_metrics(run: Run) -> dict[str, Any] | None:
    """``evaluate``: preference accuracy and margin of the model on the held-out pairs (None without any)."""
    rows = held_out_pairs(run)
    if not rows:
        return None
    return preference_metrics(
        run.model, run.tokenizer, [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows],
        batch_size=run.recipe.eval.batch_size, max_length=run.recipe.train.max_length,
    )
