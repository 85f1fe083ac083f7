"""Direct Preference Optimization with TRL's DPOTrainer, on prompt/chosen/rejected pairs.

A third-party ptrain method: it uses only the public ``ptrain`` API and is registered by the
``dpo`` entry point of the ``ptrain-dpo`` distribution. Heavy libraries (torch, trl) are
imported inside the hooks, so ``ptrain list`` and ``ptrain validate`` stay fast.
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
    training_arguments,
    use_chunked_loss,
)

LossType = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sigmoid_norm",
]
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class DPOSection:
    """``[dpo]``: options of preference optimization (optimisation settings live in ``[train]``)."""

    beta: float = 0.1
    """Strength of the pull towards the reference model: higher stays closer to it."""
    loss_type: LossType = "sigmoid"
    """TRL's preference loss: ``sigmoid`` is the original DPO, ``ipo``, ``hinge``, ``robust``… its variants."""
    label_smoothing: float = 0.0
    """Assumed fraction of flipped labels (conservative DPO, ``robust``); in [0, 0.5)."""
    reference: Literal["auto", "copy"] = "auto"
    """``auto``: a model with adapters (``methods = ["dpo", "lora"]``) uses itself with the adapter
    disabled as the reference (no second copy in memory); a fully trained model gets a frozen copy.
    ``copy``: always a frozen copy of the model as loaded."""
    precompute_reference: bool = False
    """Compute the reference log-probabilities once before training, so no reference model stays in memory."""

    def validate(self) -> None:
        if self.beta <= 0:
            raise RecipeError("must be > 0 (typical values 0.05 to 0.5)", key="beta")
        if not 0 <= self.label_smoothing < 0.5:
            raise RecipeError("must be in [0, 0.5)", key="label_smoothing")
        if self.label_smoothing and self.loss_type not in ("sigmoid", "robust", "exo_pair", "aot"):
            raise RecipeError(
                f"loss_type {self.loss_type!r} ignores label_smoothing; use 'sigmoid', 'robust', 'exo_pair' or 'aot', or remove it",
                key="label_smoothing",
            )
        if self.loss_type == "exo_pair" and self.label_smoothing == 0:
            raise RecipeError("loss_type 'exo_pair' needs label_smoothing > 0 (e.g. 1e-3)", key="label_smoothing")


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"dpo": DPOSection}


@hookimpl(wrapper=True)
def plan_memory(plan: TrainingPlan) -> Any:
    """Chosen and rejected answers in one batch; the reference model, unless it is the model with its adapter
    disabled or its log-probabilities are computed before training."""
    plan.sequences_factor = 2
    result = yield
    section: DPOSection = plan.recipe.section("dpo")
    if section.reference == "copy" or not (plan.adds_parameters or section.precompute_reference):
        plan.add_reference_model("dpo", copy=True)
    return result


@hookimpl
def method_traits() -> list[str]:
    return ["needs_pairs"]


@hookimpl
def validate_recipe(recipe: Recipe) -> None:
    """Preference pairs or nothing: checked by ``ptrain validate``, before anything loads."""
    fields = recipe.data_fields
    if fields is not None and not {"chosen", "rejected"} <= fields:
        raise RecipeError(
            f"dpo trains on preference pairs, and {recipe.data.source!r} gives {recipe.data_format!r} rows; use "
            'data.source = "builtin:preferences", or rows with prompt, chosen and rejected (data.format = "preference")',
            key="data.source" if recipe.data.format == "auto" else "data.format",
        )


@hookimpl
def report_rows() -> list[ReportRow]:
    return [
        ReportRow("preference accuracy", "final.preference_accuracy", base=True, chart="quality"),
        ReportRow("preference margin", "final.preference_margin", base=True),
        ReportRow("implicit reward accuracy", "final.reward_accuracy"),
    ]


def _require_pairs(dataset: Any, split: str, source: str) -> None:
    missing = [c for c in PREFERENCE_COLUMNS if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"{source}: the {split} data has no {', '.join(missing)} column(s) for dpo; give rows with prompt, chosen, "
            "rejected (or chat-form chosen/rejected) and data.format = \"preference\""
        )


def reference_kind(run: Run) -> str:
    section: DPOSection = run.section("dpo")
    if section.reference == "copy":
        return "frozen copy"
    if is_adapter_model(run.model):
        return "implicit (adapter disabled)"
    return "precomputed" if section.precompute_reference else "frozen copy"


@hookimpl
def build_trainer(run: Run) -> Any:
    from trl import DPOConfig, DPOTrainer

    section: DPOSection = run.section("dpo")
    _require_pairs(run.train_dataset, "train", run.recipe.data.source)
    evaluate_during = bool(run.recipe.train.eval_steps)
    if evaluate_during:
        _require_pairs(run.eval_dataset, "eval", run.recipe.data.eval_source or run.recipe.data.source)
    args = training_arguments(
        run,
        DPOConfig,
        beta=section.beta,
        loss_type=[section.loss_type],
        label_smoothing=section.label_smoothing,
        precompute_ref_log_probs=section.precompute_reference,
        max_length=run.recipe.train.max_length,
        dataset_num_proc=None,
    )
    kind = reference_kind(run)
    reference = frozen_copy(run.model) if kind == "frozen copy" else None
    run.metrics["dpo"] = {"beta": section.beta, "loss_type": section.loss_type, "reference": kind}
    run.log.info("dpo: beta %s, loss %s, reference: %s", section.beta, section.loss_type, kind)
    columns = list(PREFERENCE_COLUMNS)
    trainer = DPOTrainer(
        model=run.model,
        ref_model=reference,
        args=args,
        train_dataset=run.train_dataset.select_columns(columns),
        eval_dataset=run.eval_dataset.select_columns(columns) if evaluate_during else None,
        processing_class=run.tokenizer,
    )
    use_chunked_loss(run, trainer)  # policy and reference log-probs, chunk by chunk
    return trainer


def _logprobs(run: Run, model: Any, rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    kwargs = {"batch_size": run.recipe.eval.batch_size, "max_length": run.recipe.train.max_length}
    prompts = [r["prompt"] for r in rows]
    chosen = completion_logprobs(model, run.tokenizer, prompts, [r["chosen"] for r in rows], **kwargs)
    rejected = completion_logprobs(model, run.tokenizer, prompts, [r["rejected"] for r in rows], **kwargs)
    return chosen, rejected


def _reference_logprobs(run: Run, rows: list[dict[str, Any]]) -> tuple[list[float], list[float]] | None:
    """The reference's log-probs: saved at the base stage, else from the trainer's reference."""
    if "dpo.base_logprobs" in run.state:
        return run.state["dpo.base_logprobs"]
    reference = getattr(run.trainer, "ref_model", None)
    if reference is not None:
        return _logprobs(run, reference, rows)
    if is_adapter_model(run.model):
        with run.model.disable_adapter():
            return _logprobs(run, run.model, rows)
    return None


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


@hookimpl
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    """Preference accuracy (policy prefers chosen) and margins on the held-out pairs."""
    if run.eval_dataset is None or any(c not in run.eval_dataset.column_names for c in PREFERENCE_COLUMNS):
        return None
    rows = list(run.eval_dataset)
    if not rows:
        return None
    chosen, rejected = _logprobs(run, run.model, rows)
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    metrics: dict[str, Any] = {
        "preference_accuracy": _mean([float(m > 0) for m in margins]),
        "preference_margin": _mean(margins),
        "preference_pairs": len(rows),
    }
    if stage == "base":
        run.state["dpo.base_logprobs"] = (chosen, rejected)
        return metrics
    reference = _reference_logprobs(run, rows)
    if reference is not None:
        beta = run.section("dpo").beta
        ref_chosen, ref_rejected = reference
        reward_chosen = [beta * (c - rc) for c, rc in zip(chosen, ref_chosen, strict=True)]
        reward_rejected = [beta * (r - rr) for r, rr in zip(rejected, ref_rejected, strict=True)]
        reward_margins = [c - r for c, r in zip(reward_chosen, reward_rejected, strict=True)]
        metrics |= {
            "reward_accuracy": _mean([float(m > 0) for m in reward_margins]),
            "reward_margin": _mean(reward_margins),
            "reward_chosen": _mean(reward_chosen),
            "reward_rejected": _mean(reward_rejected),
        }
    return metrics
