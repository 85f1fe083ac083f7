"""The whole plugin contract of ptrain: one function per hook, each with its result rule.

A method (``sft``, ``lora``, your own ``dpo``…) is a module of ``@ptrain.hookimpl`` functions
registered under the ``ptrain`` entry-point group. Only plugins named in a recipe's
``methods = [...]`` take part in a run, and **the recipe's order is the call order**: the first
listed is called first and is the outermost wrapper. The core's own implementations (the
``core`` plugin) run last (``trylast``), so any method can replace or wrap them. A plugin uses
only the names in ``ptrain.__all__``.

Kinds of plugin, by the hooks they implement (``ptrain list`` shows the kind):

* a **trainer** owns ``build_trainer`` (at most one per recipe);
* a **modifier** changes what others do: ``load_model``/``prepare_data``/``build_trainer``
  wrappers, ``training_setup``, ``evaluate``, ``export``;
* a **data** plugin adds ``data_formats`` or ``data_sources``; a **reward** plugin adds
  ``reward_functions``; a **tools** plugin adds ``tools`` (functions a model calls while it answers);
* an **evaluator** implements ``evaluate`` (with its section, checks and report rows) and nothing
  that changes the model, the data or the trainer: it measures, it trains nothing.

Any kind may declare ``method_traits`` (what it is, for other methods to ask at validation).

When hooks fire::

    ptrain validate / ptrain run      (nothing heavy imported)
      recipe_sections, method_traits, data_formats, data_sources,
      reward_functions, tools                                          -> the recipe is checked
      validate_recipe(recipe)                                          -> whole-recipe checks
    ptrain plan / ptrain run (nothing heavy imported, no weights read)
      plan_memory(plan)        -> the predicted training memory, term by term
      (local data files are read and every row normalised: errors name file and line)
    ptrain run
      load_model(run)          -> run.model, run.tokenizer
      prepare_data(run)        -> run.train_dataset, run.eval_dataset
      evaluate(run, "base")
      training_setup(run)      -> arguments and callbacks for the trainer about to be built
      build_trainer(run)       -> run.trainer; the core calls trainer.train()
      evaluate(run, "final")
      export(run)
      report_rows()            -> the end-of-run table (and later ``ptrain compare``)

Hooks that run during a run receive the :class:`ptrain.Run`; plugin modules import heavy
libraries (torch, transformers, peft, trl) inside their functions, never at module level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ptrain._plan import TrainingPlan
    from ptrain._recipe import Recipe
    from ptrain._run import Run
    from ptrain._types import (
        DataFormat,
        DataSource,
        DataSplits,
        LoadedModel,
        ReportRow,
        RewardFunction,
        Tool,
        TrainingSetup,
    )

hookspec = pluggy.HookspecMarker("ptrain")
hookimpl = pluggy.HookimplMarker("ptrain")


# ------------------------------------------------------------------ declaring (at validation, nothing heavy)


@hookspec
def recipe_sections() -> dict[str, type]:
    """Declare the recipe sections this plugin owns and their schemas.

    :return: section name (``"lora"``) -> a dataclass whose fields are the section's keys, with
        type hints and defaults. The core validates the section against it before anything heavy
        is imported: unknown keys, wrong types and missing required fields are recipe errors. The
        dataclass may define ``validate(self) -> None`` raising :class:`ptrain.RecipeError` for
        checks across its own fields.

    Result rule: all results are collected; two plugins claiming one section is an error.
    """


@hookspec
def method_traits() -> list[str]:
    """What this method is, so that other methods ask instead of listing its name.

    :return: trait names, lower-case words joined by ``_``: the ones ptrain's methods use are in
        :data:`ptrain.TRAITS` (``"adds_adapters"``, ``"quantizes_base"``, ``"needs_pairs"``,
        ``"prompt_learning"``, ``"evaluates"``); a plugin may add its own. ``"owns_trainer"`` is set by
        the core for the method that builds the trainer and is never declared.

    At validation, ``recipe.methods_with("adds_adapters")`` lists the recipe's methods with a trait
    (recipe order) and ``recipe.traits(method)`` one method's traits: e.g. a modifier that freezes
    layers refuses ``recipe.methods_with("adds_adapters")`` without naming ``lora``.

    Result rule: all results are collected per plugin; a trait that is not lower-case words joined by
    ``_`` is a recipe error naming the plugin. Runs before anything heavy is imported.
    """


@hookspec
def validate_recipe(recipe: Recipe) -> None:
    """Check the whole recipe: what one section's ``validate`` cannot see.

    :param recipe: the validated :class:`ptrain.Recipe`: ``recipe.methods``, ``recipe.section(name)``,
        ``recipe.trainer_owner`` (the method that builds the trainer, or None), ``recipe.traits(method)``
        and ``recipe.methods_with(trait)`` (see ``method_traits``), ``recipe.data_fields`` (the
        normalised fields every data row will have, or None when only loading can tell; per format in
        CONTRIBUTING.md), ``recipe.data_options(name)`` (a source's or format's validated options).
        Facts about the model without loading it are not here yet: the planned model-facts service
        (config only) is where a check of layer counts or sizes belongs.
    :raise RecipeError: with ``key=`` the recipe key at fault (``"methods"``, ``"data.source"``);
        the core adds the file that set it. ``ptrain validate`` exits 2 with that one line.

    Result rule: every implementation is called (recipe order, the core's last); the first error stops.
    Runs before anything heavy is imported: read package metadata, never import torch.
    """


@hookspec
def data_formats() -> list[DataFormat]:
    """Data layouts this plugin can read (``data.format = "<name>"``).

    :return: :class:`ptrain.DataFormat` objects. The core registers its own the same way:
        ``prompt_completion``, ``alpaca``, ``dolly``, ``messages``, ``sharegpt``, ``preference``,
        ``sharegpt_preference``, ``unpaired``, ``messages_unpaired``, ``sharegpt_unpaired``,
        ``alpaca_unpaired``, ``text`` (TRL's, LLaMA-Factory's and OpenAI's layouts).
        A format with ``options`` (a dataclass) reads its settings from the recipe's ``[data.<name>]``
        table, validated like a section; ``normalize`` then gets them as a third argument.

    Result rule: all results are collected; a name two of the recipe's methods register is an
    error; a method's format of the same name as a core format replaces the core's in recipes
    that name the method.
    """


@hookspec
def data_sources() -> list[DataSource]:
    """Places rows can come from (``data.source = "..."``).

    :return: :class:`ptrain.DataSource` objects. The core's: local ``.jsonl``/``.json``/``.csv``/
        ``.parquet`` files, ``builtin:tasks``, ``builtin:preferences``, and hub datasets. A source
        that can read rows one at a time gives ``stream`` as well as ``read``: with
        ``data.streaming = true`` the trainer then reads its rows as it trains (without ``stream``,
        ``read`` is used and the rows are held in memory). A source with ``options`` (a dataclass)
        reads its settings from the recipe's ``[data.<name>]`` table, validated like a section before
        anything heavy; ``read`` gets them as ``request.settings``. ``local=True``: cheap to read here,
        so validation reads and checks every row.

    Result rule: all results are collected; the first source (recipe order, the core's last) whose
    ``matches`` accepts the value reads it (``data.source``, or each ``[[data.sources]]`` entry of a mixture).
    A value that only an installed plugin not in ``methods`` reads (``sqlite:rows.db``) is a recipe
    error naming that plugin, not a hub dataset ID.
    """


@hookspec
def reward_functions() -> list[RewardFunction]:
    """Named reward functions for online RL methods (``rewards = { name = weight }`` in a recipe).

    :return: :class:`ptrain.RewardFunction` objects.

    Result rule: all results are collected; a name registered twice is an error. A function returns
    one finite number (or None) per completion; the method that calls it checks that with
    :func:`ptrain.check_rewards`, which stops the run with one line naming the reward otherwise.
    """


@hookspec
def tools() -> list[Tool]:
    """Named tools a model may call while it answers (``[grpo] tools = ["calculator"]`` in a recipe).

    :return: :class:`ptrain.Tool` objects: a name, a plain Python function with type hints and a
        Google-style docstring (its JSON schema, what the chat template shows the model, is derived from
        them as transformers' ``get_json_schema`` does), and a one-line description. The core's:
        ``calculator`` (``+ - * /`` and parentheses, parsed, never ``eval``-ed) and ``avro_type``.

    Result rule: all results are collected; a name registered twice, or a tool whose docstring does not
    describe every type-hinted argument, is a recipe error naming the plugin (at validation, nothing heavy).
    The method that runs rollouts parses each call from the generated text, calls the function with its
    keyword arguments and feeds ``str(result)`` back as a ``tool`` turn; an exception becomes
    ``{'error': ...}`` in that turn (a failed call the model sees), never a failed run.
    """


@hookspec
def report_rows() -> list[ReportRow]:
    """Rows this plugin wants in the end-of-run table and in ``ptrain compare``.

    :return: :class:`ptrain.ReportRow` objects, each a dotted path into ``metrics.json`` with its label.
        The end-of-run table is built from these rows alone, by label (base beside final); a metric no
        row declares stays in ``metrics.json`` only.

    Result rule: all results are collected, the core's rows first, then the methods' in recipe
    order. A finished run saves them in ``metrics.json`` (``report``), so ``compare`` shows them
    even where the plugin is no longer installed.
    """


@hookspec
def plan_memory(plan: TrainingPlan) -> None:
    """Add this method's part of the recipe's predicted training memory (``ptrain plan``, the top of ``ptrain run``).

    :param plan: a :class:`ptrain.TrainingPlan`: ``plan.recipe``, ``plan.facts`` (the model's
        :class:`ptrain.ModelFacts`), ``plan.device`` (``cpu`` or ``cuda``), ``plan.sequence_length``.
        Set the shares the core's terms are computed from: ``trainable_parameters`` (with
        ``adds_parameters = True`` for new adapter weights), ``base_bits`` (4 for a 4-bit base),
        ``sequences_factor`` (2 for chosen and rejected), ``sequence_length``, ``vocab_logits``,
        ``layers_train`` (False when nothing inside the decoder layers trains: prompt tuning), ``own_logits``
        (the trainer takes the whole logits, not the chunked head); and
        add the method's own terms with ``plan.add(name, mib, kind)`` (a teacher's or reference
        model's weights, generations), ``kind`` being one of the runs' ``memory_breakdown_mb`` parts.
        ``plan.model_bytes(facts)`` and ``plan.forward_mib(facts)`` size another model;
        ``plan.add_reference_model(method)`` adds a preference or RL method's reference.
    :return: None: the plan is changed in place. A term that depends on other methods' shares (a
        reference model is free when the model trains adapters) is added by a ``wrapper=True``
        implementation after ``result = yield``, which returns ``result``.

    Result rule: every implementation is called, the methods' in recipe order, the core's last: the
    core adds the model's weights, gradients, optimizer state, activations (with or without gradient
    checkpointing), logits and, on CPU, the runtime's own memory from the shares the methods set.
    Runs before anything heavy is imported: use facts (:func:`ptrain.model_facts`), never load a model.
    """


# ------------------------------------------------------------------ running


@hookspec(firstresult=True)
def load_model(run: Run) -> LoadedModel | None:
    """Load the model to train and its tokenizer.

    :param run: the current run. ``run.model_kwargs`` holds extra keyword arguments for
        ``from_pretrained`` that wrappers may fill before the core loads (a quantization config).
    :return: a :class:`ptrain.LoadedModel` ``(model, tokenizer)``.

    Result rule: stops at the first non-None result; the core's loader runs last. Methods that
    adapt the model (LoRA, quantization, a teacher) implement this hook with ``wrapper=True``:
    ``loaded = yield`` gives the result, and the wrapper returns the adapted one. To load another
    model (a teacher, a reference), call :func:`ptrain.load_pretrained`, never this hook.
    """


@hookspec(firstresult=True)
def prepare_data(run: Run) -> DataSplits | None:
    """Produce the training and evaluation datasets.

    :param run: the current run; ``run.tokenizer`` is already loaded.
    :return: a :class:`ptrain.DataSplits` ``(train, eval)`` of ``datasets.Dataset`` with the
        normalised fields (see :class:`ptrain.DataFormat`) plus ``prompt`` and ``completion``, the
        rendered text the trainer sees, and ``source`` (the source's label) when the recipe mixes
        several. With ``data.streaming = true`` the core's ``train`` is a ``datasets.IterableDataset``
        (no length, read as training goes): a wrapper that needs every row in memory rejects
        streaming in ``validate_recipe``.

    Result rule: stops at the first non-None result; the core's loader runs last. Methods that
    transform data implement this hook with ``wrapper=True``.
    """


@hookspec
def training_setup(run: Run) -> TrainingSetup | None:
    """Contribute to the trainer another method is about to build, before it is built.

    :param run: the current run, with model and datasets.
    :return: a :class:`ptrain.TrainingSetup`: ``arguments`` (``TrainingArguments`` fields, applied
        by :func:`ptrain.training_arguments` for the owner) and ``callbacks`` (added by the core to
        the built trainer), or None. A callback that wants its numbers in ``log_history.json``, the
        report's curves and the trackers calls ``run.log_scalars({...})``.

    Result rule: all results are collected in recipe order; two methods setting one argument to
    different values is an error. A recipe with a plugin implementing this hook and no trainer
    owner is rejected at validation.
    """


@hookspec(firstresult=True)
def build_trainer(run: Run) -> Any | None:
    """Build the trainer for this run.

    :param run: the current run, with model, tokenizer and datasets.
    :return: an object with a ``train(resume_from_checkpoint=None)`` method, in practice a
        ``transformers.Trainer`` subclass. Build its arguments with :func:`ptrain.training_arguments`
        so recipe settings and other methods' contributions apply. The core calls ``train()``
        (it owns progress display, checkpoints and resume).

    Result rule: stops at the first non-None result. At most one method of a recipe may own this
    hook (a plain implementation): that method is ``recipe.trainer_owner``. A ``wrapper=True``
    implementation is a modifier: it receives the owner's trainer (``trainer = yield``) and returns
    it adapted. A recipe with no owner does not train (e.g. quantization of an existing model).
    """


@hookspec
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    """Measure the model.

    :param run: the current run.
    :param stage: ``"base"`` (before training) or ``"final"`` (after training).
    :return: a flat mapping of metric name to a JSON-serialisable value, or None. Report other
        models the method measured (a teacher, a quantized variant) with :meth:`ptrain.Run.record_model`.
        To score the core's held-out prompts, read ``run.held_out`` (:class:`ptrain.HeldOut`) and call
        ``run.generate(held.prompts, held.max_new_tokens)``: each prompt is generated once per stage,
        whoever asks first, and reused after (counts in ``metrics.json`` under ``generation``). Declare
        the metrics the table should show with ``report_rows``; log values over time with
        :meth:`ptrain.Run.log_scalars` (from any hook or training callback).

    Result rule: all results are collected and merged into ``metrics.json`` under the stage
    (the core's first, the methods' after).
    """


@hookspec
def export(run: Run) -> list[str] | None:
    """Write artifacts into the run directory.

    :param run: the current run, after training and evaluation.
    :return: the paths written, or None.

    Result rule: all implementations run, the methods' first (recipe order), the core's last (it
    saves ``run.model`` unless ``run.artifacts["model"]`` is set). Write through
    :func:`ptrain.atomic_dir` so an interrupted export never leaves a directory that looks complete.
    """
