"""One run of a recipe: the run directory, and the lifecycle the core owns (hooks in order, training, metrics)."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import platform
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from ptrain import _artifacts
from ptrain._bnb import keep_off_packed_path
from ptrain._cards import write_missing_cards
from ptrain._errors import ProcessLost, RunInterrupted, UsageError
from ptrain._lock import lock_status
from ptrain._memory import measure_memory, memory_in_use_mb, training_breakdown, trim_freed_memory
from ptrain._quiet import quiet_libraries, route_library_output
from ptrain._recipe import Recipe
from ptrain._redact import RedactingFilter, redact_argv, redact_toml
from ptrain._run import Run
from ptrain._rundir import RunDirectory
from ptrain._tracking import start_tracking

log = logging.getLogger("ptrain")
STAGES = ("base", "final")
RESUME_IGNORES = (
    "description", "eval", "output", "distributed",
    "train.logging_steps", "train.eval_steps", "train.save_steps", "train.save_total_limit", "train.report_to",
)
"""Recipe keys (and sections) that may change between a run and its resumption: they do not alter training."""
VERSIONED = ("ptrain", "torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "tokenizers", "pluggy")


# ------------------------------------------------------------------ run directory


def process_rank() -> int:
    """This process's rank among the processes of a distributed run (``RANK``; 0 alone)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def run_path(recipe: Recipe, output_dir: str | None) -> Path:
    return Path(output_dir or recipe.output.dir or Path("runs") / recipe.name).expanduser()


def environment(seed: int) -> dict[str, Any]:
    """Versions and machine facts saved as ``env.json``; never any secret."""
    import importlib.metadata

    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "versions": versions,
        "seed": seed,
        "world_size": _world_size(),
        "argv": redact_argv(sys.argv),
        "git_sha": _git_sha(),
        "lock": lock_status(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if "torch" in sys.modules:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _world_size() -> int:
    from ptrain._training import world_size

    return world_size()


def _git_sha() -> str | None:
    for where in (Path.cwd(), Path(__file__).resolve().parent):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def _attach_log_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("ptrain")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    route_library_output().sinks.append(handler)  # every other library's records and warnings too
    return handler


def _detach_log_file(handler: logging.Handler) -> None:
    logging.getLogger("ptrain").removeHandler(handler)
    router = route_library_output()
    if handler in router.sinks:
        router.sinks.remove(handler)
    handler.close()


# ------------------------------------------------------------------ lifecycle


def execute(
    recipe: Recipe,
    output_dir: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    console: Any = None,
) -> Run:
    """Run every stage of ``recipe`` and return the finished :class:`Run`.

    A resumed run's recipe is compared before the run directory is touched. Only the main process
    (rank 0) writes the run directory, under the rules of :class:`ptrain._rundir.RunDirectory`:
    locked for the run's life, a replaced run kept until the new one has started, nothing left
    behind by a run that a user error stopped before it started.
    """
    resume = resume or recipe.output.resume
    main = process_rank() == 0
    target = run_path(recipe, output_dir)
    if resume:
        check_resumable(recipe, target)
    if not main:
        run = Run(recipe=recipe, dir=target, console=console, resume=resume, is_main_process=False)
        _stages(run)
        return run
    folder = RunDirectory(target, overwrite=overwrite or recipe.output.overwrite, resume=resume)
    with folder:
        run = Run(recipe=recipe, dir=target, console=console, resume=resume, is_main_process=True)
        run._core.on_started = folder.started
        handler = _attach_log_file(target / "run.log")
        try:
            _stages(run)
        except (UsageError, RunInterrupted, ProcessLost) as err:
            log.debug("%s", err)  # the CLI shows it
            _end_tracking(run)
            _detach_log_file(handler)
            raise
        except BaseException as err:
            # the traceback goes to run.log only; the terminal gets one line from the CLI
            log.debug("run failed", exc_info=True)
            _end_tracking(run)
            _detach_log_file(handler)
            err.ptrain_run_log = str(target / "run.log")  # type: ignore[attr-defined]
            raise
        _detach_log_file(handler)
    return run


def _end_tracking(run: Run) -> None:
    """Close trackers still open: the run stopped before its metrics were final."""
    if run._core.tracking is not None:
        try:
            run._core.tracking.end(failed=True)
        except Exception:  # a tracker's own failure must not hide the run's
            log.debug("closing the trackers failed", exc_info=True)
        run._core.tracking = None


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


def recipe_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved recipes and that matter for training."""
    old, new = _flatten(before), _flatten(after)

    def ignored(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in RESUME_IGNORES)

    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and not ignored(k))


def check_resumable(recipe: Recipe, target: Path) -> None:
    """Refuse to resume ``target`` with a recipe that differs from the one it was started with."""
    saved = target / "recipe.resolved.toml"
    if not saved.is_file():
        return
    try:
        before = tomllib.loads(saved.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"{saved}: cannot read the recipe this run was started with ({err}); start again with --overwrite") from None
    try:
        before_world = json.loads((target / "env.json").read_text(encoding="utf-8")).get("world_size", 1)
    except (OSError, ValueError, AttributeError):
        before_world = None
    if before_world not in (None, _world_size()):
        log.warning(
            "--resume: this run was started with %s processes and continues with %s; the global batch and the "
            "data position change with it", before_world, _world_size(),
        )
    after = tomllib.loads(redact_toml(recipe.to_toml()))
    changed = recipe_changes(before, after)
    if changed:
        old, new = _flatten(before), _flatten(after)
        detail = ", ".join(f"{k} ({old.get(k, 'unset')!r} -> {new.get(k, 'unset')!r})" for k in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        raise UsageError(
            f"--resume: the recipe changed since {target} was started: {detail}{more}; "
            "restore those values, or start a new run with --overwrite or --output-dir"
        )


def _stages(run: Run) -> None:
    quiet_libraries()
    from transformers import set_seed

    recipe = run.recipe
    hook = recipe.plugins.hook
    if run.is_main_process:
        _artifacts.write_text(run.dir / "recipe.resolved.toml", redact_toml(recipe.to_toml()))
        _artifacts.write_json(run.dir / "env.json", environment(recipe.seed))
    started = time.perf_counter()
    set_seed(recipe.seed)
    gc.collect()  # in a pipeline, what the previous stage left is not this run's memory
    trim_freed_memory()
    run._core.memory_baseline_mb = memory_in_use_mb()

    with _status(run, "loading model"):
        run.model, run.tokenizer = hook.load_model(run=run)
    if recipe.trainer_owner is not None:
        keep_off_packed_path(run.model, training=True)  # a repacked 4-bit layer has no backward
    with _status(run, "preparing data"):
        run.train_dataset, run.eval_dataset = hook.prepare_data(run=run)
    train_rows = len(run.train_dataset) if hasattr(run.train_dataset, "__len__") else "streamed"
    log.info("data: %s train rows, %d eval rows", train_rows, len(run.eval_dataset))

    if recipe.trainer_owner is not None:
        run._core.plan = predicted_plan(run)

    if recipe.eval.base and run.is_main_process:
        _evaluate(run, "base")

    if recipe.trainer_owner is not None:
        run._core.setup = [(name, setup) for name, setup in recipe.plugins.call_each("training_setup", run=run) if setup]
        from ptrain._distributed import fsdp_planned, model_skeleton

        if run.is_main_process and _world_size() > 1 and fsdp_planned(recipe.distributed.backend):
            # the model's shape (no weights), taken before a trainer patches it: rank 0 pours the
            # gathered weights into it after sharded training
            run._core.skeleton = model_skeleton(run.model)
        run.trainer = hook.build_trainer(run=run)
    if run.trainer is not None:
        route_library_output()
        _apply_setup(run)
        run._core.tracking = start_tracking(run)
        _train(run)
    else:
        log.info("no method in %s builds a trainer: skipping training", recipe.methods)
    if not run.is_main_process:
        return  # rank 0 evaluates and writes the run directory

    _evaluate(run, "final")
    run.metrics["run"] = {"wall_time_s": round(time.perf_counter() - started, 2), "methods": recipe.methods, "model": recipe.model.name}
    _artifacts.write_json(run.dir / "metrics.json", run.metrics)
    with _status(run, "exporting"):
        written = [p for paths in hook.export(run=run) for p in (paths or [])]
    run.metrics["artifacts"] = sorted({str(p) for p in written})
    write_missing_cards(run)  # a model directory its exporter gave no card gets the core's
    run.metrics["run"]["wall_time_s"] = round(time.perf_counter() - started, 2)
    run.metrics["report"] = [dataclasses.asdict(row) for row in report_rows(recipe)]
    if run._core.history:  # scalars hooks logged outside training (Run.log_scalars)
        history_file = run.dir / "log_history.json"
        try:
            history = json.loads(history_file.read_text(encoding="utf-8")) if history_file.is_file() else []
        except (OSError, ValueError):
            history = []
        _artifacts.write_json(history_file, [*history, *run._core.history])
    _artifacts.write_json(run.dir / "metrics.json", run.metrics)
    if run._core.tracking is not None:
        run._core.tracking.end()
        run._core.tracking = None
    if recipe.output.report:
        from ptrain._html import write_run_report

        try:
            write_run_report(run.dir)
        except Exception as err:  # the run is done and saved; a report it could not draw is no reason to fail it
            log.warning("report.html not written: %s: %s", type(err).__name__, err)
    from ptrain._redact import scrub_files

    scrubbed = scrub_files(run.dir)  # what libraries wrote themselves (adapter_config.json's init text, a token-shaped path)
    if scrubbed:
        log.info("redacted secrets in %d file(s) written by libraries: %s", len(scrubbed), ", ".join(p.name for p in scrubbed[:5]))


def predicted_plan(run: Run) -> Any:
    """The memory plan for the sequences this run's data makes (its longest, up to ``train.max_length``),
    recorded beside what training measures; None when the model's facts are unknown before loading."""
    from ptrain._facts import FactsUnavailable
    from ptrain._plan import plan_training, sequence_lengths

    try:
        longest, prompt = sequence_lengths(run.train_dataset, run.tokenizer, run.recipe.train.max_length)
        return plan_training(run.recipe, sequence_length=longest, prompt_length=prompt)
    except FactsUnavailable as err:
        log.info("no memory prediction: %s", err)
    except Exception:  # a prediction must never stop a run
        log.debug("memory prediction failed", exc_info=True)
    return None


def report_rows(recipe: Recipe) -> list[Any]:
    """The rows the core and the recipe's plugins want reported, without duplicates."""
    from ptrain._report import declared_rows

    return declared_rows(recipe)


def _apply_setup(run: Run) -> None:
    """What modifiers contributed: their arguments must have reached the trainer; their callbacks join it."""
    args = getattr(run.trainer, "args", None)
    for method, setup in run._core.setup:
        for name, value in setup.arguments.items():
            if args is not None and getattr(args, name, value) != value:
                raise UsageError(
                    f"method {method!r} set training argument {name}={value!r}, but the trainer {run.recipe.trainer_owner!r} built "
                    f"has {name}={getattr(args, name)!r}: {run.recipe.trainer_owner!r} must build its arguments with "
                    "ptrain.training_arguments; the two methods do not compose until it does"
                )
        for callback in setup.callbacks:
            if not hasattr(run.trainer, "add_callback"):
                raise UsageError(f"method {method!r} adds a training callback, and the trainer {run.recipe.trainer_owner!r} built takes none")
            run.trainer.add_callback(callback)


class _status:
    """A spinner on the console while a slow step runs."""

    def __init__(self, run: Run, text: str):
        self.run, self.text, self.status = run, text, None

    def __enter__(self) -> None:
        route_library_output()  # a library imported by the last stage may have brought a terminal handler
        log.info("%s", self.text)
        if self.run.console is not None and self.run.is_main_process:
            self.status = self.run.console.status(self.text + "…")
            self.status.__enter__()

    def __exit__(self, *exc: Any) -> None:
        route_library_output()
        if self.status is not None:
            self.status.__exit__(*exc)


def _evaluate(run: Run, stage: str) -> None:
    before = dict(run._core.reuse)
    with _status(run, f"evaluating the {'base' if stage == 'base' else 'trained'} model"):
        results = run.recipe.plugins.hook.evaluate(run=run, stage=stage)
    counts = {k: run._core.reuse[k] - before[k] for k in before}
    if any(counts.values()):  # answers to held-out prompts: generated once per prompt, reused by whoever asks again
        run.metrics.setdefault("generation", {})[stage] = counts
    merged: dict[str, Any] = {}
    for result in reversed(results):  # core results first, methods' after
        merged.update(result or {})
    run.metrics[stage] = merged
    _artifacts.write_json(run.dir / "metrics.json", run.metrics)


def log_scalars_into(trainer: Any, run: Run) -> None:
    """Route :meth:`Run.log_scalars` into the trainer's log entries while it trains: wraps ``trainer.log`` so
    the values join the entry before it reaches ``log_history`` and the trackers' callbacks; keys a callback
    adds to ``logs`` in ``on_log`` are copied into the entry too (only ``log_scalars`` reaches trackers)."""
    original = getattr(trainer, "log", None)
    if original is None:
        return

    def log_entry(logs: dict[str, float], *args: Any, **kwargs: Any) -> Any:
        if run._core.pending_scalars:
            logs = {**logs, **run._core.pending_scalars}
            run._core.pending_scalars.clear()
        history = getattr(getattr(trainer, "state", None), "log_history", None)
        count = len(history) if history is not None else 0
        result = original(logs, *args, **kwargs)
        if history is not None and len(history) == count + 1:
            history[-1].update({k: v for k, v in logs.items() if k not in history[-1]})
        return result

    trainer.log = log_entry
    run._core.training_now = True


def _end_scalars(run: Run, trainer: Any) -> None:
    """Training ended: scalars logged after the last entry get one of their own."""
    run._core.training_now = False
    if run._core.pending_scalars and hasattr(trainer, "state"):
        trainer.state.log_history.append({**run._core.pending_scalars, "step": trainer.state.global_step})
        if run._core.tracking is not None:
            run._core.tracking.log(dict(run._core.pending_scalars), trainer.state.global_step)
        run._core.pending_scalars.clear()


def _train(run: Run) -> None:
    from ptrain._distributed import lost_peer, peer_lost_message, use_fsdp_on_cpu
    from ptrain._training import (
        all_ranks_saved_callback,
        all_ranks_total,
        cast_generation,
        count_tokens,
        interrupt_callback,
        progress_callback,
        step_timer_callback,
        world_size,
    )

    trainer = run.trainer
    stopper = timer = None
    if hasattr(trainer, "add_callback"):
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(progress_callback(run.console))
        stopper = interrupt_callback()
        trainer.add_callback(stopper)
        trainer.add_callback(all_ranks_saved_callback())
        timer = step_timer_callback()
        trainer.add_callback(timer)
    sharded = world_size() > 1 and use_fsdp_on_cpu(trainer)
    counted = count_tokens(trainer)
    log_scalars_into(trainer, run)
    checkpoint = _latest_checkpoint(run.dir / "checkpoints") if run.resume else None
    if run.resume and checkpoint is None:
        log.warning("--resume: no checkpoint in %s, starting from the beginning", run.dir / "checkpoints")
    elif checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    run._core.training_started = True
    if run._core.on_started is not None:
        run._core.on_started()  # the run it replaces (--overwrite) can go now
    # the objects alive now (modules, recipe, data) live on through training: out of the garbage
    # collector's full passes, which otherwise walk them again and again while autograd churns
    gc.collect()
    gc.freeze()
    trim_freed_memory()  # what loading freed is not training memory
    before_training_mb = memory_in_use_mb()
    started = time.perf_counter()
    lost: BaseException | None = None
    try:
        # generation inside training under one autocast, not one per token; afterwards evaluated as before training and as exported
        with measure_memory(baseline_mb=run._core.memory_baseline_mb) as memory, cast_generation(trainer):
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except Exception as err:
        if world_size() <= 1 or not lost_peer(err):
            raise
        lost = err
        if stopper is not None:  # torchrun's SIGTERM to the survivors is ignored while they say why and exit
            stopper.stopped_by = stopper.stopped_by or "lost process"
    finally:
        gc.unfreeze()
        _end_scalars(run, trainer)
        if stopper is not None and lost is None:
            stopper.on_train_end(None, None, None)
    if lost is not None:
        saved = _latest_checkpoint(run.dir / "checkpoints")
        raise ProcessLost(peer_lost_message(lost, trainer.state.global_step, world_size(), saved)) from lost
    seconds = time.perf_counter() - started
    run._core.trained_steps += 1  # answers generated before training are stale
    state = trainer.state
    if stopper is not None and stopper.stopped_by:
        if run.is_main_process:
            _artifacts.write_json(run.dir / "log_history.json", state.log_history)
        saved = _latest_checkpoint(run.dir / "checkpoints")
        raise RunInterrupted(
            f"{stopper.stopped_by}: stopped at step {state.global_step} of {state.max_steps}; checkpoint {saved}; "
            "continue with `ptrain run RECIPE --resume`"
        )
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    tokens = all_ranks_total(counted[0], trainer) or getattr(state, "num_input_tokens_seen", 0) or 0
    run.metrics["train"] = {
        "steps": state.global_step,
        "train_loss": round(result.training_loss, 6) if result is not None else None,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "train_time_s": round(seconds, 2),
        "time_per_step_s": timer.steady() if timer is not None else None,
        "tokens_seen": tokens,
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 and tokens else None,
        **_utilisation(run, trainer, tokens, seconds),
        **memory.as_metrics(),
        "memory_before_training_mb": round(before_training_mb, 1),
        "memory_breakdown_mb": training_breakdown(run.model, getattr(trainer, "optimizer", None), memory),
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in run.model.parameters() if p.requires_grad),
        "world_size": world_size(),
        "sharded": sharded,
        "resumed_from": str(checkpoint) if checkpoint else None,
    }
    if run._core.plan is not None:
        run.metrics["train"]["predicted"] = run._core.plan.as_metrics()
    if sharded:
        from ptrain._distributed import gather_full_model

        whole = gather_full_model(trainer, run._core.skeleton)  # every rank takes part; rank 0 gets the model
        run._core.skeleton = None
        if run.is_main_process:
            run.model = whole
    if not run.is_main_process:
        return
    _artifacts.write_json(run.dir / "log_history.json", state.log_history)
    if run.recipe.output.plots:
        from ptrain._plots import loss_curve

        loss_curve(state.log_history, run.dir / "loss.png", title=run.recipe.name)


def _utilisation(run: Run, trainer: Any, tokens: int, seconds: float) -> dict[str, Any]:
    """The run's model-FLOPs utilisation against this CPU's measured matmul peak (``precision`` the one it trained in)."""
    import torch

    choice = getattr(run._core, "precision", None)
    if torch.cuda.is_available() or choice is None or not tokens:
        return {"precision": getattr(choice, "chosen", None)}
    from ptrain._precision import utilisation

    state = trainer.state
    sequences = max(1, state.global_step * run.recipe.train.batch_size * run.recipe.train.gradient_accumulation_steps * _world_size())
    try:
        return {"precision": choice.chosen, **utilisation(run.model, tokens, seconds, tokens / sequences, choice.chosen)}
    except Exception as err:  # a figure, never a reason to fail a trained run
        log.warning("utilisation not measured: %s: %s", type(err).__name__, err)
        return {"precision": choice.chosen}


def _latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint. The Trainer writes ``trainer_state.json`` last, so one killed while
    saving has none (or a truncated one); a weights file cut short (a full disk, a copy interrupted) is
    caught by its safetensors header. With several processes each saves its own RNG state, unsynchronised
    with rank 0's ``trainer_state.json``: such a checkpoint is complete once rank 0 marked that every
    process had saved (:data:`ALL_RANKS_SAVED`). Incomplete checkpoints are passed over with a warning."""
    from ptrain._training import ALL_RANKS_SAVED

    if not folder.is_dir():
        return None
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    for candidate in sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        problem = _incomplete(candidate)
        if problem:
            log.warning("skipping incomplete checkpoint %s (%s)", candidate, problem)
            continue
        if any(candidate.glob("rng_state_*.pth")) and not (candidate / ALL_RANKS_SAVED).is_file():
            log.warning("skipping checkpoint %s: not every process of the run finished saving it", candidate)
            continue
        return candidate
    return None


def _incomplete(checkpoint: Path) -> str | None:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable trainer_state.json"
    for weights in checkpoint.glob("*.safetensors"):
        try:
            with weights.open("rb") as handle:
                length = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(length)) if 0 < length < 100_000_000 else None
        except (OSError, ValueError):
            header = None
        if not isinstance(header, dict):
            return f"{weights.name} has no readable header"
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)), default=0)
        if weights.stat().st_size < 8 + length + end:
            return f"{weights.name} is cut short"
    return None
