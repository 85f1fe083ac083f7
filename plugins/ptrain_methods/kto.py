"""KTO: preference optimisation from answers judged one at a time (TRL's KTOTrainer).

Kahneman-Tversky Optimization needs no pairs: each training row is one answer and a thumbs up or
down (the ``unpaired`` format: ``prompt``, ``completion``, ``label``). Preference pairs work too
(``builtin:preferences``, the ``preference`` format): each pair becomes a good and a bad answer.
Like DPO it keeps a reference, the starting model: with ``methods = ["kto", "lora"]`` that is the
model with its adapter disabled, otherwise a frozen copy. Held-out pairs are scored by preference
accuracy at base and final (:func:`ptrain.preference_metrics`); unpaired held-out rows by how far
the good answers' log-probability rises above the bad ones'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ptrain import (
    DataError,
    Recipe,
    RecipeError,
    ReportRow,
    Run,
    TrainingPlan,
    completion_logprobs,
    frozen_copy,
    hookimpl,
    is_adapter_model,
    preference_metrics,
    training_arguments,
    use_chunked_loss,
)

from .pairs import PAIRED, PREFERENCE_ROWS

UNPAIRED = ("prompt", "completion", "label")


@dataclass
class KTOSection:
    """``[kto]``: options of KTO (optimisation settings live in ``[train]``)."""

    beta: float = 0.1
    """Strength of the pull towards the reference model: higher stays closer to it."""
    desirable_weight: float = 1.0
    """Weight of the good answers' loss; raise it when good answers are rarer than bad ones (the paper keeps
    desirable_weight x good / (undesirable_weight x bad) between 1 and 4/3)."""
    undesirable_weight: float = 1.0
    """Weight of the bad answers' loss."""
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    """``kto`` (the paper's), or ``apo_zero_unpaired`` (anchored preference optimisation, unpaired)."""

    def validate(self) -> None:
        if self.beta <= 0:
            raise RecipeError("must be > 0 (typical values 0.05 to 0.5)", key="beta")
        for key in ("desirable_weight", "undesirable_weight"):
            if getattr(self, key) <= 0:
                raise RecipeError("must be > 0", key=key)


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"kto": KTOSection}


@hookimpl(wrapper=True)
def plan_memory(plan: TrainingPlan) -> Any:
    """A reference model (a frozen copy, or the model with its adapter disabled). The KL estimate's forward on
    mismatched pairs runs without gradients, as the reference's does: a transient peak that is freed before the
    policy's forward, so no term (measured: counting it over-predicted the tiny run by 31 %)."""
    result = yield
    plan.add_reference_model("kto")
    return result


@hookimpl
def validate_recipe(recipe: Recipe) -> None:
    fields = recipe.data_fields
    if fields is not None and not ({"chosen", "rejected"} <= fields or "label" in fields):
        raise RecipeError(
            f"kto trains on answers judged good or bad, and {recipe.data.source!r} gives {recipe.data_format!r} rows; use "
            'rows with prompt, completion and label (data.format = "unpaired"), preference pairs (data.format = '
            '"preference") or data.source = "builtin:preferences"',
            key="data.source" if recipe.data.format == "auto" else "data.format",
        )


@hookimpl
def report_rows() -> list[ReportRow]:
    return [
        *PREFERENCE_ROWS,
        ReportRow("good − bad answer log-prob (unpaired)", "final.unpaired_margin", base=True),
    ]


def _columns(dataset: Any) -> list[str] | None:
    names = dataset.column_names
    for columns in (PAIRED, UNPAIRED):
        if all(c in names for c in columns) and all(v not in ("", None) for v in dataset[columns[-1]][:8]):
            return list(columns)
    return None


@hookimpl
def build_trainer(run: Run) -> Any:
    from trl import KTOConfig, KTOTrainer

    section: KTOSection = run.section("kto")
    columns = _columns(run.train_dataset)
    if columns is None:
        raise DataError(f"{run.recipe.data.source}: kto needs prompt/completion/label rows or prompt/chosen/rejected pairs")
    evaluate_during = bool(run.recipe.train.eval_steps) and _columns(run.eval_dataset) is not None
    args = training_arguments(
        run,
        KTOConfig,
        beta=section.beta,
        desirable_weight=section.desirable_weight,
        undesirable_weight=section.undesirable_weight,
        loss_type=section.loss_type,
        max_length=run.recipe.train.max_length,
        dataset_num_proc=None,
    )
    adapter = is_adapter_model(run.model)
    run.metrics["kto"] = {"beta": section.beta, "loss_type": section.loss_type, "data": "pairs" if columns == list(PAIRED) else "unpaired",
                          "reference": "adapter disabled" if adapter else "frozen copy"}
    trainer = KTOTrainer(
        model=run.model,
        ref_model=None if adapter else frozen_copy(run.model),
        args=args,
        train_dataset=run.train_dataset.select_columns(columns),
        eval_dataset=run.eval_dataset.select_columns(_columns(run.eval_dataset)) if evaluate_during else None,
        processing_class=run.tokenizer,
    )
    use_chunked_loss(run, trainer)  # policy and reference log-probs, chunk by chunk
    return trainer


@hookimpl
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    """Preference accuracy on held-out pairs; on unpaired rows, the good answers' mean log-prob minus the bad ones'."""
    rows = list(run.eval_dataset or [])
    options = {"batch_size": run.recipe.eval.batch_size, "max_length": run.recipe.train.max_length}
    if rows and all(r.get("chosen") and r.get("rejected") for r in rows):
        prompts = [r["prompt"] for r in rows]
        return preference_metrics(run.model, run.tokenizer, prompts, [r["chosen"] for r in rows], [r["rejected"] for r in rows], **options)
    judged = [r for r in rows if isinstance(r.get("label"), bool)]
    good, bad = [r for r in judged if r["label"]], [r for r in judged if not r["label"]]
    if not good or not bad:
        return None
    good_logp = completion_logprobs(run.model, run.tokenizer, [r["prompt"] for r in good], [r["completion"] for r in good], **options)
    bad_logp = completion_logprobs(run.model, run.tokenizer, [r["prompt"] for r in bad], [r["completion"] for r in bad], **options)
    return {"unpaired_margin": round(sum(good_logp) / len(good_logp) - sum(bad_logp) / len(bad_logp), 4), "unpaired_rows": len(judged)}
