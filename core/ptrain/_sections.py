"""Schemas of the core recipe sections: ``[model]``, ``[data]``, ``[train]``, ``[eval]``, ``[output]``.

Each class is the documentation of its section: field name = key, type hint = accepted type,
default = what an omitted key means.
"""

from __future__ import annotations

import dataclasses
import json
import math
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ptrain._errors import RecipeError
from ptrain._schema import suggest

MAX_WEIGHT = 1e9
"""The largest ``[[data.sources]]`` weight: shares are relative, and a sum of weights must stay finite."""


def check_template(template: str, key: str, required: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    """Raise a RecipeError unless ``template`` is a format string using exactly these placeholders."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise RecipeError(f"template {template!r} is not a valid format string ({err}); write literal braces as {{{{ }}}}", key=key) from None
    for name in required:
        if name not in names:
            raise RecipeError(f"template {template!r} has no {{{name}}} placeholder; add one", key=key)
    unknown = names - set(allowed)
    if unknown:
        raise RecipeError(
            f"template {template!r} uses unknown placeholder(s) {', '.join(sorted(unknown))}; allowed: "
            + ", ".join("{" + a + "}" for a in allowed),
            key=key,
        )


def check_range(section: Any, key: str, low: float, high: float, why: str = "") -> None:
    """Raise a RecipeError unless ``low <= section.key <= high``."""
    value = getattr(section, key)
    if value is None:
        return
    if not low <= value <= high:
        def show(n: float) -> str:
            return f"{n:,}" if isinstance(n, int) else f"{n:g}"

        raise RecipeError(f"must be in [{show(low)}, {show(high)}], got {show(value)}{'; ' + why if why else ''}", key=key)


def check_name(value: str, key: str, known: tuple[str, ...], what: str) -> None:
    """Raise a RecipeError unless ``value`` is one of ``known`` (skipped when the list could not be read)."""
    if known and value not in known:
        raise RecipeError(f"unknown {what} {value!r}{suggest(value, list(known))} (known: {', '.join(known)})", key=key)


def read_template(value: str, key: str = "data.chat_template") -> str:
    """``data.chat_template``: a Jinja file (``.jinja``/``.j2``/any existing file) or the template text itself."""
    looks_like_file = "{" not in value and ("\n" not in value) and len(value) < 1000
    if looks_like_file:
        path = Path(value).expanduser()
        try:
            return path.read_text(encoding="utf-8")
        except OSError as err:
            raise RecipeError(f"cannot read the chat template file {value!r} ({err.strerror or err}); give a Jinja file or "
                              "the template text itself", key=key) from None
    return value



@dataclass
class ModelSection:
    """``[model]``: what to train."""

    name: str
    """A hub ID (``HuggingFaceTB/SmolLM2-135M-Instruct``), a local directory, or ``builtin:tiny-llama``
    / ``builtin:tiny-gpt2`` (tiny random-init models with their own bundled tokenizers)."""
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    trust_remote_code: bool = False
    tokenizer: str | None = None
    """Load the tokenizer from elsewhere than ``name``."""
    keep_layers: int | None = None
    """Keep only this many of the model's transformer layers, evenly spaced, first and last included:
    a smaller, faster model initialised from a pretrained one (a distillation student, as in
    DistilBERT's every-other-layer initialisation)."""

    def validate(self) -> None:
        if self.keep_layers is not None and self.keep_layers < 1:
            raise RecipeError("must be a number of layers >= 1 (or leave it out to keep them all)", key="keep_layers")


@dataclass
class SourceSection:
    """``[[data.sources]]``: one source of a weighted mixture, with its own format and columns."""

    source: str
    """As ``data.source``: a local file, a hub dataset ID, ``builtin:tasks``, or a plugin's source."""
    weight: float = 1.0
    """Share of the training mix: rows are drawn from each source with probability weight / sum of weights."""
    name: str | None = None
    """Label in ``metrics.json`` and the per-source metrics; default: the file's stem or the source's name."""
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    split: str = "train"
    eval_source: str | None = None
    eval_size: int | None = None
    """Held-out rows of this source; default ``data.eval_size``."""
    template: str | None = None
    template_no_input: str | None = None

    def validate(self) -> None:
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and 0 < self.weight <= MAX_WEIGHT):
            raise RecipeError(f"must be > 0 and a finite number <= {MAX_WEIGHT:g} (a source's share of the mix, relative to the "
                              f"others), got {self.weight!r}", key="weight")
        if self.eval_size is not None and self.eval_size < 0:
            raise RecipeError("must be >= 0", key="eval_size")
        if self.template is not None:
            check_template(self.template, "template", ("instruction", "input"), ("instruction", "input"))
        if self.template_no_input is not None:
            check_template(self.template_no_input, "template_no_input", ("instruction",), ("instruction",))


def source_label(location: str) -> str:
    """A short label for a data source: a file's stem, a hub dataset's name, ``tasks`` for ``builtin:tasks``."""
    tail = location.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].removeprefix("builtin:")
    for suffix in (".jsonl", ".json", ".csv", ".parquet"):
        tail = tail.removesuffix(suffix)
    return tail or location


@dataclass
class DataSection:
    """``[data]``: what to train and evaluate on."""

    source: str | None = None
    """A local ``.jsonl``/``.json``/``.csv``/``.parquet`` file, a hub dataset ID, ``builtin:tasks``,
    ``builtin:preferences`` (the same tasks as preference pairs: chosen = the correct answer,
    rejected = a plausible wrong one), or a source a plugin registers. Or give ``sources``."""
    sources: list[SourceSection] = field(default_factory=list)
    """A weighted mixture instead of ``source``: ``[[data.sources]]`` tables, each with ``source``,
    ``weight`` and optionally its own ``format``, ``columns``, ``eval_source``, ``eval_size``,
    templates and ``name``. Training rows are drawn from the sources by weight, reproducibly by
    ``seed``, until the first source runs out (no row repeats); each source holds out its own
    evaluation rows, and metrics are reported per source."""
    format: str = "auto"
    """``auto`` (told from the columns), or a registered format: ``prompt_completion``, ``alpaca``,
    ``dolly``, ``messages``, ``sharegpt``, ``preference`` (``prompt``, ``chosen``, ``rejected``),
    ``sharegpt_preference``, ``unpaired`` (``prompt``, ``completion``, ``label``), ``messages_unpaired``,
    ``sharegpt_unpaired``, ``alpaca_unpaired``, ``text``, or one a plugin adds (``ptrain list``); the
    README's data section shows a row of each."""
    columns: dict[str, str] = field(default_factory=dict)
    """Rename source columns to the format's names, e.g. ``{ prompt = "question", completion = "answer" }``."""
    roles: dict[str, str] = field(default_factory=dict)
    """Rename the role tags of chat messages (``role`` or ShareGPT's ``from``) to ``system``, ``user``,
    ``assistant`` or ``tool``, as LLaMA-Factory's ``tags`` do, e.g. ``{ human = "user", bot = "assistant" }``."""
    chat_template: str | None = None
    """A Jinja chat template (a file path or the template text) used instead of the tokenizer's own, e.g. one
    that renders ``tools`` and ``tool_calls`` where the model's drops them; checked at ``ptrain validate`` by
    rendering a row, and saved with the trained model's tokenizer."""
    train_turns: Literal["all", "last"] = "all"
    """In a multi-turn conversation, train on every assistant turn (``all``, as TRL and LLaMA-Factory do: each
    turn's tokens in the loss, the rest masked), or on the last answer only (``last``)."""
    split: str = "train"
    """Split to read from a hub dataset."""
    eval_source: str | None = None
    """Separate evaluation file; otherwise ``eval_size`` rows are held out of ``source``."""
    eval_size: int = 100
    max_train: int | None = None
    template: str | None = None
    """Prompt template for rows with an input, with ``{instruction}`` and ``{input}``."""
    template_no_input: str | None = None
    """Prompt template for rows without an input, with ``{instruction}``."""
    chat: bool = False
    """Render prompts with the tokenizer's chat template (one user turn: instruction, then input),
    as instruct models expect; templates are then not used."""
    dedup: bool = False
    """Drop exact duplicate training rows (same normalised fields), and training rows that repeat an
    evaluation row; the counts land in ``metrics.json`` (``data``)."""
    streaming: bool = False
    """Read training rows one at a time instead of loading the source: for files larger than memory.
    Needs ``train.max_steps``; ``ptrain validate`` checks the first rows only, and the first
    ``eval_size`` rows of each source are held out (shuffle the file beforehand if it is ordered)."""
    shuffle_buffer: int = 1000
    """With ``streaming``: rows are shuffled within a buffer of this many (1: file order)."""
    # builtin:tasks / builtin:preferences generator options
    tasks: list[str] = field(default_factory=lambda: ["arithmetic", "reverse", "uppercase"])
    num_examples: int = 2000
    max_row_chars: int = 200_000
    """A row whose text (prompt, answer, conversation) is longer than this is refused by file and line before
    it is tokenized: one huge row must not cost gigabytes. ``train.max_length`` truncates what is kept (plain-text
    rows longer than it are cut into chunks that fit instead, none of their text lost)."""

    def validate(self) -> None:
        from ptrain._tasks import TASKS

        if self.source is None and not self.sources:
            raise RecipeError('needs a source, e.g. source = "data/train.jsonl" (or [[data.sources]] tables for a mixture)', key="source")
        if self.source is not None and self.sources:
            raise RecipeError("give either source or [[data.sources]], not both", key="sources")
        if self.sources:
            per_source = {"format": "auto", "columns": {}, "split": "train", "eval_source": None, "template": None, "template_no_input": None}
            for key, default in per_source.items():
                if getattr(self, key) != default:
                    raise RecipeError(f"with [[data.sources]], set {key} in each source's table", key=key)
            labels = [s.name or source_label(s.source) for s in self.sources]
            repeated = next((label for label in labels if labels.count(label) > 1), None)
            if repeated:
                raise RecipeError(f"two sources are labelled {repeated!r}; give them different names (name = ...)", key="sources")
        for i, task in enumerate(self.tasks):
            if task not in TASKS:
                raise RecipeError(f"unknown task {task!r}{suggest(task, list(TASKS))} (tasks: {', '.join(TASKS)})", key=f"tasks[{i}]")
        if not self.tasks:
            raise RecipeError(f"is empty; name at least one of {', '.join(TASKS)}", key="tasks")
        check_range(self, "eval_size", 0, 100_000)
        check_range(self, "num_examples", 1, 10_000_000, "the bundled generator makes at most 10 million rows")
        check_range(self, "max_train", 1, 10**12, "leave it out to train on every row")
        check_range(self, "max_row_chars", 100, 10**9)
        check_range(self, "shuffle_buffer", 1, 10_000_000, "1 keeps the file's order")
        if self.template is not None:
            check_template(self.template, "template", ("instruction", "input"), ("instruction", "input"))
        if self.template_no_input is not None:
            check_template(self.template_no_input, "template_no_input", ("instruction",), ("instruction",))
        from ptrain._formats import ROLES

        for tag, role in self.roles.items():
            if role not in ROLES:
                raise RecipeError(f"maps {tag!r} to {role!r}; map role tags to one of {', '.join(ROLES)}", key=f"roles.{tag}")
        if self.chat_template is not None:
            read_template(self.chat_template, "chat_template")

    def views(self) -> list[tuple[str, float, str, DataSection]]:
        """``(label, weight, key prefix, section)`` per source: each source's own view of ``[data]``
        (one for a single source, the section itself)."""
        if not self.sources:
            return [(source_label(self.source or ""), 1.0, "data", self)]
        views = []
        for i, entry in enumerate(self.sources):
            view = dataclasses.replace(
                self, source=entry.source, sources=[], format=entry.format, columns=dict(entry.columns), split=entry.split,
                eval_source=entry.eval_source, eval_size=self.eval_size if entry.eval_size is None else entry.eval_size,
                template=entry.template, template_no_input=entry.template_no_input, max_train=None,
            )
            views.append((entry.name or source_label(entry.source), entry.weight, f"data.sources[{i}]", view))
        return views


@dataclass
class TrainSection:
    """``[train]``: optimisation settings shared by every trainer-building method."""

    max_steps: int = -1
    """Optimizer steps; -1 means train for ``epochs``."""
    epochs: float = 1.0
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 512
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """``auto``: bf16 on a GPU that has it, fp16 on an older GPU; on a CPU bf16 autocast where the CPU
    computes bf16 measurably faster (``avx512_bf16``/``amx_bf16`` and a cached matmul probe), else fp32.
    The choice and its reason are logged and saved in ``env.json``."""
    chunked_loss: bool = True
    """Compute the loss through the output head a chunk of tokens at a time, recomputed in backward:
    the ``[tokens × vocabulary]`` logits never exist whole (SFT and the TRL trainers' log-probs)."""
    loss_chunk_tokens: int = 1024
    """Tokens per chunk of the chunked loss."""
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    eval_steps: int = 0
    """Evaluate the loss every N steps during training; 0 turns it off."""
    save_steps: int = 0
    """Write a checkpoint every N steps; 0 turns it off."""
    save_total_limit: int = 2
    report_to: list[str] = field(default_factory=list)
    """Loggers, e.g. ``["tensorboard"]``; event files land in the run directory."""
    optim: str = "adamw_torch"

    def validate(self) -> None:
        from ptrain import _hf_names

        if self.max_steps == 0 or self.max_steps < -1 or self.max_steps > 100_000_000:
            raise RecipeError("must be a positive number of steps (at most 100 million), or -1 to train for `epochs`", key="max_steps")
        if self.max_steps == -1:
            check_range(self, "epochs", 1e-6, 100_000, "with max_steps = -1 the run trains for this many epochs")
        check_range(self, "batch_size", 1, 65_536)
        check_range(self, "gradient_accumulation_steps", 1, 65_536)
        check_range(self, "max_length", 1, 1_048_576)
        check_range(self, "loss_chunk_tokens", 1, 1_048_576)
        check_range(self, "logging_steps", 1, 100_000_000)
        check_range(self, "eval_steps", 0, 100_000_000, "0 turns evaluation during training off")
        check_range(self, "save_steps", 0, 100_000_000, "0 turns checkpoints off")
        check_range(self, "save_total_limit", 1, 100_000)
        if not 0 < self.learning_rate <= 10:
            raise RecipeError(f"must be in (0, 10], got {self.learning_rate:g}; typical values are 1e-5 to 1e-2", key="learning_rate")
        if not 0 <= self.warmup_ratio < 1:
            raise RecipeError("must be in [0, 1)", key="warmup_ratio")
        check_range(self, "weight_decay", 0, 10)
        check_range(self, "max_grad_norm", 0, 1e6, "0 turns gradient clipping off")
        check_name(self.lr_scheduler, "lr_scheduler", _hf_names.schedulers(), "learning-rate scheduler")
        check_name(self.optim, "optim", _hf_names.optimizers(), "optimizer")
        for i, logger in enumerate(self.report_to):
            check_name(logger, f"report_to[{i}]", _hf_names.loggers(), "logger")


@dataclass
class EvalSection:
    """``[eval]``: how the core measures the base and the trained model."""

    base: bool = True
    """Also evaluate the model before training, so improvement is visible."""
    max_samples: int = 100
    """Eval rows used for generation metrics (loss uses the whole eval split)."""
    max_new_tokens: int = 64
    metric: Literal["auto", "exact_match", "json_match", "numeric_match", "contains"] = "auto"
    """``auto``: each bundled task's own metric (numeric match for arithmetic, JSON match for AVRO),
    exact match otherwise."""
    batch_size: int = 16
    show_samples: int = 5

    def validate(self) -> None:
        check_range(self, "max_samples", 0, 10_000_000, "0 skips the generation metrics")
        check_range(self, "max_new_tokens", 1, 32_768)
        check_range(self, "batch_size", 1, 4096)
        check_range(self, "show_samples", 0, 1000)


@dataclass
class OutputSection:
    """``[output]``: where and what to write."""

    dir: str | None = None
    """Run directory; default ``runs/<recipe name>``."""
    overwrite: bool = False
    save_model: bool = True
    plots: bool = True
    report: bool = True
    """Write ``report.html``: the run's metrics, curves, chart, held-out samples, environment and recipe in one file."""
    resume: bool = False
    """Continue from the latest checkpoint when the run directory has one, as ``--resume`` does."""


FSDP_OPTIONS = ("full_shard", "shard_grad_op", "no_shard", "hybrid_shard", "hybrid_shard_zero2", "offload", "auto_wrap")
FSDP_CONFIG_KEYS = (
    "version", "min_num_params", "transformer_layer_cls_to_wrap", "auto_wrap_policy", "backward_prefetch",
    "forward_prefetch", "limit_all_gathers", "use_orig_params", "sync_module_states", "cpu_ram_efficient_loading",
    "activation_checkpointing", "cpu_offload", "state_dict_type", "reshard_after_forward",
)
FSDP_CONFIG_VALUES: dict[str, tuple[Any, ...]] = {
    "version": (1, 2),
    "auto_wrap_policy": ("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"),
    "state_dict_type": ("FULL_STATE_DICT", "SHARDED_STATE_DICT"),
}


@dataclass
class DistributedSection:
    """``[distributed]``: how several processes share training (``ptrain run --nproc N``, torchrun, accelerate).

    Read only when the run has more than one process; a single process ignores it.
    """

    backend: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    """``ddp``: data parallel; ``fsdp``: fully sharded data parallel; ``deepspeed``: ZeRO via ``deepspeed``."""
    ddp_backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Communication backend: ``auto`` is nccl on CUDA GPUs and gloo on CPU."""
    find_unused_parameters: bool = False
    fsdp: list[str] = field(default_factory=lambda: ["full_shard", "auto_wrap"])
    """FSDP options (TrainingArguments ``fsdp``): full_shard, shard_grad_op, no_shard, hybrid_shard,
    hybrid_shard_zero2, offload, auto_wrap."""
    fsdp_config: dict[str, Any] = field(default_factory=dict)
    """Passed through as TrainingArguments ``fsdp_config``; keys as in transformers (``fsdp_`` prefix optional)."""
    deepspeed: str | None = None
    """Path of a DeepSpeed JSON config (ZeRO stage, offload…); required with ``backend = "deepspeed"``."""
    timeout: int = 1800
    """Seconds a process waits in a collective for the others before it gives up (TrainingArguments
    ``ddp_timeout``): the bound on how long a run hangs when a process is stuck rather than gone."""

    def validate(self) -> None:
        for i, option in enumerate(self.fsdp):
            if option not in FSDP_OPTIONS:
                raise RecipeError(f"unknown FSDP option {option!r}{suggest(option, list(FSDP_OPTIONS))} (options: {', '.join(FSDP_OPTIONS)})", key=f"fsdp[{i}]")
        config = {}
        for key, value in self.fsdp_config.items():
            if key.removeprefix("fsdp_") not in FSDP_CONFIG_KEYS:
                raise RecipeError(f"unknown key{suggest(key.removeprefix('fsdp_'), list(FSDP_CONFIG_KEYS))} (known: {', '.join(FSDP_CONFIG_KEYS)})", key=f"fsdp_config.{key}")
            config[key.removeprefix("fsdp_")] = (key, value)
        self._check_fsdp_config(config)
        from ptrain._distributed import accelerator_visible, fsdp_cpu_problem

        problem = fsdp_cpu_problem(self)
        if problem and not accelerator_visible():
            raise RecipeError(problem[1] + " (this machine has no GPU)", key=problem[0])
        if self.timeout < 1:
            raise RecipeError("must be a number of seconds >= 1", key="timeout")
        if self.backend == "deepspeed":
            if not self.deepspeed:
                raise RecipeError('backend = "deepspeed" needs deepspeed = "path/to/ds_config.json"', key="deepspeed")
            path = Path(self.deepspeed).expanduser()
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                reason = "not found" if isinstance(err, FileNotFoundError) else f"not readable JSON ({err})"
                raise RecipeError(f"DeepSpeed config {self.deepspeed!r} is {reason}; give a JSON file", key="deepspeed") from None
            if not isinstance(config, dict):
                raise RecipeError(f"DeepSpeed config {self.deepspeed!r} must be a JSON object", key="deepspeed")
        elif self.deepspeed:
            raise RecipeError(f'set only with backend = "deepspeed" (backend is {self.backend!r})', key="deepspeed")

    def _check_fsdp_config(self, config: dict[str, tuple[str, Any]]) -> None:
        """Values transformers 5 would refuse only once the model is loaded, refused here."""
        for name, allowed in FSDP_CONFIG_VALUES.items():
            if name in config and config[name][1] not in allowed:
                key, value = config[name]
                raise RecipeError(f"{value!r} is not one of {', '.join(map(repr, allowed))}", key=f"fsdp_config.{key}")
        version = config.get("version", (None, 2))[1]
        strategies = [o for o in self.fsdp if o not in ("offload", "auto_wrap")]
        if len(strategies) > 1:
            raise RecipeError(f"names {' and '.join(strategies)}: keep one sharding strategy", key="fsdp")
        if version == 2 and strategies and strategies[0] not in ("full_shard", "shard_grad_op"):
            raise RecipeError(
                f"{strategies[0]!r} exists only in FSDP1; FSDP2 (the default) has full_shard and shard_grad_op; "
                "use one of them, or set fsdp_config.version = 1 (deprecated by transformers)",
                key="fsdp",
            )
