"""The whole plugin contract of ptrain: one function per hook.

A method (``sft``, ``lora``, your own ``dpo``…) is a module of ``@ptrain.hookimpl`` functions
registered under the ``ptrain`` entry-point group. Only methods named in a recipe's ``methods = [...]``
take part in a run, and **the recipe's order is the call order**: the first method listed is
called first and is the outermost wrapper. The core's own defaults run last (``trylast``).

One run fires the hooks in this order::

    recipe_sections    (while validating, before anything heavy is imported)
    load_model         -> run.model, run.tokenizer
    prepare_data       -> run.train_dataset, run.eval_dataset
    evaluate(stage="base")
    build_trainer      -> run.trainer;  the core then calls trainer.train()
    evaluate(stage="final")
    export

Every hook receives the :class:`ptrain.Run` of the current run, which carries the validated
recipe (``run.recipe``, ``run.section(name)``), the run directory (``run.dir``), a logger and what
earlier hooks produced. Plugin modules must import heavy libraries (torch, transformers, peft,
trl) inside their functions, never at module level, so that ``ptrain list`` and recipe
validation stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ptrain.run import DataSplits, LoadedModel, Run

hookspec = pluggy.HookspecMarker("ptrain")
hookimpl = pluggy.HookimplMarker("ptrain")


@hookspec
def recipe_sections() -> dict[str, type]:
    """Declare the recipe sections this method owns and their schemas.

    :return: a mapping from section name (``"lora"``) to a dataclass whose fields are the
        section's keys, with type hints and defaults. The core validates the section against it
        before anything heavy is imported: unknown keys, wrong types and missing required fields
        are recipe errors. A dataclass may define ``validate(self) -> None`` raising
        :class:`ptrain.RecipeError` for checks across fields.

    Result rule: all results are collected; two methods claiming one section is an error.
    """


@hookspec(firstresult=True)
def load_model(run: Run) -> LoadedModel | None:
    """Load the model to train and its tokenizer.

    :param run: the current run. ``run.model_kwargs`` holds extra keyword arguments for
        ``from_pretrained`` that wrappers may fill before the core loads (e.g. a quantization
        config).
    :return: a :class:`ptrain.LoadedModel` ``(model, tokenizer)``.

    Result rule: stops at the first non-None result. The core's loader runs last. Methods that
    adapt the model (LoRA, quantization, a teacher) implement this hook with ``wrapper=True``:
    ``loaded = yield`` gives the result, and the wrapper returns the adapted one.
    """


@hookspec(firstresult=True)
def prepare_data(run: Run) -> DataSplits | None:
    """Produce the training and evaluation datasets.

    :param run: the current run; ``run.tokenizer`` is already loaded.
    :return: a :class:`ptrain.DataSplits` ``(train, eval)`` of ``datasets.Dataset`` with at least
        the columns ``prompt``, ``completion`` (rendered text) and ``instruction``, ``input``,
        ``output`` (the raw fields, so wrappers can re-render prompts).

    Result rule: stops at the first non-None result; the core's loader runs last. Methods that
    transform data implement this hook with ``wrapper=True``.
    """


@hookspec(firstresult=True)
def build_trainer(run: Run) -> Any | None:
    """Build the trainer for this run.

    :param run: the current run, with model, tokenizer and datasets loaded.
    :return: an object with a ``train(resume_from_checkpoint=None)`` method, in practice a
        ``transformers.Trainer`` subclass. Build it with
        :func:`ptrain.training.training_arguments` so recipe settings apply uniformly. The core
        calls ``train()`` itself (it owns progress display, checkpoints and resume).

    Result rule: stops at the first non-None result. At most one method of a recipe may
    implement this hook; a recipe naming two is rejected at validation. A recipe with none does
    not train (e.g. quantization of an existing model).
    """


@hookspec
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    """Measure the model.

    :param run: the current run.
    :param stage: ``"base"`` (before training) or ``"final"`` (after training).
    :return: a flat mapping of metric name to a JSON-serialisable value, or None.

    Result rule: all results are collected and merged into ``metrics.json`` under the stage.
    """


@hookspec
def export(run: Run) -> list[str] | None:
    """Write artifacts into the run directory.

    :param run: the current run, after training and evaluation.
    :return: the paths written (relative to ``run.dir`` or absolute), or None.

    Result rule: all implementations run. Write through :func:`ptrain.artifacts.atomic_dir` so an
    interrupted export never leaves a directory that looks complete.
    """
