"""The :class:`Run`: what every hook of one run may read and set."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
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
    answers: dict[tuple[Any, ...], dict[str, str]] = field(default_factory=dict)
    """:meth:`Run.generate`'s answers: (model, training, length, batch) -> prompt -> answer."""
    timings: dict[tuple[Any, ...], list[Any]] = field(default_factory=dict)
    """Per :attr:`answers` key: new tokens and seconds generated so far."""
    reuse: dict[str, int] = field(default_factory=lambda: {"generated": 0, "reused": 0})
    """Answers :meth:`Run.generate` generated and reused, for ``metrics.json`` (``generation``)."""
    training_now: bool = False
    """The core's trainer is training: :meth:`Run.log_scalars` joins the trainer's next log entry."""
    pending_scalars: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    """Scalars logged outside training, appended to ``log_history.json`` when the run ends."""
    precision: Any = None
    """What ``train.precision`` became on this machine (``ptrain._precision.PrecisionChoice``), once decided."""


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

        Answers are kept per prompt: a prompt already answered by this model at this stage and length
        (by the core's evaluation, or by another method) is not generated again, so a method that
        scores the held-out prompts (:attr:`held_out`), all of them or a filtered few, costs no
        generation. ``reused`` in the result counts the answers taken from before; tokens/s is that of
        the new ones (0 when all were reused). Counts land in ``metrics.json`` under ``generation``.
        Answers are never reused across training or for another model object.
        """
        from ptrain._evaluation import Generations, generate

        key = (id(self.model), self._core.trained_steps, max_new_tokens, self.recipe.eval.batch_size)
        known = self._core.answers.setdefault(key, {})
        missing = list(dict.fromkeys(p for p in prompts if p not in known))
        reused = len(prompts) - sum(1 for p in prompts if p in missing)
        fresh = generate(self.model, self.tokenizer, missing, max_new_tokens, self.recipe.eval.batch_size) if missing else None
        timing = self._core.timings.setdefault(key, [0, 0.0])
        if fresh is not None:
            known.update(zip(missing, fresh.texts, strict=True))
            timing[0], timing[1] = timing[0] + fresh.new_tokens, timing[1] + fresh.seconds
        self._core.reuse["generated"] += len(missing)
        self._core.reuse["reused"] += reused
        if reused:
            log.info("generate: %d of %d answers reused from this stage", reused, len(prompts))
        # tokens/s: of the new answers, or with every answer reused, of those generated before at this stage
        tokens, seconds = (fresh.new_tokens, fresh.seconds) if fresh is not None else (timing[0], timing[1])
        return Generations([known[p] for p in prompts], tokens, seconds, reused=reused)

    @property
    def held_out(self) -> Any:
        """The held-out prompts the core generates for (:class:`ptrain.HeldOut`): the first ``[eval]
        max_samples`` rows of ``eval_dataset``, their prompts, ``max_new_tokens``, and the core's
        answers by stage as its evaluation fills them."""
        from ptrain._types import HeldOut

        rows = list(self.eval_dataset.select(range(min(self.recipe.eval.max_samples, len(self.eval_dataset))))) if self.eval_dataset else []
        return HeldOut(rows, [r["prompt"] for r in rows], self.recipe.eval.max_new_tokens, self._core.generations)

    def log_scalars(self, values: Mapping[str, float]) -> None:
        """Log named numbers (``{"freeze/frozen_layers": 6}``) from any hook or training callback.

        During training they join the trainer's next log entry, so they reach ``log_history.json``,
        the report's curves and every tracker of ``train.report_to`` exactly as the trainer's loss
        does (the last values before training ends get an entry of their own). Outside training (an
        ``evaluate``, an ``export``) they become an entry of their own at the current step, appended to
        ``log_history.json`` when the run ends and sent to the open trackers.
        """
        checked: dict[str, float] = {}
        for name, value in values.items():
            if not isinstance(name, str) or not name or isinstance(value, bool) or not isinstance(value, (int, float)):
                from ptrain._errors import UsageError

                raise UsageError(f"log_scalars: {name!r} = {value!r}; give names (text) and numbers")
            if math.isfinite(value):
                checked[name] = float(value)
        if self._core.training_now:
            self._core.pending_scalars.update(checked)
            return
        step = getattr(getattr(self.trainer, "state", None), "global_step", 0) or 0
        self._core.history.append({**checked, "step": step})
        if self._core.tracking is not None and hasattr(self._core.tracking, "log"):
            self._core.tracking.log(checked, step)

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
