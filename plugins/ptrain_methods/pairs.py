"""What the methods that learn from preference pairs (``orpo``, ``reward``; ``kto`` also takes pairs) share.

Not a method: no entry point names this module. A third-party preference method would hold the same
few lines (see examples/ptrain-dpo); they use only names in ``ptrain.__all__``.
"""

from __future__ import annotations

from typing import Any

from ptrain import DataError, Recipe, RecipeError, ReportRow, Run

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
