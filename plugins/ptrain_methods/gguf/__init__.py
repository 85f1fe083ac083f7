"""GGUF export for llama.cpp, Ollama and LM Studio: written, then reloaded and checked against its source.

``methods = [..., "gguf"]`` with ``[gguf] types = ["bf16", "q8_0"]``. Like ``quantize`` it needs no
trainer: after a training method it exports the trained model (adapters merged into a full-precision
copy first); alone, it exports ``gguf.source`` (a finished run directory, a model or adapter directory)
or the recipe's model. Its ``export`` hook is a wrapper, so the other exporters have written ``model/``
first. Each type lands in ``gguf/<type>/`` as ``<name>-<type>.gguf`` beside an Ollama ``Modelfile`` and a
model card; ``metrics.json`` ``gguf`` holds every check and measurement, and each file gets a column in
the end-of-run table (``gguf-<type>``).

The file embeds the tokenizer, its special token ids and the chat template the run trained with; the
checks (:mod:`.check`) fail the export with one line when the reloaded file does not reproduce the
training-time rendering, the special ids, the tokenization or (bf16/f16/f32) the generations.

Types: ``f32``, ``f16``, ``bf16``, ``q8_0``, ``q5_0``, ``q5_1``, ``q4_0``, ``q4_1`` are written by the
``gguf`` package in numpy (``pip install "ptrain[gguf]"``). K-quants (``q4_k_m``, ``q6_k``…) are written by
llama.cpp's quantizer from an f32 file ptrain writes first (:mod:`.llamacpp`; ``pip install "ptrain[llamacpp]"``,
which compiles llama.cpp); without it they are a validate-time error naming that extra. With llama.cpp
installed, every file is also read back by llama.cpp itself (``gguf.llama_cpp``): its tokenization is
checked, its answers, logits, task metric and tokens/s measured.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptrain import (
    Recipe,
    RecipeError,
    ReportRow,
    Run,
    UsageError,
    atomic_dir,
    check_model_name,
    hookimpl,
    load_pretrained,
    model_location,
    write_json,
    write_model_card,
    write_text,
)

from . import llamacpp
from .check import HeldOut, check_file, greedy, quality
from .convert import LLAMA_CPP_TYPES, NUMPY_TYPES, write_gguf

__all__ = ["GgufSection", "LLAMA_CPP_TYPES", "NUMPY_TYPES", "modelfile"]


@dataclass
class GgufSection:
    """``[gguf]``: which GGUF files to write and how to check them."""

    types: list[str] = field(default_factory=lambda: ["bf16", "q8_0"])
    """GGUF types to write: ``f32``, ``f16``, ``bf16``, ``q8_0``, ``q5_0``, ``q5_1``, ``q4_0``, ``q4_1`` (the gguf
    package, numpy); ``q4_k_m`` and other K-quants (llama.cpp's quantizer) need ``pip install "ptrain[llamacpp]"``."""
    source: str | None = None
    """A finished run directory (its ``model/``, or its ``adapter/`` merged), a model or adapter directory, or a hub ID;
    default: this run's model (the trained one when the recipe trains, else ``[model]``)."""
    name: str | None = None
    """File name stem (``<name>-<type>.gguf``) and the model's name in the Modelfile; default: the recipe's name."""
    check: bool = True
    """Reload each file and check it (template, special ids, tokenization, generations); false only writes."""
    llama_cpp: bool = True
    """Also read each checked file with llama.cpp (when ``llama-cpp-python`` is installed): its tokenization must equal the
    source's; its greedy answers, logit change, task metric and tokens/s are measured. False: transformers' reader only."""
    prompts: int = 16
    """Held-out rows the checks render, tokenize and generate on (the eval split, or the source run's samples)."""
    max_new_tokens: int | None = None
    """New tokens per held-out generation; default ``eval.max_new_tokens``."""
    window: int = 256
    """Sliding-window length of the perplexity each file is measured with (stride: half of it)."""
    max_tokens: int = 4096
    """Perplexity reads at most this many tokens of the held-out texts."""
    temperature: float = 0.0
    """The Modelfile's sampling default: 0 answers greedily, as ptrain's evaluation did."""
    top_p: float = 1.0
    """The Modelfile's nucleus-sampling default."""

    def validate(self) -> None:
        known = (*NUMPY_TYPES, *LLAMA_CPP_TYPES)
        if not self.types:
            raise RecipeError('needs at least one type, e.g. ["bf16", "q8_0"]', key="types")
        for name in self.types:
            if name not in known:
                raise RecipeError(f"unknown GGUF type {name!r} (known: {', '.join(known)})", key="types")
        duplicates = sorted({t for t in self.types if self.types.count(t) > 1})
        if duplicates:
            raise RecipeError(f"type {duplicates[0]!r} is listed twice", key="types")
        if self.prompts < 1:
            raise RecipeError("must be >= 1", key="prompts")
        if self.window < 8 or self.max_tokens < 2:
            raise RecipeError("need window >= 8 and max_tokens >= 2", key="window")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise RecipeError("need temperature >= 0 and 0 < top_p <= 1", key="temperature")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise RecipeError(f"{self.name!r}: use letters, digits, '.', '_' and '-' (it names files)", key="name")
        if self.source is not None:
            check_model_name(self.source, "source")


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"gguf": GgufSection}


@hookimpl
def validate_recipe(recipe: Recipe) -> None:
    """A type nothing installed can write fails here, naming the extra that brings its writer."""
    section: GgufSection = recipe.section("gguf")
    if importlib.util.find_spec("gguf") is None:
        raise RecipeError('GGUF export needs the gguf package: pip install "ptrain[gguf]"', key="gguf.types")
    k_quants = [t for t in section.types if t in LLAMA_CPP_TYPES]
    if k_quants and importlib.util.find_spec("llama_cpp") is None:
        raise RecipeError(
            f"type {k_quants[0]!r} is written by llama.cpp's quantizer: pip install \"ptrain[llamacpp]\" (compiles llama.cpp), "
            f"or use one of {', '.join(NUMPY_TYPES)}",
            key="gguf.types",
        )


@hookimpl
def report_rows() -> list[ReportRow]:
    return [
        ReportRow("GGUF files that passed their checks", "gguf.passed", format="count"),
        ReportRow("perplexity change vs unexported (%)", "final.perplexity_increase_pct"),
        ReportRow("largest logit change vs unexported", "final.max_logit_change"),
    ]


@hookimpl(wrapper=True)
def export(run: Run) -> Any:
    written = yield
    section: GgufSection = run.section("gguf")
    with source_directory(run, section) as (source, origin):
        paths = export_and_check(run, section, source, origin)
    return [*(written or []), paths]


# ------------------------------------------------------------------ what to export


@contextlib.contextmanager
def source_directory(run: Run, section: GgufSection) -> Iterator[tuple[Path, Path | None]]:
    """A full model directory to convert, and the run directory it came from (its held-out samples), if any.

    Adapters are merged into a full-precision copy first (a temporary directory)."""
    origin: Path | None = None
    if section.source:
        location = model_location(section.source, run.recipe.seed)
        folder = Path(location) if Path(location).expanduser().is_dir() else None
        given = Path(section.source).expanduser()
        if (given / "recipe.resolved.toml").is_file():
            origin = given
            if not (given / "model" / "config.json").is_file() and (given / "adapter" / "adapter_config.json").is_file():
                folder = given / "adapter"
        if folder is None:  # a hub ID or a builtin: saved to a temporary directory first
            model, tokenizer = load_pretrained(section.source, key="gguf.source", seed=run.recipe.seed)
            with _saved(run, model, tokenizer) as tmp:
                yield tmp, origin
            return
    elif "model" in run.artifacts:
        folder = Path(run.artifacts["model"])
    elif run.trainer is None and run.recipe.model.keep_layers is None:
        folder = Path(model_location(run.recipe.model.name, run.recipe.seed))
    else:
        with _saved(run, _merged(run.model), run.tokenizer) as tmp:
            yield tmp, origin
        return
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        with _saved(run, _merge_adapter(folder, run), None, tokenizer_from=folder) as tmp:
            yield tmp, origin
        return
    yield folder, origin


@contextlib.contextmanager
def _saved(run: Run, model: Any, tokenizer: Any, tokenizer_from: Path | None = None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ptrain-gguf-", dir=run.dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from))
        tokenizer.save_pretrained(tmp)
        yield Path(tmp)


def _merged(model: Any) -> Any:
    """A model without peft adapters: a full-precision merged copy where it carries them."""
    if hasattr(model, "merge_and_unload"):
        import copy

        try:
            return copy.deepcopy(model).merge_and_unload()
        except (AttributeError, ValueError, RuntimeError) as err:
            raise UsageError(f"gguf: this run's adapter cannot be merged into the model ({err}); GGUF needs a full model") from None
    return model


def _merge_adapter(folder: Path, run: Run) -> Any:
    from peft import PeftModel

    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    base_name = config.get("base_model_name_or_path")
    if not base_name:
        raise UsageError(f"{folder}/adapter_config.json names no base model (base_model_name_or_path) to merge into")
    base, _ = load_pretrained(str(base_name), key="gguf.source", seed=run.recipe.seed, dtype="float32")
    try:
        return PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError, AttributeError) as err:
        raise UsageError(f"{folder}: cannot merge this adapter into its base model for GGUF ({err})") from None


def held_out_rows(run: Run, section: GgufSection, origin: Path | None) -> HeldOut:
    """The held-out rows and how training rendered them: the source run's samples, else this run's eval split."""
    settings = run.recipe.eval
    new_tokens = section.max_new_tokens or settings.max_new_tokens
    if origin is not None:
        try:
            metrics = json.loads((origin / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metrics = {}
        chat = bool(((metrics.get("data") or {}).get("prompt") or {}).get("chat"))
        samples = origin / "samples.jsonl"
        rows = []
        if samples.is_file():
            for line in samples.read_text(encoding="utf-8").splitlines()[: section.prompts]:
                row = json.loads(line)
                rows.append({**row, "output": row.get("reference")})
        return HeldOut(rows, chat, str(samples), settings.metric, new_tokens)
    prompt = (run.metrics.get("data") or {}).get("prompt") or {}
    rows = list(run.eval_dataset)[: section.prompts] if run.eval_dataset is not None else []
    return HeldOut(rows, bool(prompt.get("chat")), "this run's eval split", settings.metric, new_tokens)


# ------------------------------------------------------------------ writing and checking


def export_and_check(run: Run, section: GgufSection, source: Path, origin: Path | None) -> list[str]:
    from transformers import AutoTokenizer

    stem = section.name or re.sub(r"[^A-Za-z0-9._-]+", "-", run.recipe.name).strip("-") or "model"
    source_tokenizer = AutoTokenizer.from_pretrained(str(source))
    held_out = held_out_rows(run, section, origin) if section.check else None
    source_model = source_answers = None
    source_quality: dict[str, Any] = {}
    if held_out is not None:
        source_model, _ = load_pretrained(str(source), key="gguf.source", dtype="float32")
        source_model.eval()
        started = time.perf_counter()
        source_answers = greedy(source_model, source_tokenizer, [r["prompt"] for r in held_out.rows], held_out.max_new_tokens)
        seconds = time.perf_counter() - started
        source_quality = quality(source_model, source_tokenizer, source_answers, held_out, section.window, section.max_tokens)
        if seconds > 0:  # transformers' greedy generation (what ptrain eval and ptrain chat run), for llama.cpp's tokens/s
            source_quality["tokens_per_s"] = round(sum(map(len, source_answers)) / seconds, 1)
    chat_template = getattr(source_tokenizer, "chat_template", None)
    prompt_settings = _prompt_settings(run, origin)
    table: dict[str, Any] = {"source": str(section.source or source), "types": list(section.types), "files": {}, "passed": 0,
                             "unexported": source_quality}
    written: list[str] = []
    for qtype in section.types:
        folder = run.dir / "gguf" / qtype
        filename = f"{stem}-{qtype}.gguf"
        run.log.info("gguf: %s -> %s", qtype, folder / filename)
        with atomic_dir(folder) as tmp:
            started = time.perf_counter()
            quantized: dict[str, Any] = {}
            if qtype in LLAMA_CPP_TYPES:  # ptrain writes f32, llama.cpp's quantizer writes the K-quant from it
                intermediate = tmp / f"{stem}-f32.intermediate.gguf"
                result = write_gguf(source, intermediate, "f32", chat_template, stem)
                try:
                    quantized = llamacpp.quantize(intermediate, tmp / filename, qtype, _threads())
                finally:
                    intermediate.unlink(missing_ok=True)
            else:
                result = write_gguf(source, tmp / filename, qtype, chat_template, stem)
            entry: dict[str, Any] = {"path": str(folder / filename), "size_mb": round((tmp / filename).stat().st_size / 2**20, 3),
                                     "architecture": result.architecture, "tokenizer": result.tokenizer, "tensors": result.tensors,
                                     "write_s": round(time.perf_counter() - started, 2)}
            if result.kept_f16:
                entry["kept_f16"] = result.kept_f16
            entry.update(quantized)
            if held_out is not None:
                entry.update(check_file(filename, tmp / filename, qtype, source_model, source_tokenizer, source_answers, source_quality,
                                        held_out, section.window, section.max_tokens, section.llama_cpp))
                entry["passed"] = True
            write_text(tmp / "Modelfile", modelfile(filename, source_tokenizer, section, prompt_settings))
        table["files"][qtype] = entry
        table["passed"] += bool(entry.get("passed"))
        run.artifacts[f"gguf/{qtype}"] = str(folder)
        written.append(str(folder))
        final = {k: entry.get(k) for k in ("task_metric", "perplexity_increase_pct", "max_logit_change")}
        final.update(window_perplexity=entry.get("perplexity"), model_size_mb=entry["size_mb"])
        run.record_model(f"gguf-{qtype}", model=f"{folder / filename} (GGUF {qtype})", final=final)
    run.metrics["gguf"] = table
    write_json(run.dir / "gguf" / "checks.json", table)
    for qtype in section.types:
        write_model_card(run, run.dir / "gguf" / qtype, kind="gguf", notes=card_notes(qtype, table["files"][qtype], stem, run.dir / "gguf" / qtype))
    del source_model
    return written


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _prompt_settings(run: Run, origin: Path | None) -> dict[str, Any]:
    metrics = run.metrics
    if origin is not None:
        try:
            metrics = json.loads((origin / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metrics = {}
    prompt = (metrics.get("data") or {}).get("prompt")
    return prompt if isinstance(prompt, dict) else {}


def stop_tokens(tokenizer: Any) -> list[str]:
    """EOS and the special tokens that end a turn in the chat template (``<|im_end|>``, ``<|eot_id|>``…)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    found = [tokenizer.eos_token] if tokenizer.eos_token else []
    special = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special]
    for token in [*special, *getattr(tokenizer, "all_special_tokens", [])]:
        if token in template and re.search(r"end|eot", token, re.IGNORECASE) and token not in found:
            found.append(token)
    return found


def modelfile(filename: str, tokenizer: Any, section: GgufSection, prompt: dict[str, Any]) -> str:
    """An Ollama Modelfile: the file, its stop tokens and sampling defaults. A chat-trained run relies on the chat template
    embedded in the GGUF; a run trained with a prompt template gets that template (``{instruction}`` -> ``{{ .Prompt }}``)."""
    lines = [f"FROM ./{filename}", ""]
    if not prompt.get("chat") and prompt.get("template_no_input"):
        go = prompt["template_no_input"].replace("{instruction}", "{{ .Prompt }}")
        lines += [f'TEMPLATE """{go}{{{{ .Response }}}}"""', ""]
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens(tokenizer)]
    lines += [f"PARAMETER temperature {section.temperature:g}", f"PARAMETER top_p {section.top_p:g}"]
    return "\n".join(lines) + "\n"


def card_notes(qtype: str, entry: dict[str, Any], stem: str, folder: Path) -> str:
    writer = "with the `gguf` package"
    if entry.get("quantizer"):
        kinds = ", ".join(f"{n} {k}" for k, n in entry.get("tensor_types", {}).items())
        writer = f"as f32 with the `gguf` package, then quantized by llama.cpp ({entry['quantizer']}; tensors: {kinds})"
    lines = ["## GGUF", "", f"`{Path(entry['path']).name}`: GGUF {qtype}, architecture `{entry['architecture']}`, tokenizer "
             f"`{entry['tokenizer']}`, {entry['size_mb']} MiB, written by ptrain {writer}; the chat template and "
             "special token ids the run trained with are in its metadata."]
    if entry.get("passed"):
        checks = entry["checks"]
        facts = [f"reloaded by {entry['reader']}", "special token ids equal",
                 f"chat template renders {checks['template_rows']} held-out conversations byte-identically",
                 f"tokenizer round trip on {checks['round_trip_texts']} held-out texts"]
        if "generations_identical_to_rounded_source" in checks:
            facts.append(f"greedy generations identical on {checks['generations_identical_to_rounded_source']} held-out prompts")
        lines.append("\nChecked after writing: " + "; ".join(facts) + ".")
        measured = [f"largest logit change {entry['max_logit_change']}", f"identical generations {entry['identical_generations']}"]
        if entry.get("task_metric_change") is not None:
            measured.append(f"task metric {entry['task_metric_change']:+.4f}")
        if entry.get("perplexity_increase_pct") is not None:
            measured.append(f"perplexity {entry['perplexity_increase_pct']:+.2f} %")
        lines.append("Against the unexported model: " + "; ".join(measured) + ".")
        reading = entry.get("llama_cpp") or {}
        if "skipped" in reading:
            lines.append(f"Not read with llama.cpp: {reading['skipped']}.")
        elif reading:
            seen = [f"tokenizes {reading['tokenization_identical_texts']} held-out texts to the source's ids",
                    f"greedy answers identical to the unexported model's on {reading['identical_generations']} prompts "
                    f"(to transformers' reading of the file: {reading['identical_to_transformers_reading']})",
                    f"largest logit change {reading['max_logit_change']}"]
            if reading.get("task_metric") is not None:
                seen.append(f"task metric {reading['task_metric']}")
            if reading.get("tokens_per_s"):
                seen.append(f"{reading['tokens_per_s']} tokens/s on {reading['threads']} CPU threads")
            lines.append(f"Read by llama.cpp ({reading['reader']}): " + "; ".join(seen) + ".")
    else:
        lines.append("\nNot checked (`gguf.check = false`).")
    lines += ["", "With Ollama (the Modelfile beside the file):", "", "```sh", f"cd {folder}", f"ollama create {stem.lower()}-{qtype} -f Modelfile",
              f"ollama run {stem.lower()}-{qtype}", "```", "", "With llama.cpp: `llama-cli -m " + str(folder / Path(entry["path"]).name) + "`; "
              f"with ptrain: `ptrain serve {folder / Path(entry['path']).name}`."]
    return "\n".join(lines)
