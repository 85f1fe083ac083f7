"""SimPO: preference optimisation on length-normalised log-probabilities, without a reference model.

Simple Preference Optimization (Meng et al., 2024) takes as an answer's implicit reward its mean
log-probability per token times ``beta`` (no reference model, and no bias towards longer answers), and asks
the chosen answer's reward to beat the rejected one's by a margin ``gamma``. TRL runs it with the CPO trainer
(``trl.experimental.cpo``, ``loss_type = "simpo"``), which also adds ``cpo_alpha`` times the chosen answer's
cross-entropy (0 in the paper; CPO-SimPO sets it). Held-out pairs are scored at base and final by preference
accuracy (summed log-probabilities, the columns dpo, kto and orpo report) and by SimPO's own reward
(``simpo_reward_accuracy``, ``simpo_reward_margin``: length-normalised, times beta; named apart from
dpo's implicit reward against its reference, so a compare of both keeps them in separate rows).
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
    completion_logprobs,
    hookimpl,
    preference_metrics,
)

from .cpo import cpo_trainer
from .pairs import PREFERENCE_ROWS, held_out_pairs, plan_pairs_in_one_batch, require_pairs


@dataclass
class SimPOSection:
    """``[simpo]``: options of SimPO (optimisation settings live in ``[train]``)."""

    beta: float = 2.0
    """Scale of the length-normalised reward (the paper uses 2.0 to 10; higher needs a larger gamma)."""
    gamma: float = 1.0
    """Target reward margin between chosen and rejected answers (TRL's ``simpo_gamma``; the paper uses 0.5 to 1.6)."""
    cpo_alpha: float = 0.0
    """Weight of the chosen answer's cross-entropy (CPO's behaviour cloning); 0 is SimPO as published."""
    label_smoothing: float = 0.0
    """Assumed fraction of flipped labels; in [0, 0.5)."""

    def validate(self) -> None:
        if self.beta <= 0:
            raise RecipeError("must be > 0 (the paper uses 2.0 to 10)", key="beta")
        if self.gamma < 0:
            raise RecipeError("must be >= 0 (the target margin; the paper uses 0.5 to 1.6)", key="gamma")
        if self.cpo_alpha < 0:
            raise RecipeError("must be >= 0 (0 is SimPO as published; CPO-SimPO uses e.g. 0.05)", key="cpo_alpha")
        if not 0 <= self.label_smoothing < 0.5:
            raise RecipeError("must be in [0, 0.5)", key="label_smoothing")


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"simpo": SimPOSection}


@hookimpl
def method_traits() -> list[str]:
    return ["needs_pairs"]


@hookimpl
def plan_memory(plan: TrainingPlan) -> None:
    """Chosen and rejected answers in one batch, the whole logits; no reference model."""
    plan_pairs_in_one_batch(plan)


@hookimpl
def validate_recipe(recipe: Recipe) -> None:
    require_pairs(recipe, "simpo", "trains on")


@hookimpl
def report_rows() -> list[ReportRow]:
    return [
        *PREFERENCE_ROWS,
        ReportRow("SimPO reward accuracy (length-normalised)", "final.simpo_reward_accuracy", base=True),
        ReportRow("SimPO reward margin", "final.simpo_reward_margin", base=True),
    ]


@hookimpl
def build_trainer(run: Run) -> Any:
    section: SimPOSection = run.section("simpo")
    return cpo_trainer(
        run, "simpo", loss_type="simpo", beta=section.beta, simpo_gamma=section.gamma, cpo_alpha=section.cpo_alpha,
        label_smoothing=section.label_smoothing,
    )


@hookimpl
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    """The shared preference columns, and SimPO's own reward: beta times the mean log-probability per token."""
    rows = held_out_pairs(run)
    if not rows:
        return None
    prompts, chosen, rejected = [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows]
    sizes = {"batch_size": run.recipe.eval.batch_size, "max_length": run.recipe.train.max_length}
    metrics = preference_metrics(run.model, run.tokenizer, prompts, chosen, rejected, **sizes)
    beta = run.section("simpo").beta
    good = completion_logprobs(run.model, run.tokenizer, prompts, chosen, **sizes, average=True)
    bad = completion_logprobs(run.model, run.tokenizer, prompts, rejected, **sizes, average=True)
    margins = [beta * (g - b) for g, b in zip(good, bad, strict=True)]
    return metrics | {
        "simpo_reward_accuracy": round(sum(m > 0 for m in margins) / len(margins), 4),
        "simpo_reward_margin": round(sum(margins) / len(margins), 4),
    }
