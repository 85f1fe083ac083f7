"""The value types of the plugin contract: what hooks return and what the core hands them.

Plain data, no behaviour beyond small helpers, and no import of the core's machinery, so that
every other module (and every plugin) can depend on this one. Re-exported by ``ptrain``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple


class LoadedModel(NamedTuple):
    """Result of ``load_model``: the model to train and its tokenizer."""

    model: Any
    tokenizer: Any


class DataSplits(NamedTuple):
    """Result of ``prepare_data``: training and evaluation ``datasets.Dataset`` objects."""

    train: Any
    eval: Any


ROW_FIELDS = ("instruction", "input", "output", "context", "chosen", "rejected", "label", "tools", "tool_calls", "task")
"""The fields of a normalised row, as a data format's ``normalize`` returns them:

* ``instruction`` (text): what is asked; ``input`` (text): what it is asked about, may be empty;
* ``output`` (text): the answer to learn, the reference for evaluation and rewards;
* ``context`` (list of ``{"role", "content"}``): a conversation before the answer, rendered with
  the tokenizer's chat template instead of a prompt template; an assistant message may carry
  ``tool_calls`` (``[{"type": "function", "function": {"name", "arguments": {...}}}]``), a ``tool``
  message ``tool_call_id`` and ``name``; its earlier assistant turns are trained too unless the
  recipe sets ``data.train_turns = "last"``;
* ``tools`` (list of JSON schemas): the tools the conversation may call, passed to the chat template
  (``apply_chat_template(..., tools=...)``); ``tool_calls``: the answer's own tool calls (``output``
  is then the answer as the template renders it);
* ``chosen`` / ``rejected`` (text): a preference pair; ``label`` (bool): a single answer judged
  good or bad (unpaired preference data);
* ``task`` (text): a name used to pick the evaluation metric and to group results.

A format may add other text fields (e.g. a test suite a reward function reads); they are kept.
"""


@dataclass(frozen=True)
class DataFormat:
    """A data layout ptrain can read, registered through the ``data_formats`` hook.

    ``normalize(row, where)`` turns one source row (a dict, already renamed by ``data.columns``)
    into the normalised fields of :data:`ROW_FIELDS`; ``where`` names the row
    (``"data.jsonl: line 7"``) and must start every :class:`ptrain.DataError` it raises.
    """

    name: str
    columns: tuple[str, ...]
    """Source columns every row must have: named in errors, and used by ``data.format = "auto"``
    (the format whose columns the first row has wins; more columns win ties)."""
    normalize: Callable[[dict[str, Any], str], dict[str, Any]]
    fields: frozenset[str] = frozenset({"instruction", "output"})
    """Normalised fields every row of this format fills (non-empty): methods check what they need
    against it at ``ptrain validate`` (``"chosen"`` for preference methods, ``"instruction"`` for prompts)."""
    description: str = ""
    template: tuple[str, str] | None = None
    """Default prompt templates (with ``{input}``, without) for its rows; None: ``{instruction}\\n{input}``."""
    options: type | None = None
    """A dataclass of this format's own settings, read from the recipe's ``[data.<name>]`` table and
    validated like a section (unknown keys, types, ``validate()``). With options, ``normalize`` is
    called as ``normalize(row, where, options)`` with the validated object."""


@dataclass(frozen=True)
class DataRequest:
    """What a :class:`DataSource` is asked to read."""

    location: str
    """The recipe's ``data.source`` (or ``data.eval_source``) value."""
    key: str
    """The recipe key it came from, for error messages."""
    role: Literal["train", "eval"]
    split: str
    seed: int
    options: Any
    """The whole validated ``[data]`` section (generator options, sizes)."""
    settings: Any = None
    """The source's own validated options (an instance of :attr:`DataSource.options`, from the
    recipe's ``[data.<source name>]`` table), or None when the source declares none."""


@dataclass(frozen=True)
class DataSource:
    """Where rows come from, registered through the ``data_sources`` hook.

    ``read(request)`` returns ``[(where, row)]``: each raw row (a dict) with a short text naming
    it for errors (``"chats.jsonl: line 7"``); ``stream(request)``, if given, yields the same rows
    one at a time for ``data.streaming``. The first source whose ``matches(location)`` is true
    reads a ``data.source`` value (or each ``[[data.sources]]`` entry's); methods' sources are
    asked before the core's.
    """

    name: str
    matches: Callable[[str], bool]
    read: Callable[[DataRequest], list[tuple[str, dict[str, Any]]]]
    local: bool = False
    """Cheap to read on this machine, without the network or a model: ``ptrain validate`` (and the
    testing kit's ``validate``) then calls ``read`` and normalises every row before anything heavy is
    imported, so a bad row fails validation by its place. False (hub datasets, a remote database):
    rows are first read at run time, after the model loads."""
    format: str | None = None
    """The format every row of this source has; None: ``data.format`` or detection decides."""
    serves_eval: bool = False
    """``read`` answers ``role="eval"`` with rows of its own; otherwise ``data.eval_size`` rows are held out."""
    description: str = ""
    template: tuple[str, str] | None = None
    """Prompt templates its rows are meant for (before the format's); ``data.template`` overrides both."""
    stream: Callable[[DataRequest], Iterator[tuple[str, dict[str, Any]]]] | None = None
    """Rows one at a time, ``(where, row)`` as ``read`` gives them, without holding the whole source in
    memory: used when the recipe sets ``data.streaming = true`` (the trainer then reads rows as it
    trains, and ``ptrain validate`` checks only the first ones). None: ``read`` is used even then,
    and the whole source is held in memory."""
    options: type | None = None
    """A dataclass of this source's own settings (a table name, a query), read from the recipe's
    ``[data.<name>]`` table (so ``name`` must be a plain TOML key: letters, digits, ``_``, ``-``) and
    validated like a recipe section before anything heavy: unknown keys, wrong types and a failing
    ``validate()`` name ``data.<name>.<key>``. ``read`` and ``stream`` get the object as
    ``request.settings``; without the table the defaults apply (a required field is then an error
    only when the recipe reads from this source)."""


@dataclass(frozen=True)
class RewardFunction:
    """A named reward for online RL methods, registered through the ``reward_functions`` hook.

    ``function(prompts, completions, **columns)`` follows TRL's reward-function signature: lists of
    prompts and completions (text), one keyword per dataset column (``output`` is the reference
    answer, ``task`` the task name, ...), and returns one float (or None to abstain) per completion.
    """

    name: str
    function: Callable[..., Sequence[float | None]]
    description: str = ""


@dataclass(frozen=True)
class Tool:
    """A named tool a model may call while it answers, registered through the ``tools`` hook.

    ``function`` is a plain Python function with type-hinted arguments and a Google-style docstring
    (a summary line, then ``Args:`` with one line per argument): its JSON schema, what the chat template
    shows the model, is derived from them as transformers' ``get_json_schema`` does (:meth:`schema`), so
    the docstring is the tool's documentation for the model as much as for people. The model calls it
    with keyword arguments parsed from its tool call; the result is turned into text (``str``) and fed
    back as the ``tool`` turn. Raise an exception for a call it cannot answer (bad arguments): the
    rollout feeds the error back as the result and counts a failed call. ``name`` is the name the model
    calls and the recipe names (``[grpo] tools = ["calculator"]``); it may differ from the function's.
    """

    name: str
    function: Callable[..., Any]
    description: str = ""
    """One line for ``ptrain list -v``; the model sees the docstring's summary."""

    def callable(self) -> Callable[..., Any]:
        """``function`` under ``name``, with its signature and docstring: what TRL's ``tools=`` and
        ``apply_chat_template(tools=...)`` take (both read ``__name__``, the type hints and the docstring)."""
        import functools

        @functools.wraps(self.function)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self.function(*args, **kwargs)

        call.__name__ = call.__qualname__ = self.name
        return call

    def schema(self) -> dict[str, Any]:
        """The tool's JSON schema as chat templates receive it (``{"type": "function", "function": {...}}``),
        derived by transformers' ``get_json_schema`` (imports transformers)."""
        from transformers.utils import get_json_schema

        return get_json_schema(self.callable())


@dataclass(frozen=True)
class ReportRow:
    """A row a method wants in the end-of-run table and in ``ptrain compare``, from the ``report_rows`` hook.

    ``key`` is a dotted path into ``metrics.json`` (``"final.templates_heldout_mean"``,
    ``"distill.speedup"``). With ``base=True`` and a key under ``final.``, the cell shows
    ``base → final``. ``chart``: ``"quality"`` adds a bar to the quality panel of ``compare.png``
    (values in [0, 1]); ``"panel"`` gives the row a panel of its own. With ``each=True`` the key
    holds a mapping whose entries only the run knows (one mean per reward function the recipe
    named): the row becomes one row per entry, labelled ``label: entry``.
    """

    label: str
    key: str
    base: bool = False
    chart: Literal["quality", "panel"] | None = None
    format: Literal["number", "count"] = "number"
    """``count``: large integers shortened (``135M``)."""
    digits: int = 4
    each: bool = False


TRAITS: dict[str, str] = {
    "owns_trainer": "builds the run's trainer (set by the core for the recipe's trainer owner; never declared)",
    "adds_adapters": "puts a peft adapter (or soft prompt) on the model; a recipe trains one adapter",
    "quantizes_base": "loads the base model quantized (its weights are not plain tensors to train or merge into)",
    "needs_pairs": "trains on preference pairs: rows with chosen and rejected",
    "prompt_learning": "adds virtual tokens before each sequence (packed sequences would mix examples)",
    "evaluates": "only measures the model (an evaluator): adds metrics, trains nothing",
}
"""The traits ptrain's own methods declare (``method_traits``) and what each means. A plugin may
declare others of its own (lower-case words joined by ``_``); :meth:`ptrain.Recipe.methods_with`
answers for any of them."""


@dataclass(frozen=True)
class HeldOut:
    """The held-out prompts the core generates answers for at each stage, and those answers.

    ``run.held_out`` gives it during a run: ``rows`` are the first ``[eval] max_samples`` rows of
    ``run.eval_dataset`` (normalised fields plus ``prompt`` and ``completion``), ``prompts`` their
    rendered prompts, ``max_new_tokens`` the ``[eval]`` length the core generates at, and
    ``answers`` the core's answers by stage (``"base"``, ``"final"``), filled as the core's
    ``evaluate`` runs (the core runs after the methods: read them in ``export``, or call
    ``run.generate(held_out.prompts, held_out.max_new_tokens)``, which generates once per prompt and
    stage whoever asks first, and reuses the answers after).
    """

    rows: list[dict[str, Any]]
    prompts: list[str]
    max_new_tokens: int
    answers: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class TrainingSetup:
    """What a method contributes to a trainer another method builds (the ``training_setup`` hook).

    ``arguments`` are ``TrainingArguments`` fields (``{"neftune_noise_alpha": 5.0}``) that
    :func:`ptrain.training_arguments` applies for the owner; ``callbacks`` are
    ``transformers.TrainerCallback`` objects the core adds to the trainer once it is built.
    """

    arguments: dict[str, Any] = field(default_factory=dict)
    callbacks: list[Any] = field(default_factory=list)
