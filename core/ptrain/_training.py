"""Training for methods that build a trainer: uniform arguments (with other methods' contributions), progress, Ctrl-C."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
import statistics
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ptrain._run import Run


def cuda_facts() -> tuple[bool, bool]:
    """``(a CUDA GPU is usable, it computes in bfloat16)`` for this process."""
    import torch

    cuda = torch.cuda.is_available()
    return cuda, cuda and torch.cuda.is_bf16_supported()


def precision_flags(
    precision: str, *, cuda: bool | None = None, bf16: bool | None = None, cpu_bf16: bool | None = None, parameters: int | None = None
) -> dict[str, bool]:
    """``bf16``/``fp16`` flags for TrainingArguments: mixed precision only where the hardware has it.

    ``cuda`` and ``bf16`` describe the GPU (detected when left out): ``auto`` is bf16 on a GPU that
    has it (Ampere and later), fp16 on an older one. On a CPU ``bf16`` is autocast, and ``auto`` is
    bf16 where the CPU computes it measurably faster (``cpu_bf16``, probed when left out: see
    :mod:`ptrain._precision`), fp32 elsewhere; fp16 needs a GPU.
    """
    from ptrain._precision import choose_precision

    if cuda is None or bf16 is None:
        cuda, bf16 = cuda_facts()
    return choose_precision(precision, cuda=cuda, bf16=bf16, cpu_bf16=cpu_bf16, parameters=parameters).flags()


def run_precision(run: Run) -> Any:
    """The run's :class:`ptrain._precision.PrecisionChoice`, decided once (logged and saved in ``env.json``)."""
    from ptrain._precision import choose_precision

    choice = getattr(run._core, "precision", None)
    if choice is None:
        cuda, bf16 = cuda_facts()
        parameters = sum(p.numel() for p in run.model.parameters()) if run.model is not None else None
        choice = choose_precision(run.recipe.train.precision, cuda=cuda, bf16=bf16, parameters=parameters)
        run._core.precision = choice
        log.info("precision: %s (train.precision = %r: %s)", choice.chosen, choice.requested, choice.reason)
        env = run.dir / "env.json"
        if run.is_main_process and env.is_file():
            import json

            from ptrain._artifacts import write_json

            facts = json.loads(env.read_text(encoding="utf-8"))
            facts["precision"] = {"requested": choice.requested, "chosen": choice.chosen, "reason": choice.reason}
            write_json(env, facts)
    return choice


def world_size() -> int:
    """Processes taking part in this run (``WORLD_SIZE``, set by torchrun and accelerate launch)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def choose_ddp_backend(requested: str, *, cuda: bool) -> str:
    """The communication backend: ``auto`` is nccl between CUDA GPUs, gloo between CPU processes."""
    if requested == "auto":
        return "nccl" if cuda else "gloo"
    if requested == "nccl" and not cuda:
        from ptrain._errors import RecipeError

        raise RecipeError("distributed.ddp_backend = 'nccl' needs CUDA GPUs; use 'gloo' (or 'auto') on CPU")
    return requested


def distributed_arguments(run: Run) -> dict[str, Any]:
    """TrainingArguments fields for ``[distributed]``; empty for a single process."""
    import importlib.util

    import torch

    from ptrain._errors import RecipeError

    if world_size() <= 1:
        return {}
    section = run.recipe.distributed
    ddp_backend = choose_ddp_backend(section.ddp_backend, cuda=torch.cuda.is_available())
    kwargs: dict[str, Any] = {
        "ddp_backend": ddp_backend, "ddp_find_unused_parameters": section.find_unused_parameters, "ddp_timeout": section.timeout,
    }
    if section.backend == "fsdp":
        from ptrain._distributed import fsdp_arguments, fsdp_cpu_problem

        problem = fsdp_cpu_problem(section)
        if problem and not torch.cuda.is_available():
            raise RecipeError(problem[1], key=f"distributed.{problem[0]}")
        kwargs.update(fsdp_arguments(section))
    elif section.backend == "deepspeed":
        if importlib.util.find_spec("deepspeed") is None:
            raise RecipeError("distributed.backend = 'deepspeed' needs the deepspeed package (pip install deepspeed)")
        kwargs["deepspeed"] = os.path.expanduser(section.deepspeed)
    return kwargs


def training_arguments(run: Run, cls: type | None = None, **overrides: Any) -> Any:
    """``cls`` (``TrainingArguments`` or a TRL config such as ``SFTConfig``) filled from ``[train]``.

    Every method that builds a trainer should use this, so that the same recipe keys mean the
    same thing whatever the method; ``overrides`` sets the method's own fields (and win over
    everything below, except a conflict with another method's ``training_setup``, an error).
    Fields ``cls`` does not have are left out. What it sets, field by field:

    ===============================  ==============================================================
    from the recipe                  ``max_steps`` ← train.max_steps; ``num_train_epochs`` ← train.epochs;
                                     ``per_device_train_batch_size`` ← train.batch_size;
                                     ``per_device_eval_batch_size`` ← eval.batch_size;
                                     ``gradient_accumulation_steps``, ``learning_rate``, ``weight_decay``,
                                     ``max_grad_norm``, ``gradient_checkpointing`` (and
                                     ``activation_checkpointing`` where the class has it), ``logging_steps``,
                                     ``save_total_limit``, ``optim`` ← the train keys of the same names;
                                     ``lr_scheduler_type`` ← train.lr_scheduler; ``warmup_steps`` ←
                                     train.warmup_ratio (a fraction below 1 is a ratio);
                                     ``eval_strategy``/``eval_steps`` ← train.eval_steps (0: "no");
                                     ``save_strategy``/``save_steps`` ← train.save_steps (0: "no");
                                     ``report_to`` ← train.report_to ("none" when empty);
                                     ``seed`` and ``data_seed`` ← seed; ``bf16``/``fp16`` ← train.precision
                                     (auto: bf16 on a GPU that has it, fp16 on an older GPU, fp32 on CPU)
    from the run                     ``output_dir`` = RUN/checkpoints, ``logging_dir`` = RUN/logs
    always                           ``disable_tqdm`` = True (the core draws progress),
                                     ``dataloader_num_workers`` = 0, ``use_cpu`` = no CUDA GPU
    with several processes           ``ddp_backend``, ``ddp_find_unused_parameters``, ``ddp_timeout``, and
                                     FSDP or DeepSpeed fields ← [distributed]
    other methods                    every ``TrainingSetup.arguments`` of the recipe's ``training_setup``
    ===============================  ==============================================================

    It does not turn on the trainer's own token counting (``include_num_input_tokens_seen``): the
    core counts the tokens of every batch ``training_step`` receives, for ``train.tokens_per_s``, with
    any trainer.
    """
    import torch
    from transformers import TrainingArguments

    cls = cls or TrainingArguments
    train = run.recipe.train
    report_to = list(train.report_to) or "none"
    kwargs: dict[str, Any] = {
        "output_dir": str(run.dir / "checkpoints"),
        "max_steps": train.max_steps,
        "num_train_epochs": train.epochs,
        "per_device_train_batch_size": train.batch_size,
        "per_device_eval_batch_size": run.recipe.eval.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "learning_rate": train.learning_rate,
        "lr_scheduler_type": train.lr_scheduler,
        "warmup_steps": train.warmup_ratio,
        "weight_decay": train.weight_decay,
        "max_grad_norm": train.max_grad_norm,
        "gradient_checkpointing": train.gradient_checkpointing,
        "logging_steps": train.logging_steps,
        "eval_strategy": "steps" if train.eval_steps else "no",
        "eval_steps": train.eval_steps or None,
        "save_strategy": "steps" if train.save_steps else "no",
        "save_steps": train.save_steps or 500,
        "save_total_limit": train.save_total_limit,
        "report_to": report_to,
        "logging_dir": str(run.dir / "logs"),
        "seed": run.recipe.seed,
        "data_seed": run.recipe.seed,
        "disable_tqdm": True,
        "optim": train.optim,
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": 0,
        **run_precision(run).flags(),
        **distributed_arguments(run),
    }
    contributed = contributed_arguments(run)
    for name, value in contributed.items():
        if name in overrides and overrides[name] != value:
            from ptrain._errors import RecipeError

            who = next(m for m, setup in run._core.setup if name in setup.arguments)
            raise RecipeError(
                f"method {who!r} sets training argument {name!r} = {value!r}, and {run.recipe.trainer_owner!r}, which builds "
                f"the trainer, sets it to {overrides[name]!r}; remove one of them from methods",
                key="methods",
            )
    kwargs.update(contributed)
    if "tensorboard" in train.report_to:
        # transformers >= 5 reads the TensorBoard directory from the environment, not from the arguments
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run.dir / "logs")
    names = {f.name for f in dataclasses.fields(cls)}
    if "activation_checkpointing" in names:  # transformers >= 5.x renamed it; TRL configs still default the old name to True
        kwargs["activation_checkpointing"] = kwargs["gradient_checkpointing"]
    unknown = sorted(set(contributed) - names)
    if unknown:
        from ptrain._errors import RecipeError

        who = next(m for m, setup in run._core.setup if unknown[0] in setup.arguments)
        raise RecipeError(
            f"method {who!r} sets training argument {unknown[0]!r}, which {cls.__name__} (built by {run.recipe.trainer_owner!r}) "
            "does not have; these methods do not compose",
            key="methods",
        )
    kwargs.update(overrides)
    return cls(**{k: v for k, v in kwargs.items() if k in names})


def batch_tokens(inputs: Any) -> int:
    """Real (not padding) tokens in one batch a trainer's ``training_step`` receives, whatever its layout:
    ``attention_mask`` (causal LM), else every ``*attention_mask`` (preference pairs: prompt, chosen,
    rejected), else ``input_ids`` (padding-free packing), else every ``*_mask`` (GRPO's prompt and
    completion masks); 0 when the batch is not a mapping of tensors."""
    if not hasattr(inputs, "keys"):
        return 0

    def total(keys: list[str], count: Any) -> int:
        return int(sum(count(inputs[k]) for k in keys if hasattr(inputs[k], "sum") and getattr(inputs[k], "dim", lambda: 0)() == 2))

    keys = list(inputs.keys())
    for chosen, count in (
        (["attention_mask"] if "attention_mask" in inputs else [], lambda t: t.sum().item()),
        ([k for k in keys if k.endswith("attention_mask")], lambda t: t.sum().item()),
        (["input_ids"] if "input_ids" in inputs else [], lambda t: t.numel()),
        ([k for k in keys if k.endswith("_mask")], lambda t: t.sum().item()),
    ):
        if chosen:
            return total(chosen, count)
    return 0


def count_tokens(trainer: Any) -> list[int]:
    """Count the tokens of every batch ``trainer`` trains on (a one-item list the count lands in), by wrapping
    its ``training_step``: tokens/s for any trainer, without asking it to count (which transformers does
    only for batches with ``input_ids``, warning at every step otherwise)."""
    counter = [0]
    step = getattr(trainer, "training_step", None)
    if step is None:
        return counter

    def counted(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        counter[0] += batch_tokens(inputs)
        return step(model, inputs, *args, **kwargs)

    trainer.training_step = counted
    return counter


def all_ranks_total(count: int, trainer: Any) -> int:
    """``count`` summed over the processes of a distributed run (itself in a single process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return count
    device = getattr(getattr(trainer, "args", None), "device", None) or "cpu"
    tensor = torch.tensor([count], dtype=torch.long, device=device)
    dist.all_reduce(tensor)
    return int(tensor.item())


def contributed_arguments(run: Run) -> dict[str, Any]:
    """Training arguments other methods contributed through ``training_setup`` (a conflict between two is a RecipeError)."""
    merged: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for method, setup in run._core.setup:
        for name, value in setup.arguments.items():
            if name in merged and merged[name] != value:
                from ptrain._errors import RecipeError

                raise RecipeError(
                    f"methods {owner[name]!r} and {method!r} set training argument {name!r} to {merged[name]!r} and {value!r}; "
                    "keep one of them",
                    key="methods",
                )
            merged[name], owner[name] = value, method
    return merged


def train_auxiliary(run: Run, trainer: Any, label: str) -> Any:
    """Train a second model within a run (a no-teacher baseline, a reward model for a later stage),
    with the core's progress display and Ctrl-C handling; returns ``trainer.train()``'s result."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ptrain._errors import RunInterrupted

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(progress_callback(run.console if run.is_main_process else None, label))
    stopper = interrupt_callback()
    trainer.add_callback(stopper)
    try:
        with cast_generation(trainer):
            result = trainer.train()
    finally:
        stopper.on_train_end(None, None, None)
    if stopper.stopped_by:
        raise RunInterrupted(f"{stopper.stopped_by}: stopped while training the {label}; it is trained again from the start on --resume")
    return result


@contextlib.contextmanager
def cast_generation(trainer: Any) -> Iterator[None]:
    """Around ``trainer.train()``: the trained model's ``generate`` under one autocast for the whole call while a
    mixed-precision Trainer trains, and after training the model's own ``forward`` and ``generate`` again.

    The Trainer's accelerator casts the model's forward, entering and leaving autocast at every decoding step, and each
    exit drops autocast's cache of bf16 weights: generation inside training (GRPO's rollouts, on-policy distillation's
    samples) cast every weight again for every token, slower than fp32 on a CPU (``bench/generation_autocast.py``:
    the 7-layer SmolLM2 student, 8 x 80 tokens, 3.21 s cast per step, 2.77 s fp32, 1.48 s under one autocast). An
    autocast around the call keeps the cache for its length.

    Accelerate keeps its autocast wrapper on the forward after training: the final evaluation would then measure the
    model in another precision than the base evaluation did, and than the exported weights run in (``ptrain chat``,
    ``serve``, a user's ``from_pretrained``). Both are put back exactly as they were (accelerate's own
    ``unwrap_model`` walks ``__wrapped__`` chains, which also strips transformers' decorators and ptrain's chunked head).
    """
    accelerator, model = getattr(trainer, "accelerator", None), getattr(trainer, "model", None)
    if accelerator is not None and getattr(accelerator, "mixed_precision", "no") != "no" and hasattr(model, "generate"):
        plain = model.generate

        @functools.wraps(plain)
        def generate(*args: Any, **kwargs: Any) -> Any:
            with accelerator.autocast():
                return plain(*args, **kwargs)

        model.generate = generate
    else:
        plain = None
    try:
        yield
    finally:
        if plain is not None:
            _restore(model, "generate", plain)
        wrapped = getattr(model, "__dict__", {}).pop("_original_forward", None)  # where accelerate keeps the forward it wrapped
        if wrapped is not None:
            _restore(model, "forward", wrapped)


def _restore(model: Any, name: str, method: Any) -> None:
    """Put ``method`` back as ``model.<name>``: the class's own (the instance attribute dropped) or an instance's."""
    if getattr(method, "__func__", None) is getattr(type(model), name, None):
        model.__dict__.pop(name, None)
    else:
        setattr(model, name, method)  # an instance's own (the chunked head's forward), as it was


def progress_callback(console: Any, label: str = "training") -> Any:
    """A ``TrainerCallback`` drawing a rich progress bar with the latest loss, on the main process only."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def __init__(self) -> None:
            self.progress: Progress | None = None
            self.task: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not state.is_world_process_zero:
                return
            self.progress = Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[loss]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, loss="")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if self.progress is not None and logs:
                parts = [f"{k} {logs[k]:.4f}" for k in ("loss", "eval_loss") if isinstance(logs.get(k), (int, float))]
                if parts:
                    self.progress.update(self.task, loss="  ".join(parts))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)
                self.progress.stop()
                self.progress = None

    return RichProgress()


log = logging.getLogger("ptrain")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
ALL_RANKS_SAVED = "ptrain_all_ranks_saved.json"
"""Written into a checkpoint by rank 0 once every process of a distributed run has saved its part."""


def all_ranks_saved_callback() -> Any:
    """A ``TrainerCallback`` that marks a checkpoint of a distributed run complete.

    Each process saves its RNG state into the checkpoint and rank 0 its ``trainer_state.json``,
    with nothing in between to wait for the others: a process killed while saving can leave a
    checkpoint that looks complete and misses its state. After every save, the processes meet
    (one barrier) and rank 0 writes :data:`ALL_RANKS_SAVED`; resume passes over checkpoints without it.
    """
    import json

    from transformers import TrainerCallback

    class AllRanksSaved(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
                return
            dist.barrier()
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if state.is_world_process_zero and os.path.isdir(folder):
                with open(os.path.join(folder, ALL_RANKS_SAVED), "w", encoding="utf-8") as handle:
                    json.dump({"world_size": dist.get_world_size(), "step": state.global_step}, handle)

    return AllRanksSaved()


def step_timer_callback() -> Any:
    """A callback that times each optimizer step (generation included, for the RL trainers that sample
    inside the step); ``.seconds`` holds the durations, ``.steady()`` the median without the first step
    (warm-up: allocations, lazy imports, kernel selection)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.started: float | None = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.started is not None:
                self.seconds.append(time.perf_counter() - self.started)
                self.started = None

        def steady(self) -> float | None:
            kept = self.seconds[1:] or self.seconds
            return round(statistics.median(kept), 3) if kept else None

    return StepTimer()


def interrupt_callback() -> Any:
    """A ``TrainerCallback`` that turns the first Ctrl-C (SIGINT) or SIGTERM into "save a checkpoint and stop".

    ``callback.stopped_by`` names the signal once one arrived. A second signal is handled as
    usual (KeyboardInterrupt), for when saving takes too long.
    """
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        def __init__(self) -> None:
            self.stopped_by: str | None = None
            self.previous: dict[int, Any] = {}

        def _handle(self, number: int, frame: Any) -> None:
            if self.stopped_by:  # e.g. torchrun's SIGTERM after the terminal's SIGINT: already stopping
                return
            self.stopped_by = signal.Signals(number).name
            if signal.SIGINT in self.previous:  # a second Ctrl-C aborts at once
                signal.signal(signal.SIGINT, self.previous.pop(signal.SIGINT))
            log.warning("%s: saving a checkpoint after this step, then stopping (Ctrl-C again aborts)", self.stopped_by)

        def _restore(self) -> None:
            for number, handler in self.previous.items():
                signal.signal(number, handler)
            self.previous = {}

        def _any_rank_stopped(self, args: Any) -> bool:
            """Every rank must stop at the same step, or the others wait forever in the next all-reduce."""
            import torch
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
                return bool(self.stopped_by)
            flag = torch.tensor([1.0 if self.stopped_by else 0.0], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() > 0 and not self.stopped_by:
                self.stopped_by = "another rank's signal"
            return flag.item() > 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            try:
                for number in STOP_SIGNALS:
                    self.previous[number] = signal.signal(number, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                self._restore()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._any_rank_stopped(args):
                control.should_save = True
                control.should_training_stop = True

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._restore()

    return StopOnSignal()
