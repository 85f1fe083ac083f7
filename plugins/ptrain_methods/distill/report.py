"""What distillation reports: teacher, student and baseline measured the same way, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ptrain import Run, completion_loss, footprint_bytes, generate, task_scores


def parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def measure(run: Run, model: Any, tokenizer: Any) -> dict[str, Any]:
    """The numbers compared between teacher, student and baseline, measured the same way for each."""
    section = run.recipe.eval
    rows = list(run.eval_dataset)
    sample = rows[: section.max_samples]
    loss = completion_loss(
        model, tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows], section.batch_size, run.recipe.train.max_length
    )
    prompts = [r["prompt"] for r in sample]
    if model is run.model:  # the answers (and tokens/s) of the core's evaluation at this stage: one figure per model
        generations = run.generate(prompts, section.max_new_tokens)
    else:
        generations = generate(model, tokenizer, prompts, section.max_new_tokens, section.batch_size)
    scores = task_scores(sample, generations.texts, section.metric)
    return {
        "parameters": parameters(model),
        "memory_footprint_mb": round(footprint_bytes(model) / 2**20, 3),
        "generation_tokens_per_s": round(generations.tokens_per_second, 1),
        "task_metric": round(sum(scores) / len(scores), 4) if scores else None,
        "eval_loss": round(loss, 6),
    }


def weights_size_mb(location: str | None) -> float | None:
    """Size on disk of the weight files in a model directory (None for a hub ID not stored locally)."""
    if not location or not Path(location).is_dir():
        return None
    files = [p for p in Path(location).iterdir() if p.suffix in (".safetensors", ".bin", ".gguf")]
    return round(sum(p.stat().st_size for p in files) / 2**20, 3) if files else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def record(run: Run, label: str, model: str, measured: dict[str, Any]) -> None:
    """A column for a model distillation measured besides the student (teacher, baseline)."""
    final = {k: measured.get(k) for k in ("task_metric", "eval_loss", "memory_footprint_mb", "generation_tokens_per_s")}
    final["model_size_mb"] = measured.get("size_on_disk_mb")
    run.record_model(label, model=model, final=final, train={"parameters": measured.get("parameters")})
