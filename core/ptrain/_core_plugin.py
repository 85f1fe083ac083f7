"""The core's own plugin (``core``): its checks, data formats and sources, reward functions, report rows,
the default loader, data, evaluation and export.

Registered in every run under the name ``core``, through the same hooks any plugin uses; its
run-time implementations are ``trylast``, so any method can replace or wrap them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from ptrain import _artifacts
from ptrain._errors import RecipeError
from ptrain._formats import CORE_FORMATS
from ptrain._rewards import CORE_REWARDS
from ptrain._sources import CORE_SOURCES
from ptrain._tools import CORE_TOOLS
from ptrain._types import DataFormat, DataSource, DataSplits, LoadedModel, ReportRow, RewardFunction, Tool
from ptrain.hookspecs import hookimpl

if TYPE_CHECKING:
    from ptrain._plan import TrainingPlan
    from ptrain._recipe import Recipe
    from ptrain._run import Run


@hookimpl(trylast=True)
def validate_recipe(recipe: Recipe) -> None:
    from ptrain._models import check_model_name
    from ptrain._tracking import check_report_to

    check_model_name(recipe.model.name, "model.name")
    if recipe.model.tokenizer:
        check_model_name(recipe.model.tokenizer, "model.tokenizer")
    distributed = recipe.distributed
    checkpointing = {k.removeprefix("fsdp_"): v for k, v in distributed.fsdp_config.items()}.get("activation_checkpointing")
    if distributed.backend == "fsdp" and recipe.train.gradient_checkpointing and str(checkpointing).lower() in ("true", "1", "yes"):
        raise RecipeError(
            "is on, and so is distributed.fsdp_config.activation_checkpointing: both recompute activations and the "
            "Trainer refuses the pair; keep FSDP's own (set this to false)",
            key="train.gradient_checkpointing",
        )
    if recipe.data.streaming and recipe.trainer_owner is not None and recipe.train.max_steps < 1:
        raise RecipeError(
            "data.streaming reads rows as training goes and never counts them, so the trainer cannot tell an epoch's "
            "length; set train.max_steps",
            key="data.streaming",
        )
    check_report_to(recipe.train.report_to)
    fields = recipe.data_fields
    for method in recipe.methods_with("needs_pairs"):  # what the trait promises, for methods that do not check it themselves
        if fields is not None and not {"chosen", "rejected"} <= fields:
            raise RecipeError(
                f"{method} trains on preference pairs (trait needs_pairs), and the data gives {recipe.data_format!r} rows "
                'without chosen and rejected; use rows with prompt, chosen and rejected (data.format = "preference")',
                key="data.source" if recipe.data.format == "auto" else "data.format",
            )
    from ptrain._templates import check_recipe

    check_recipe(recipe)


@hookimpl(trylast=True)
def plan_memory(plan: TrainingPlan) -> None:
    from ptrain._plan import core_terms

    core_terms(plan)


@hookimpl
def data_formats() -> list[DataFormat]:
    return CORE_FORMATS


@hookimpl
def data_sources() -> list[DataSource]:
    return CORE_SOURCES


@hookimpl
def reward_functions() -> list[RewardFunction]:
    """The built-ins score the core's own tasks with its own metrics: any online RL method may name them."""
    return CORE_REWARDS


@hookimpl
def tools() -> list[Tool]:
    """The built-ins serve the core's own tasks (a calculator for arithmetic, a type lookup for AVRO): any method
    that runs tool-calling rollouts may name them."""
    return CORE_TOOLS


@hookimpl
def report_rows() -> list[ReportRow]:
    return [
        ReportRow("methods", "run.methods"),
        ReportRow("model", "run.model"),
        ReportRow("parameters", "train.parameters", format="count"),
        ReportRow("trainable parameters", "train.trainable_parameters", format="count"),
        ReportRow("training steps", "train.steps"),
        ReportRow("training time (s)", "train.train_time_s", chart="panel"),
        ReportRow("time per step (s)", "train.time_per_step_s"),
        ReportRow("predicted time per step (s)", "train.predicted.time_per_step_s"),
        ReportRow("peak training memory (MiB)", "train.peak_memory_mb"),
        ReportRow("training memory above baseline (MiB)", "train.memory_above_baseline_mb"),
        ReportRow("predicted memory above baseline (MiB)", "train.predicted.memory_above_baseline_mb"),
        ReportRow("size on disk (MiB)", "final.model_size_mb"),
        ReportRow("inference memory (MiB)", "final.memory_footprint_mb", chart="panel"),
        ReportRow("generation tokens/s", "final.generation_tokens_per_s", chart="panel"),
        ReportRow("eval loss", "final.eval_loss"),
        ReportRow("perplexity (completions)", "final.perplexity", chart="panel"),
        ReportRow("task metric", "final.task_metric", base=True, chart="quality"),
        ReportRow("valid JSON", "final.valid_json_rate", base=True, chart="quality"),
        ReportRow("training rows", "data.train_rows", format="count"),
        ReportRow("task metric by task", "final.task_metric_by_task", base=True, each=True),
        ReportRow("task metric by source", "final.task_metric_by_source", base=True, each=True),
        ReportRow("eval loss by source", "final.eval_loss_by_source", each=True),
    ]


@hookimpl(trylast=True)
def load_model(run: Run) -> LoadedModel:
    from ptrain._models import load_pretrained

    return load_pretrained(run.recipe.model, seed=run.recipe.seed, **run.model_kwargs)


@hookimpl(trylast=True)
def prepare_data(run: Run) -> DataSplits:
    from ptrain._data import to_dataset
    from ptrain._datamix import splits, streaming_dataset

    recipe = run.recipe
    prepared = splits(recipe.data_plan, recipe.data, recipe.catalog, recipe.seed, run.tokenizer, recipe.train.max_length)
    run.metrics["data"] = prepared.summary  # streamed rows are counted as they are read
    if prepared.stream is not None:
        return DataSplits(streaming_dataset(prepared, recipe.data.shuffle_buffer, recipe.seed), to_dataset(prepared.eval))
    return DataSplits(to_dataset(prepared.train), to_dataset(prepared.eval))


@hookimpl(trylast=True)
def evaluate(run: Run, stage: str) -> dict[str, Any]:
    from ptrain._evaluation import (
        completion_loss,
        is_language_model,
        metric_for,
        perplexity,
        task_scores,
        valid_json,
    )
    from ptrain._memory import footprint_bytes

    section = run.recipe.eval
    rows = list(run.eval_dataset)
    if not rows:
        return {}
    if not is_language_model(run.model):  # a reward model or another classifier: its method measures it
        return {"memory_footprint_mb": round(footprint_bytes(run.model) / 2**20, 1)}
    loss = completion_loss(
        run.model,
        run.tokenizer,
        [r["prompt"] for r in rows],
        [r["completion"] for r in rows],
        batch_size=section.batch_size,
        max_length=run.recipe.train.max_length,
    )
    # an unpaired row judged bad (label = false) is no reference answer: generation metrics use the good ones
    sample = [r for r in rows if r.get("label") is not False][: section.max_samples]
    metrics: dict[str, Any] = {
        "eval_loss": round(loss, 6),
        "perplexity": round(perplexity(loss), 4),
        "eval_rows": len(rows),
        # parameters and buffers as loaded: the inference memory floor
        "memory_footprint_mb": round(footprint_bytes(run.model) / 2**20, 1),
    }
    if not sample:  # eval.max_samples = 0: no generation metrics
        return metrics
    generations = run.generate([r["prompt"] for r in sample], section.max_new_tokens)
    scores = task_scores(sample, generations.texts, section.metric)
    per_task: dict[str, list[float]] = defaultdict(list)
    for row, score in zip(sample, scores, strict=True):
        per_task[row.get("task") or "all"].append(score)
    run._core.generations[stage] = generations.texts
    run._core.scores[stage] = scores
    if stage == "final":
        base = run._core.generations.get("base")
        base_scores = run._core.scores.get("base")
        _artifacts.write_jsonl(
            run.dir / "samples.jsonl",
            [
                {
                    "prompt": row["prompt"],
                    **{key: row[key] for key in ("instruction", "input") if row.get(key)},
                    "reference": row["output"],
                    "generation": text,
                    "correct": bool(score),
                    **({"base_generation": base[i], "base_correct": bool(base_scores[i])} if base else {}),
                }
                for i, (row, text, score) in enumerate(zip(sample, generations.texts, scores, strict=True))
            ],
        )
    metrics.update({
        "task_metric": round(sum(scores) / len(scores), 4),
        "task_metric_name": sorted({metric_for(r, section.metric) for r in sample}),
        "generated_rows": len(sample),
        "generation_tokens_per_s": round(generations.tokens_per_second, 1),
    })
    json_rows = [(row, text) for row, text in zip(sample, generations.texts, strict=True) if metric_for(row, section.metric) == "json_match"]
    if json_rows:  # how often the output parses at all, next to how often it is exactly right
        metrics["valid_json_rate"] = round(sum(valid_json(text) for _, text in json_rows) / len(json_rows), 4)
    if len(per_task) > 1:
        metrics["task_metric_by_task"] = {t: round(sum(s) / len(s), 4) for t, s in sorted(per_task.items())}
    metrics.update(_by_source(run, rows, sample, scores))
    return metrics


def _by_source(run: Run, rows: list[dict[str, Any]], sample: list[dict[str, Any]], scores: list[float]) -> dict[str, Any]:
    """Eval loss and task metric of each source of a mixture (rows carry their source's label)."""
    from ptrain._datamix import SOURCE_FIELD
    from ptrain._evaluation import completion_loss

    labels = list(dict.fromkeys(r.get(SOURCE_FIELD) for r in rows if r.get(SOURCE_FIELD)))
    if len(labels) < 2:
        return {}
    section, losses, metric = run.recipe.eval, {}, {}
    for label in labels:
        mine = [r for r in rows if r.get(SOURCE_FIELD) == label]
        loss = completion_loss(
            run.model, run.tokenizer, [r["prompt"] for r in mine], [r["completion"] for r in mine],
            batch_size=section.batch_size, max_length=run.recipe.train.max_length,
        )
        losses[label] = round(loss, 6)
        mine_scores = [s for r, s in zip(sample, scores, strict=True) if r.get(SOURCE_FIELD) == label]
        if mine_scores:
            metric[label] = round(sum(mine_scores) / len(mine_scores), 4)
    return {"eval_loss_by_source": losses, "task_metric_by_source": metric}


@hookimpl(trylast=True)
def export(run: Run) -> list[str]:
    if not run.recipe.output.save_model or "model" in run.artifacts:
        return []
    target = run.dir / "model"
    with _artifacts.atomic_dir(target) as tmp:
        run.model.save_pretrained(tmp, safe_serialization=True)
        run.tokenizer.save_pretrained(tmp)
    run.artifacts["model"] = str(target)
    run.metrics.setdefault("final", {})["model_size_mb"] = round(_artifacts.dir_size(target) / 2**20, 3)
    return [str(target)]  # its model card is written once every exporter ran
