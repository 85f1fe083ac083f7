"""NEFTune: uniform noise on the input embeddings while training (Jain et al., 2023), for any trainer method.

A third-party modifier: it builds no trainer. Through ``training_setup`` it hands the trainer
another method builds (``sft``, ``distill``…) one training argument, ``neftune_noise_alpha``
(transformers adds the noise, also through a LoRA adapter), and one callback that checks the
noise is on at every step (a trainer that ignored the argument fails loudly, not silently) and
counts the noisy steps for the report. It uses only names from ``ptrain.__all__``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptrain import RecipeError, ReportRow, Run, TrainingSetup, hookimpl


@dataclass
class NEFTuneSection:
    """``[neftune]``: the noise added to the input embeddings during training."""

    alpha: float = 5.0
    """Noise scale α: each embedding gets uniform noise in ±α/√(L·d) (L tokens, d dimensions). The paper uses 5 to 15."""

    def validate(self) -> None:
        if not 0 < self.alpha <= 100:
            raise RecipeError(f"must be in (0, 100], got {self.alpha}; the paper uses 5, 10 or 15", key="alpha")


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"neftune": NEFTuneSection}


@hookimpl
def report_rows() -> list[ReportRow]:
    return [ReportRow("NEFTune α", "neftune.alpha"), ReportRow("NEFTune: steps with noise", "neftune.steps_with_noise")]


def noise_check(alpha: float, report: dict[str, Any]) -> Any:
    """A ``TrainerCallback``: fails at the first step whose embeddings carry no NEFTune noise, counts the steps that did."""
    from transformers import TrainerCallback

    class NEFTuneCheck(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            embeddings = model.get_input_embeddings() if model is not None else None
            if getattr(embeddings, "neftune_noise_alpha", None) != alpha:
                raise RuntimeError(
                    "NEFTune is not active: the trainer did not apply neftune_noise_alpha to the input embeddings "
                    "(a trainer that builds its arguments without ptrain.training_arguments ignores it)"
                )
            report["steps_with_noise"] = report.get("steps_with_noise", 0) + 1

    return NEFTuneCheck()


@hookimpl
def training_setup(run: Run) -> TrainingSetup:
    section: NEFTuneSection = run.section("neftune")
    report = run.metrics.setdefault("neftune", {"alpha": section.alpha})
    return TrainingSetup(arguments={"neftune_noise_alpha": section.alpha}, callbacks=[noise_check(section.alpha, report)])
