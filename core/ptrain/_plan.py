"""Training memory predicted before anything loads: ``ptrain plan``, the top of ``ptrain run``, and
``metrics.json["train"]["predicted"]`` beside what the run measured.

The prediction uses the one memory definition (:mod:`ptrain._memory`) and the runs' own breakdown:
``weights``, ``gradients``, ``optimizer_state`` and ``activations_and_other``, each the sum of named
terms. Every method of the recipe contributes through the ``plan_memory`` hook (recipe order, the
core's last): methods first set the plan's shares (trainable parameters, a 4-bit base, more sequences
per step) and add their own terms (a teacher, a reference model, generations); the core then adds the
model's weights, gradients, optimizer state, activations, logits and the runtime's own memory.

The formulas (bytes; ``P`` parameters, ``T`` trainable parameters, ``B`` sequences per step, ``S``
tokens per sequence, ``L`` layers, ``H`` hidden size, ``I`` MLP width, ``V`` vocabulary):

* weights ``P x dtype`` (a 4-bit base: attention and MLP projections at 0.5 byte plus block scales,
  the rest at the compute dtype); adapters ``T x 4``;
* gradients ``T x dtype``; optimizer state ``T x 8`` for AdamW (2 moments), 2 for 8-bit, 0 for SGD;
* activations ``B S L (ACT_H H + ACT_KV K + ACT_I I) x act bytes`` (``K`` the keys' width, ``kv heads x
  head dim``) without gradient checkpointing; with it
  ``B S L H`` (the layers' inputs) plus one layer's full activations. Gradients are allocated as
  backward frees activations, so the activation term is net of the gradients (as the runs' breakdown,
  whose remainder is the peak less weights, gradients and optimizer state);
* logits ``LOGIT_COPIES x B S V x 4`` (the fp32 logits, their log-softmax, copies and gradients), or
  under ``train.chunked_loss`` ``CHUNK_COPIES x`` one chunk's tokens ``x V x 4``;
* runtime: on CPU a measured constant for what the training loop allocates beside tensors (libraries
  imported after the baseline, the trainer, allocator slack); on CUDA 0 (allocated memory only).

CPU figures are calibrated on this machine (bench/plan_vs_measured.py); GPU figures are arithmetic
only: the terms are given so a GPU run can check them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ptrain._errors import UsageError
from ptrain._facts import ModelFacts, model_facts

if TYPE_CHECKING:
    from ptrain._recipe import Recipe

MIB = 2**20
KINDS = ("weights", "gradients", "optimizer_state", "activations_and_other")
CPU_BASELINE_MB = 480.0
"""Resident memory of a process that imported torch, transformers, trl and peft (NOTES.md): the CPU baseline."""
CPU_RUNTIME_MB = 105.0
"""What a CPU training run allocates above the baseline beside its tensors (libraries imported after the
baseline, the trainer, allocator slack): fitted on the tiny recipes, where tensors are a few MiB. The same
recipes measured 100-120 MiB of it in different sessions (bench/README.md): about ±10 % of a tiny run's total."""
ACT_H, ACT_KV, ACT_I = 9, 2, 4
"""Values autograd saves per token and layer of a llama-family decoder: ``ACT_H`` of hidden width (the norms'
inputs and outputs, queries, attention output, the residual stream), ``ACT_KV`` of the keys' width (keys and
values after the rotary embedding) and ``ACT_I`` of MLP width (gate, up, the activation, their product).
Counted, not fitted: ``torch.autograd.graph.saved_tensors_hooks`` over a forward of four shapes (SmolLM2-135M,
TinyLlama-1.1B, the tiny llama, a multi-head 256-wide model) gives ``9 H + 2 K + 4 I`` within 1-3 % of
each (bench/README.md, plan_vs_measured.py)."""
FROZEN_H, FROZEN_I = 4.5, 3
"""The same count when nothing inside the layers trains (prompt tuning, prefix tuning, P-tuning): a frozen
projection's input is not kept for its weight's gradient, so ``4.5 H + 2 K + 3 I`` (counted the same way,
within 1 % on three shapes)."""
LOGIT_COPIES = 9
"""Vocabulary-wide fp32 tensors per token alive at the peak: the logits, their log-softmax, the trainer's
shifted copy and entropy, and their gradients. Fitted on SmolLM2-135M with gradient checkpointing, where
the logits dominate."""
CHUNK_COPIES = 3
"""With ``train.chunked_loss``: one chunk's logits, their softmax and gradient (recomputed in backward)."""
FOUR_BIT_BYTES = 0.5 + 4 / 64
"""Bytes per 4-bit parameter: the packed value and a float32 absmax per block of 64."""


@dataclass
class MemoryTerm:
    """One named part of a predicted training peak, in MiB, in one of the runs' breakdown kinds."""

    name: str
    mib: float
    kind: str
    """``weights``, ``gradients``, ``optimizer_state`` or ``activations_and_other`` (as ``memory_breakdown_mb``)."""
    formula: str = ""
    """How it was computed, so a run on other hardware can check it."""
    method: str = "core"


@dataclass
class TrainingPlan:
    """What a recipe's training will hold in memory, built by the ``plan_memory`` hook.

    Methods read ``recipe`` and ``facts`` and, before the core's terms are computed, set the shares
    below and add terms with :meth:`add`.
    """

    recipe: Recipe
    facts: ModelFacts
    device: str = "cpu"
    """``cpu`` or ``cuda``: the device the figures are for."""
    sequence_length: int = 0
    """Tokens per training sequence: ``train.max_length``, or the data's longest when the run knows it."""
    prompt_length: int = 0
    """Tokens per prompt (what generation starts from)."""
    sequences_factor: float = 1.0
    """Sequences per step relative to ``train.batch_size``: 2 for chosen + rejected pairs."""
    trainable_parameters: int | None = None
    """Parameters that train; None: the whole model (full fine-tuning). An adapter method sets its adapters' count."""
    adds_parameters: bool = False
    """The trainable parameters are new ones (adapters), held beside the model's weights."""
    own_logits: float | None = None
    """Set by a method whose trainer computes the whole ``[tokens x vocabulary]`` logits itself rather than through
    the chunked head (``use_chunked_loss``): the vocabulary-wide fp32 tensors per token alive at its peak (TRL's
    ORPO, CPO and SimPO: about 4.5, measured). None: the core's (one chunk's under ``train.chunked_loss``)."""
    layers_train: bool = True
    """Weights inside the decoder layers train (full fine-tuning, LoRA and the other adapters on projections), so the
    projections' inputs are kept for backward; False for methods that train only inputs or prefixes."""
    base_bits: int | None = None
    """4 when the base model's linear layers are loaded in 4 bits (qlora)."""
    vocab_logits: bool = True
    """The model outputs vocabulary logits (False for a reward model's one score)."""
    terms: list[MemoryTerm] = field(default_factory=list)

    data_sequence_length: int = field(init=False, default=0)
    """Tokens per sequence of the data, before any method lengthened it (virtual tokens, completions)."""

    def __post_init__(self) -> None:
        self.data_sequence_length = self.sequence_length

    def add(self, name: str, mib: float, kind: str = "activations_and_other", formula: str = "", method: str = "") -> None:
        """Add a term (``mib`` MiB of ``kind``); a method names itself in ``method``."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.terms.append(MemoryTerm(name, round(float(mib), 1), kind, formula, method or "core"))

    # ---------------------------------------------------------------- helpers for methods

    @property
    def tokens_per_step(self) -> float:
        """Tokens in one forward pass: ``train.batch_size x sequences_factor x sequence_length``."""
        return self.recipe.train.batch_size * self.sequences_factor * self.sequence_length

    @property
    def compute_bytes(self) -> int:
        """Bytes per activation value: 2 under mixed precision on a GPU, else the model's dtype."""
        if self.device == "cuda" and self.recipe.train.precision in ("auto", "bf16", "fp16"):
            return 2
        return self.weight_bytes

    @property
    def autocast(self) -> bool:
        """Training runs under bf16 (or fp16) autocast: on a GPU with ``train.precision`` auto, bf16 or fp16; on a CPU
        with bf16, or auto where the CPU computes bf16 faster (its flags and the cached matmul probe; nothing measured)."""
        precision = self.recipe.train.precision
        if self.device == "cuda":
            return precision in ("auto", "bf16", "fp16")
        if precision == "auto":
            from ptrain._precision import cpu_bf16_expected

            return cpu_bf16_expected(self.facts.total_parameters)
        return precision == "bf16"

    @property
    def weight_bytes(self) -> int:
        """Bytes per parameter as loaded (``model.dtype``; ``auto`` is float32 on CPU, bfloat16 on a GPU)."""
        dtype = self.recipe.model.dtype
        if dtype == "auto":
            return 2 if self.device == "cuda" else 4
        return 2 if dtype in ("bfloat16", "float16") else 4

    def model_bytes(self, facts: ModelFacts, bits: int | None = None) -> float:
        """Bytes of a model's weights at the plan's dtype (``bits=4`` or 8: its linear layers quantized)."""
        whole = facts.total_parameters * self.weight_bytes
        if bits == 4:
            return whole - facts.linear_parameters * (self.weight_bytes - FOUR_BIT_BYTES)
        if bits == 8:
            return whole - facts.linear_parameters * (self.weight_bytes - 1 - 4 / facts.hidden_size)
        return whole

    def forward_mib(self, facts: ModelFacts, sequences: float | None = None, length: int | None = None) -> float:
        """MiB a forward pass without gradients holds at its peak: one layer's activations and the logits
        (under ``train.chunked_loss``, one chunk's: the reference and the teacher go through the chunked head too)."""
        tokens = (sequences if sequences is not None else self.recipe.train.batch_size * self.sequences_factor) * (length or self.sequence_length)
        logits = min(tokens, self.recipe.train.loss_chunk_tokens) if getattr(self.recipe.train, "chunked_loss", False) else tokens
        layer = tokens * activation_values(facts) * self.compute_bytes
        return (layer + logits * facts.vocab_size * 4 * 2) / MIB

    def add_reference_model(self, method: str, copy: bool = False) -> None:
        """Add a preference or RL method's reference model: a frozen copy of the model as loaded, unless
        the model trains adapters (then the reference is the model with its adapter disabled: no memory)
        and ``copy`` is False. Call it after the other methods set their shares (a ``wrapper=True``
        implementation, after ``yield``)."""
        if self.adds_parameters and not copy:
            self.add("reference model (adapter disabled)", 0.0, "weights", "the model itself", method=method)
        else:
            self.add("reference model", self.model_bytes(self.facts, self.base_bits) / MIB, "weights", "a frozen copy of the model", method=method)
        # The reference's forward (no gradients) runs before the policy's in TRL's trainers: its transient peak is
        # freed before the step's peak, so it adds no term (measured on the tiny dpo/kto runs: counting it
        # over-predicted them by 16-20 %; without it they are within 3 %, bench/README.md)

    # ---------------------------------------------------------------- results

    def breakdown(self) -> dict[str, float]:
        parts = dict.fromkeys(KINDS, 0.0)
        for term in self.terms:
            parts[term.kind] += term.mib
        return {k: round(v, 1) for k, v in parts.items()}

    @property
    def above_baseline_mb(self) -> float:
        return round(sum(t.mib for t in self.terms), 1)

    @property
    def baseline_mb(self) -> float:
        return CPU_BASELINE_MB if self.device == "cpu" else 0.0

    @property
    def peak_mb(self) -> float:
        return round(self.baseline_mb + self.above_baseline_mb, 1)

    def step_flops(self) -> float:
        """Floating-point operations of one optimizer step: ``2 x`` matmul parameters per token forward, the same
        again for the activations' gradients, the trainable ones' weight gradients, a second forward under
        gradient checkpointing, and attention's scores and weighted sums (``4 S H`` per token and layer, x3)."""
        facts, train = self.facts, self.recipe.train
        matmul = facts.linear_parameters + (facts.vocab_size * facts.hidden_size if self.vocab_logits else 0)  # a classifier has no vocabulary head
        trainable = matmul if self.trainable_parameters is None else self.trainable_parameters
        passes = 2 * matmul + 2 * matmul + 2 * trainable + (2 * matmul if train.gradient_checkpointing else 0)
        attention = 3 * 4 * self.sequence_length * facts.hidden_size * facts.layers
        return self.tokens_per_step * train.gradient_accumulation_steps * (passes + attention)

    def step_seconds(self) -> tuple[float, float] | None:
        """``(seconds per optimizer step, the matmul GFLOP/s it assumes)`` from this machine's cached matmul
        throughput (``ptrain plan --measure-speed``), or None when none is cached or the plan is for another device."""
        if self.device != this_device():
            return None
        measured = cached_matmul_gflops()
        if not measured:
            return None
        return self.step_flops() / (measured * 1e9), measured

    def as_metrics(self) -> dict[str, Any]:
        """What ``metrics.json["train"]["predicted"]`` holds."""
        timing = self.step_seconds()
        return {
            "step_gflop": round(self.step_flops() / 1e9, 1),
            "time_per_step_s": round(timing[0], 3) if timing else None,
            "device": self.device,
            "peak_memory_mb": self.peak_mb,
            "memory_above_baseline_mb": self.above_baseline_mb,
            "memory_breakdown_mb": self.breakdown(),
            "terms_mb": {f"{t.method}: {t.name}" if t.method != "core" else t.name: t.mib for t in self.terms},
            "sequence_length": self.sequence_length,
            "data_sequence_length": self.data_sequence_length,
            "prompt_length": self.prompt_length,
        }


# -------------------------------------------------------------------- the core's terms


def core_terms(plan: TrainingPlan) -> None:
    """The core's part of ``plan_memory``: weights, gradients, optimizer state, activations, logits, runtime."""
    recipe, facts = plan.recipe, plan.facts
    train = recipe.train
    bytes_ = plan.weight_bytes
    base = plan.model_bytes(facts, plan.base_bits)
    base_formula = f"{facts.total_parameters:,} parameters x {bytes_} B"
    if plan.base_bits:
        base_formula = f"{facts.linear_parameters:,} projections x {FOUR_BIT_BYTES:g} B + the rest x {bytes_} B"
    if not plan.vocab_logits and facts.tied_embeddings is False:
        base -= facts.parameters.get("head", 0) * bytes_  # a classifier drops the LM head
    plan.add("model weights", base / MIB, "weights", base_formula)
    trainable = facts.total_parameters if plan.trainable_parameters is None else plan.trainable_parameters
    grad_bytes = bytes_ if plan.trainable_parameters is None else 4
    if plan.adds_parameters:
        plan.add("adapter weights", trainable * 4 / MIB, "weights", f"{trainable:,} trainable x 4 B")
    plan.add("gradients", trainable * grad_bytes / MIB, "gradients", f"{trainable:,} trainable x {grad_bytes} B")
    state = optimizer_bytes(train.optim, grad_bytes)
    plan.add("optimizer state", trainable * state / MIB, "optimizer_state", f"{trainable:,} trainable x {state:g} B ({train.optim})")

    tokens = plan.tokens_per_step
    act = plan.compute_bytes
    per_layer = activation_values(facts, frozen=not plan.layers_train)
    if train.gradient_checkpointing:
        stored = tokens * facts.layers * facts.hidden_size * act + tokens * per_layer * act
        formula = f"{tokens:,.0f} tokens x ({facts.layers} layers x {facts.hidden_size} + one layer's {per_layer}) x {act} B (checkpointed)"
    else:
        stored = tokens * facts.layers * per_layer * act
        h, i = (ACT_H, ACT_I) if plan.layers_train else (FROZEN_H, FROZEN_I)
        formula = (f"{tokens:,.0f} tokens x {facts.layers} layers x ({h:g}x{facts.hidden_size} + {ACT_KV}x{facts.kv_heads * facts.head_dim}"
                   f" + {i}x{facts.intermediate_size}) x {act} B" + ("" if plan.layers_train else " (frozen layers)"))
    gradients = trainable * grad_bytes
    if gradients > 0.05 * stored:
        formula += " less the gradients, allocated as backward frees activations"
    plan.add("activations", max(stored - gradients, 0.0) / MIB, "activations_and_other", formula)
    if plan.vocab_logits and plan.own_logits is not None:
        plan.add(
            "logits", plan.own_logits * tokens * facts.vocab_size * 4 / MIB, "activations_and_other",
            f"{plan.own_logits:g} x {tokens:,.0f} tokens x {facts.vocab_size:,} vocabulary x 4 B (the trainer's own loss, not the chunked head)",
        )
    elif plan.vocab_logits and getattr(train, "chunked_loss", False):
        chunk = min(tokens, train.loss_chunk_tokens)  # the chunked loss holds one chunk's logits at a time
        plan.add(
            "logits", CHUNK_COPIES * chunk * facts.vocab_size * 4 / MIB, "activations_and_other",
            f"{CHUNK_COPIES} x {chunk:,.0f} tokens of one chunk (train.chunked_loss) x {facts.vocab_size:,} vocabulary x 4 B",
        )
    elif plan.vocab_logits:
        plan.add(
            "logits", LOGIT_COPIES * tokens * facts.vocab_size * 4 / MIB, "activations_and_other",
            f"{LOGIT_COPIES} x {tokens:,.0f} tokens x {facts.vocab_size:,} vocabulary x 4 B",
        )
    if plan.device == "cpu":
        plan.add("runtime", CPU_RUNTIME_MB, "activations_and_other", "measured constant on CPU (libraries, trainer, allocator)")


def activation_values(facts: ModelFacts, frozen: bool = False) -> float:
    """Values saved for backward per token and layer (``ACT_H H + ACT_KV K + ACT_I I``; ``frozen``: no weight in the
    layers trains, ``FROZEN_H H + ACT_KV K + FROZEN_I I``)."""
    h, i = (FROZEN_H, FROZEN_I) if frozen else (ACT_H, ACT_I)
    return h * facts.hidden_size + ACT_KV * facts.kv_heads * facts.head_dim + i * facts.intermediate_size


def optimizer_bytes(optim: str, param_bytes: int) -> float:
    """Optimizer state bytes per trainable parameter."""
    name = optim.lower()
    if "sgd" in name:
        return 0.0
    if "adafactor" in name:
        return 0.1 * param_bytes  # factored second moments: rows + columns
    if "8bit" in name:
        return 2.0
    if "lion" in name:
        return float(param_bytes)
    return 2.0 * param_bytes


# -------------------------------------------------------------------- building a plan


def plan_training(
    recipe: Recipe,
    device: str | None = None,
    sequence_length: int | None = None,
    prompt_length: int | None = None,
) -> TrainingPlan:
    """The predicted training memory of ``recipe`` from its model's facts and every method's terms.

    :param device: ``cpu`` or ``cuda``; default this machine's (told without importing torch).
    :param sequence_length: tokens per sequence; default ``train.max_length`` (padding reaches at most that).
    :raise FactsUnavailable: the model's facts cannot be known before loading.
    """
    from ptrain._facts import FactsUnavailable

    try:
        facts = model_facts(recipe)
    except FactsUnavailable as err:
        raise FactsUnavailable(f"model.name: {err}; ptrain plan needs the model's config.json") from None
    assert facts is not None
    length = sequence_length or recipe.train.max_length
    if facts.max_positions:
        length = min(length, facts.max_positions)
    plan = TrainingPlan(
        recipe=recipe, facts=facts, device=device or this_device(),
        sequence_length=length, prompt_length=prompt_length or max(1, length // 2),
    )
    recipe.plugins.hook.plan_memory(plan=plan)
    return plan


SAMPLE_ROWS = 512


def sequence_lengths(dataset: Any, tokenizer: Any, max_length: int) -> tuple[int, int]:
    """``(longest sequence, longest prompt)`` in tokens over the first rows of a training dataset, capped at
    ``max_length``: batches are padded to their longest row, so the longest is what a step holds.
    A pair's sequence is its prompt and its longer answer; a streamed dataset counts ``max_length``."""
    if not hasattr(dataset, "__len__"):
        return max_length, max_length // 2
    rows = dataset.select(range(min(len(dataset), SAMPLE_ROWS))) if hasattr(dataset, "select") else list(dataset)[:SAMPLE_ROWS]
    longest = prompt_longest = 1
    for row in rows:
        prompt = str(row.get("prompt") or "")
        answers = [str(row[k]) for k in ("completion", "chosen", "rejected") if isinstance(row.get(k), str)]
        prompt_tokens = len(tokenizer(prompt, add_special_tokens=True)["input_ids"]) if prompt else 0
        answer_tokens = max((len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers), default=0)
        if not prompt and "text" in row:
            answer_tokens = len(tokenizer(str(row["text"]))["input_ids"])
        longest = max(longest, prompt_tokens + answer_tokens + 1)
        prompt_longest = max(prompt_longest, prompt_tokens)
    return min(longest, max_length), min(prompt_longest, max_length)


def _speed_file() -> Any:
    from ptrain._models import cache_dir

    return cache_dir() / "facts" / "matmul.json"


def _machine_key() -> str:
    import os
    import platform

    threads = os.environ.get("OMP_NUM_THREADS") or str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    return f"{this_device()}|{platform.machine()}|{platform.processor() or ''}|threads={threads}"


def cached_matmul_gflops() -> float | None:
    """This machine's measured fp32 matmul throughput in GFLOP/s, if ``ptrain plan --measure-speed`` cached one."""
    import json

    try:
        return float(json.loads(_speed_file().read_text(encoding="utf-8"))[_machine_key()]["gflops"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def measure_matmul_gflops(size: int = 1024, seconds: float = 1.5) -> float:
    """Measure and cache this machine's fp32 matmul throughput (imports torch; about two seconds)."""
    import json
    import time

    import torch

    device = "cuda" if this_device() == "cuda" else "cpu"
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.matmul(a, b)  # warm-up
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.matmul(a, b)
        runs += 1
    if device == "cuda":
        torch.cuda.synchronize()
    gflops = 2 * size**3 * runs / (time.perf_counter() - started) / 1e9
    path = _speed_file()
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    known[_machine_key()] = {"gflops": round(gflops, 1), "size": size, "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    from ptrain._artifacts import write_json

    write_json(path, known)
    return gflops


def this_device() -> str:
    """``cuda`` when a CUDA GPU is visible, told without importing torch (``nvidia-smi``-free: the device files)."""
    import os
    import sys

    if "torch" in sys.modules:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return "cpu"
    return "cuda" if os.path.exists("/dev/nvidia0") else "cpu"


def parse_device(text: str | None) -> tuple[str | None, float | None]:
    """``--device``: ``cpu`` (this machine's memory), ``cuda``, or a GPU by memory size (``24GiB``, ``80GB``)
    -> (device, memory limit in MiB or None)."""
    if text is None:
        return None, None
    value = text.strip().lower()
    if value == "cpu":
        return "cpu", _system_memory_mb()
    if value in ("cuda", "gpu"):
        return "cuda", None
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(gib|gb|g|mib|mb|m)", value)
    if not found:
        raise UsageError(f"--device {text!r}: give cpu, or a GPU by its memory (e.g. 24GiB, 80GB)")
    number, unit = float(found.group(1)), found.group(2)
    mib = number * 1024 if unit.startswith("g") else number
    return "cuda", mib


def _system_memory_mb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# -------------------------------------------------------------------- what shrinks it

LEVERS: tuple[tuple[str, Any, str], ...] = (
    ("train.gradient_checkpointing", True, "activations"),
    ("train.batch_size", "half", "activations"),
    ("train.max_length", "half", "activations"),
    ("model.dtype", "bfloat16", "model weights"),
    ("train.optim", "adamw_8bit", "optimizer state"),
)
"""Recipe keys tried when a plan does not fit: (key, value, the term it mainly shrinks)."""


def shrink_advice(recipe: Recipe, plan: TrainingPlan, limit_mb: float) -> str:
    """One line: the largest term, and the recipe key that shrinks that term most (ties: the whole plan most),
    with what the whole plan saves."""
    import dataclasses

    largest = max(plan.terms, key=lambda t: t.mib)
    best: tuple[float, float, str] | None = None
    for key, value, _ in LEVERS:
        section_name, field_name = key.split(".")
        section = getattr(recipe, section_name)
        current = getattr(section, field_name)
        new = max(1, current // 2) if value == "half" else value
        if new == current:
            continue
        changed = _with_section(recipe, section_name, dataclasses.replace(section, **{field_name: new}))
        length = min(plan.sequence_length, new) if key == "train.max_length" else plan.sequence_length
        other = plan_training(changed, device=plan.device, sequence_length=length, prompt_length=plan.prompt_length)
        shrunk = largest.mib - sum(t.mib for t in other.terms if (t.name, t.method) == (largest.name, largest.method))
        saving = plan.above_baseline_mb - other.above_baseline_mb
        if saving > 0 and (best is None or (shrunk, saving) > best[:2]):
            shown = str(new).lower() if isinstance(new, bool) else (repr(new) if isinstance(new, str) else str(new))
            best = (shrunk, saving, f"{key} = {shown}")
    over = plan.peak_mb - limit_mb
    line = f"predicted peak {_gib(plan.peak_mb)} exceeds the device's {_gib(limit_mb)} by {_gib(over)}; largest term: {largest.name} ({_gib(largest.mib)})"
    if best is None:
        return line + "; no single recipe key shrinks it (use a smaller model, or an adapter method such as lora)"
    return line + f"; {best[2]}: -{_gib(best[1])}"


def _with_section(recipe: Recipe, name: str, section: Any) -> Recipe:
    import copy

    changed = copy.copy(recipe)
    changed.sections = {**recipe.sections, name: section}
    return changed


def _gib(mib: float) -> str:
    return f"{mib / 1024:.2f} GiB" if abs(mib) >= 1024 else f"{mib:.0f} MiB"
