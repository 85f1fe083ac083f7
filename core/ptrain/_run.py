"""The :class:`Run`: what every hook of one run may read and set."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ptrain._recipe import Recipe
    from ptrain._types import TrainingSetup

log = logging.getLogger("ptrain")


@dataclass
class CoreState:
    """The core's own bookkeeping during a run; not part of the plugin contract."""

    training_started: bool = False
    on_started: Callable[[], None] | None = None
    """Called when training starts (the run directory drops the run it replaced)."""
    memory_baseline_mb: float | None = None
    plan: Any = None
    """The predicted training memory (:class:`ptrain.TrainingPlan`) for the data this run trains on, or None."""
    """Memory in use before the model loaded: the zero of every ``above baseline`` figure."""
    generations: dict[str, list[str]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)
    setup: list[tuple[str, TrainingSetup]] = field(default_factory=list)
    """What each method contributed through ``training_setup``, in recipe order."""
    skeleton: Any = None
    """Rank 0's weightless copy of the model before sharded (FSDP) training, filled again after it."""
    tracking: Any = None
    """The experiment trackers this run opened (``train.report_to``), until they are closed."""
    trained_steps: int = 0
    """Bumped when training ends: answers generated before it are stale."""
    answers: tuple[Any, Any] | None = None
    """The last :meth:`Run.generate` call's key and result."""


@dataclass
class Run:
    """Everything a hook may read or set during one run.

    Read: ``recipe`` (the validated :class:`ptrain.Recipe`), ``section(name)`` (your validated
    section), ``dir`` (the run directory), ``log``, ``console`` (a rich console, or None),
    ``is_main_process`` and ``resume``. Set by the hooks and read by later ones: ``model``,
    ``tokenizer``, ``train_dataset``, ``eval_dataset``, ``trainer``, ``model_kwargs``,
    ``metrics`` (add one top-level key for your method), ``artifacts`` (name -> path written) and
    ``state`` (scratch space between your hooks: key it by your method's name).
    """

    recipe: Recipe
    dir: Path
    console: Any = None
    model: Any = None
    tokenizer: Any = None
    train_dataset: Any = None
    eval_dataset: Any = None
    trainer: Any = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra ``from_pretrained`` keyword arguments, set by ``load_model`` wrappers before the core loads."""
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    """Name -> path of what export wrote (``model``, ``adapter``…); later exporters may skip what is there."""
    state: dict[str, Any] = field(default_factory=dict)
    """Scratch space shared between a method's hooks; key it by the method's name."""
    resume: bool = False
    is_main_process: bool = True
    _core: CoreState = field(default_factory=CoreState, repr=False, init=False)
    """The core's own state: not for plugins."""

    @property
    def log(self) -> logging.Logger:
        return log

    def section(self, name: str) -> Any:
        """The validated object of recipe section ``name``."""
        return self.recipe.section(name)

    def generate(self, prompts: list[str], max_new_tokens: int) -> Any:
        """Greedy answers of the run's model to ``prompts`` (:class:`ptrain.Generations`), in batches of
        ``[eval] batch_size``.

        The core's evaluation generates through this too: a method that scores the same held-out
        prompts at the same length (a reward, a format check) gets the answers the core already
        generated at this stage instead of generating them again. Answers are never reused across
        training or for another model object.
        """
        from ptrain._evaluation import generate

        key = (id(self.model), self._core.trained_steps, tuple(prompts), max_new_tokens, self.recipe.eval.batch_size)
        if self._core.answers is not None and self._core.answers[0] == key:
            return self._core.answers[1]
        result = generate(self.model, self.tokenizer, prompts, max_new_tokens, self.recipe.eval.batch_size)
        self._core.answers = (key, result)
        return result

    def record_model(self, label: str, *, model: str, final: dict[str, Any], train: dict[str, Any] | None = None) -> None:
        """Report another model this run measured (a teacher, a baseline, a quantized variant).

        It gets a column of its own next to the run's in the end-of-run table and in
        ``ptrain compare``: ``final`` holds its metrics under the same names as the run's
        (``task_metric``, ``generation_tokens_per_s``, ``memory_footprint_mb``…), ``train`` its
        training figures if it was trained, ``model`` what it is (a path, a hub ID, a description).
        """
        entry: dict[str, Any] = {"model": model, "final": {k: v for k, v in final.items() if v is not None}}
        if train:
            entry["train"] = {k: v for k, v in train.items() if v is not None}
        self.metrics.setdefault("models", {})[label] = entry
