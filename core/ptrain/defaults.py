"""The core's own hook implementations: the default loader, data, evaluation and export.

They are registered in every run under the name ``core`` and marked ``trylast``, so any method
can replace or wrap them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ptrain import artifacts
from ptrain.hookspecs import hookimpl
from ptrain.run import DataSplits, LoadedModel, Run


@hookimpl(trylast=True)
def load_model(run: Run) -> LoadedModel:
    from ptrain.models import load_model as load

    model, tokenizer = load(run.recipe.model, run.recipe.seed, run.model_kwargs)
    return LoadedModel(model, tokenizer)


@hookimpl(trylast=True)
def prepare_data(run: Run) -> DataSplits:
    from ptrain.data import load_rows, to_dataset

    train, evaluation = load_rows(run.recipe.data, run.recipe.seed, run.tokenizer)
    return DataSplits(to_dataset(train), to_dataset(evaluation))


@hookimpl(trylast=True)
def evaluate(run: Run, stage: str) -> dict[str, Any]:
    from ptrain.evaluation import completion_loss, generate, metric_for, perplexity, task_scores, valid_json

    section = run.recipe.eval
    rows = list(run.eval_dataset)
    if not rows:
        return {}
    loss = completion_loss(
        run.model,
        run.tokenizer,
        [r["prompt"] for r in rows],
        [r["completion"] for r in rows],
        batch_size=section.batch_size,
        max_length=run.recipe.train.max_length,
    )
    sample = rows[: section.max_samples]
    generations = generate(run.model, run.tokenizer, [r["prompt"] for r in sample], section.max_new_tokens, section.batch_size)
    scores = task_scores(sample, generations.texts, section.metric)
    per_task: dict[str, list[float]] = defaultdict(list)
    for row, score in zip(sample, scores, strict=True):
        per_task[row.get("task") or "all"].append(score)
    run.state[f"core.generations.{stage}"] = generations.texts
    run.state[f"core.scores.{stage}"] = scores
    if stage == "final":
        base = run.state.get("core.generations.base")
        base_scores = run.state.get("core.scores.base")
        artifacts.write_jsonl(
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
    metrics: dict[str, Any] = {
        "eval_loss": round(loss, 6),
        "perplexity": round(perplexity(loss), 4),
        "task_metric": round(sum(scores) / len(scores), 4),
        "task_metric_name": sorted({metric_for(r, section.metric) for r in sample}),
        "eval_rows": len(rows),
        "generated_rows": len(sample),
        "generation_tokens_per_s": round(generations.tokens_per_second, 1),
    }
    if hasattr(run.model, "get_memory_footprint"):  # parameters and buffers as loaded: the inference memory floor
        metrics["memory_footprint_mb"] = round(run.model.get_memory_footprint() / 2**20, 1)
    json_rows = [(row, text) for row, text in zip(sample, generations.texts, strict=True) if metric_for(row, section.metric) == "json_match"]
    if json_rows:  # how often the output parses at all, next to how often it is exactly right
        metrics["valid_json_rate"] = round(sum(valid_json(text) for _, text in json_rows) / len(json_rows), 4)
    if len(per_task) > 1:
        metrics["task_metric_by_task"] = {t: round(sum(s) / len(s), 4) for t, s in sorted(per_task.items())}
    return metrics


@hookimpl(trylast=True)
def export(run: Run) -> list[str]:
    if not run.recipe.output.save_model or "model" in run.artifacts:
        return []
    target = run.dir / "model"
    with artifacts.atomic_dir(target) as tmp:
        run.model.save_pretrained(tmp, safe_serialization=True)
        run.tokenizer.save_pretrained(tmp)
    run.artifacts["model"] = str(target)
    run.metrics.setdefault("final", {})["model_size_mb"] = round(artifacts.dir_size(target) / 2**20, 3)
    return [str(target)]
