"""Helpers for methods that build a trainer: uniform arguments and the core's progress display."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ptrain.run import Run


def precision_flags(precision: str) -> dict[str, bool]:
    """``bf16``/``fp16`` flags for TrainingArguments: mixed precision only where the hardware has it."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        if cuda and torch.cuda.is_bf16_supported():
            return {"bf16": True, "fp16": False}
        return {"bf16": False, "fp16": cuda}
    if precision in ("bf16", "fp16") and not cuda:
        from ptrain.errors import RecipeError

        raise RecipeError(f"train.precision = {precision!r} needs a CUDA GPU; use 'auto' or 'fp32' on this machine")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def training_arguments(run: Run, cls: type | None = None, **overrides: Any) -> Any:
    """``cls`` (``TrainingArguments`` or a TRL config such as ``SFTConfig``) filled from ``[train]``.

    Every method that builds a trainer should use this, so that the same recipe keys mean the
    same thing whatever the method; ``overrides`` sets the method's own fields.
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
        "include_num_input_tokens_seen": True,
        **precision_flags(train.precision),
    }
    names = {f.name for f in dataclasses.fields(cls)}
    if "activation_checkpointing" in names:  # transformers >= 5.x renamed it; TRL configs still default the old name to True
        kwargs["activation_checkpointing"] = kwargs["gradient_checkpointing"]
    kwargs.update(overrides)
    return cls(**{k: v for k, v in kwargs.items() if k in names})


def progress_callback(console: Any) -> Any:
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
                TextColumn("[bold]training"),
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
