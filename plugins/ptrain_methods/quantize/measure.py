"""Quantizing a model into each variant, then measuring every variant against the unquantized model."""

from __future__ import annotations

import contextlib
import gc
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ptrain import (
    Run,
    UsageError,
    atomic_dir,
    dir_size,
    footprint_bytes,
    generate,
    load_pretrained,
    measure_memory,
    model_location,
    resolve_dtype,
    sliding_window_perplexity,
    task_scores,
    write_model_card,
)

from .backends import (
    UNQUANTIZED,
    backend_label,
    compute_dtype,
    device_name,
    four_bit_skip_list,
    four_bit_skip_modules,
    is_four_bit,
    quantization_config,
    quiet,
)


@contextlib.contextmanager
def source_model(run: Run, section: Any) -> Iterator[str]:
    """The directory or hub ID to quantize: ``source``, else this run's exported model (saved to a temporary
    directory when ``output.save_model`` is false)."""
    if section.source:
        yield model_location(section.source, run.recipe.seed)  # a previous run's directory means its model/
        return
    if "model" in run.artifacts:
        yield run.artifacts["model"]
        return
    if run.trainer is None and run.recipe.model.keep_layers is None:  # nothing changed the model: quantize it where it lies
        yield model_location(run.recipe.model.name, run.recipe.seed)
        return
    with tempfile.TemporaryDirectory(prefix="ptrain-quantize-", dir=run.dir) as tmp:
        run.model.save_pretrained(tmp, safe_serialization=True)
        run.tokenizer.save_pretrained(tmp)
        yield tmp


def _load(location: str, **kwargs: Any) -> tuple[Any, Any]:
    with quiet():
        model, tokenizer = load_pretrained(location, key="quantize.source", **kwargs)
    model.eval()
    return model, tokenizer


def quantize_and_measure(run: Run, section: Any, source: str) -> list[str]:
    dtype = compute_dtype(section.compute_dtype)
    written: list[str] = []
    skip = four_bit_skip_modules(source) if any(is_four_bit(v) for v in section.variants) else None
    if skip:
        run.log.warning(
            "quantize: %d layers stay unquantized in the 4-bit variants, their shape does not fit bitsandbytes' "
            "4-bit CPU layout (out_features a multiple of 32, in_features of 64): %s", len(skip), ", ".join(skip),
        )
    unquantized = {v: skip for v in section.variants if skip and is_four_bit(v)}
    four_bit_skip = four_bit_skip_list(section, source, skip)
    tokenizer = None
    for variant in section.variants:
        target = run.dir / "quantized" / variant
        run.log.info("quantize: %s -> %s", variant, target)
        with atomic_dir(target) as tmp:
            try:
                config = quantization_config(variant, section, four_bit_skip if is_four_bit(variant) else None)
                model, tokenizer = _load(source, quantization_config=config, dtype=dtype, device_map=device_name())
            except UsageError:
                raise
            except Exception as err:
                raise UsageError(f"quantize variant {variant!r}: cannot quantize {source} ({type(err).__name__}: {err})") from err
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            del model
            gc.collect()
        run.artifacts[f"quantized/{variant}"] = str(target)
        written.append(str(target))
    backends = {variant: backend_label(variant) for variant in section.variants}
    table: dict[str, Any] = {
        "source": source,
        "backend": ", ".join(dict.fromkeys(backends.values())),  # each model row names its own
        "device": device_name(),
        "compute_dtype": str(dtype).removeprefix("torch."),
        "llm_int8_threshold": section.llm_int8_threshold,
        "keep_modules": list(section.keep_modules),
    }
    if section.evaluate:
        text = perplexity_text(run, section)
        prompts = list(run.eval_dataset)[: run.recipe.eval.max_samples] if run.eval_dataset is not None else []
        reference_dtype = resolve_dtype(run.recipe.model.dtype)
        models = {UNQUANTIZED: (source, {"dtype": reference_dtype, "device_map": device_name()})}
        models.update({v: (str(run.dir / "quantized" / v), {"dtype": dtype, "device_map": device_name()}) for v in section.variants})
        rows: dict[str, dict[str, Any]] = {}
        for name, (location, kwargs) in models.items():
            rows[name] = measure(run, section, location, kwargs, text, prompts)
            if name != UNQUANTIZED:
                rows[name]["backend"] = backends[name]
                rows[name]["disk_mb"] = round(dir_size(location) / 2**20, 3)
                if name in unquantized:
                    rows[name]["unquantized_modules"] = unquantized[name]
        rows[UNQUANTIZED]["disk_mb"] = round(dir_size(source) / 2**20, 3) if Path(source).is_dir() else None
        compare(rows)
        window = {key: rows[UNQUANTIZED].get(key) for key in ("perplexity_tokens", "window", "stride")}
        for row in rows.values():
            for key in window:
                row.pop(key, None)
        table.update(text=section.perplexity_text or "eval split", **window, task_rows=len(prompts), models=rows)
        record(run, source, rows)
    run.metrics["quantize"] = table
    for variant in section.variants:
        measured = (table.get("models") or {}).get(variant)
        write_model_card(run, run.dir / "quantized" / variant, kind="quantized", notes=card_notes(variant, source, measured, unquantized.get(variant), section.keep_modules if is_four_bit(variant) else None))
    return written


FORMATS = {
    "int8": "bitsandbytes LLM.int8: 8-bit integer weights, outlier activations computed in 16-bit",
    "nf4": "bitsandbytes 4-bit NormalFloat (NF4), block-wise scales",
    "nf4-dq": "bitsandbytes 4-bit NormalFloat (NF4) with double quantization (the block scales quantized too)",
    "fp4": "bitsandbytes 4-bit float (FP4), block-wise scales",
    "fp4-dq": "bitsandbytes 4-bit float (FP4) with double quantization",
    "ao-int8-weight": "torchao int8 weight-only (per-row scales; activations in the compute dtype)",
    "ao-int8-dynamic": "torchao int8 weights and dynamically quantized int8 activations",
}


def card_notes(variant: str, source: str, measured: dict[str, Any] | None, skipped: list[str] | None, kept: list[str] | None = None) -> str:
    """The model card's section on a quantized variant: its format and what quantizing cost, as measured."""
    lines = ["## Quantization", "", f"Variant `{variant}`: {FORMATS.get(variant, variant)}, made by {backend_label(variant)} "
             f"from `{source}` and saved in safetensors with its `quantization_config`."]
    if skipped:
        lines.append(f"{len(skipped)} layers stay unquantized (their shape does not fit the 4-bit CPU layout): {', '.join(skipped)}.")
    if kept:
        lines.append(f"Kept unquantized by the recipe (`keep_modules`): {', '.join(kept)}.")
    if not measured:
        lines.append("\nNot measured (`quantize.evaluate = false`).")
        return "\n".join(lines)
    facts = []
    if measured.get("perplexity_increase_pct") is not None:
        facts.append(f"perplexity {measured['perplexity_increase_pct']:+.2f} % against the unquantized model")
    if measured.get("task_metric_change") is not None:
        facts.append(f"task metric {measured['task_metric_change']:+.4f}")
    if measured.get("footprint_ratio") is not None:
        facts.append(f"{measured['footprint_ratio']:.2f}x the memory footprint")
    if measured.get("disk_ratio") is not None:
        facts.append(f"{measured['disk_ratio']:.2f}x the size on disk")
    lines.append("\nMeasured quality change, on the run's evaluation text and prompts: " + ("; ".join(facts) or "no comparable figures") + ".")
    return "\n".join(lines)


def perplexity_text(run: Run, section: Any) -> str | None:
    if section.perplexity_text:
        return Path(section.perplexity_text).expanduser().read_text(encoding="utf-8")
    rows = list(run.eval_dataset) if run.eval_dataset is not None else []
    if not rows:
        return None
    return "\n\n".join(r["prompt"] + r["completion"] for r in rows)


def measure(run: Run, section: Any, location: str, kwargs: dict[str, Any], text: str | None, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Load one model from ``location`` and measure it: perplexity, task metric, footprint, speed, memory."""
    result: dict[str, Any] = {"path": location}
    with measure_memory() as memory:
        model, tokenizer = _load(location, **kwargs)
        result["footprint_mb"] = round(footprint_bytes(model) / 2**20, 3)
        with quiet():
            if text:
                ppl = sliding_window_perplexity(model, tokenizer, text, section.window, section.stride, section.max_tokens)
                result.update(
                    perplexity=round(ppl.perplexity, 4), perplexity_tokens=ppl.tokens, window=ppl.window, stride=ppl.stride
                )
            if rows:
                settings = run.recipe.eval
                generations = generate(model, tokenizer, [r["prompt"] for r in rows], settings.max_new_tokens, settings.batch_size)
                scores = task_scores(rows, generations.texts, settings.metric)
                result["task_metric"] = round(sum(scores) / len(scores), 4)
                result["generation_tokens_per_s"] = round(generations.tokens_per_second, 1)
        del model
        gc.collect()
    result["memory_above_baseline_mb"] = round(memory.above_baseline_mb, 1)
    return result


def compare(rows: dict[str, dict[str, Any]]) -> None:
    """Add each variant's change against the unquantized row."""
    reference = rows[UNQUANTIZED]
    for name, row in rows.items():
        if name == UNQUANTIZED:
            continue
        if reference.get("perplexity") and row.get("perplexity"):
            row["perplexity_increase_pct"] = round(100 * (row["perplexity"] / reference["perplexity"] - 1), 3)
        if "task_metric" in reference and "task_metric" in row:
            row["task_metric_change"] = round(row["task_metric"] - reference["task_metric"], 4)
        row["footprint_ratio"] = round(row["footprint_mb"] / reference["footprint_mb"], 4)
        if reference.get("disk_mb") and row.get("disk_mb"):
            row["disk_ratio"] = round(row["disk_mb"] / reference["disk_mb"], 4)


def record(run: Run, source: str, rows: dict[str, dict[str, Any]]) -> None:
    """One column per model measured, in the end-of-run table and in ``ptrain compare``."""
    for name, row in rows.items():
        final = {
            "task_metric": row.get("task_metric"), "window_perplexity": row.get("perplexity"),
            "memory_footprint_mb": row.get("footprint_mb"), "generation_tokens_per_s": row.get("generation_tokens_per_s"),
            "model_size_mb": row.get("disk_mb"), "perplexity_increase_pct": row.get("perplexity_increase_pct"),
        }
        model = source if name == UNQUANTIZED else f"{source} as {name} ({row.get('backend')})"
        run.record_model(name, model=model, final=final)
