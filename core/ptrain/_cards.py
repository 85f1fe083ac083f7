"""Model cards: a ``README.md`` in the Hugging Face Hub's model-card format for every exported model directory.

YAML front matter (``base_model`` when it is a hub ID, ``library_name``, ``pipeline_tag``, ``tags``,
``datasets``), then what a reader needs to trust and use the model: the base model, the methods
and their settings, the data sources, the training settings, the base-vs-final metrics table
(the rows of the end-of-run table), the ptrain version and how to load it. Exporters call
:func:`write_model_card` once their directory is written; a quantized variant passes its format
and measured quality change as ``notes``.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptrain import _paths

if TYPE_CHECKING:
    from ptrain._run import Run

HUB_NAMES = {"builtin:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""Built-in models that are a converted copy of a hub model: the card names the original."""
TRAINING_KEYS = ("max_steps", "epochs", "batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler",
                 "warmup_ratio", "weight_decay", "max_length", "precision", "optim")


def _kind(directory: Path) -> str:
    if (directory / "adapter_config.json").is_file():
        return "adapter"
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "model"
    return "quantized" if isinstance(config, dict) and config.get("quantization_config") else "model"


def hub_id(name: str) -> str | None:
    """``name`` as a hub model ID, or None for a local path or a random-init built-in."""
    if name in HUB_NAMES:
        return HUB_NAMES[name]
    if name.startswith(_paths.BUILTIN) or _paths.is_local(name) or name.count("/") != 1:
        return None
    return name


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:", *(f"- {v if PLAIN_YAML.fullmatch(str(v)) else json.dumps(str(v))}" for v in values)] if values else []


PLAIN_YAML = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+-]*")
"""A value the front matter writes unquoted; any other is written as a quoted (JSON) string."""
MARKDOWN_SPECIAL = re.compile(r"([\\`*{}\[\]<>|#~!]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def text(value: Any) -> str:
    """Recipe text as inert Markdown prose: no raw HTML (``<`` ``>`` ``&`` become entities), no code fence,
    link, emphasis or table cell it could open; line breaks kept (a paragraph stays a paragraph)."""
    from ptrain._redact import redact

    escaped = html.escape(redact(str(value)), quote=False)  # redacted first: an escaped token no longer looks like one
    return "\n".join(MARKDOWN_SPECIAL.sub(r"\\\1", line) for line in escaped.splitlines())


def code(value: Any) -> str:
    """Recipe text as one inline code span: on one line, in a fence longer than any run of backticks it holds."""
    from ptrain._redact import redact

    flat = " ".join(redact(str(value)).split()).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def _metrics_table(run: Run) -> str:
    from ptrain._report import RunSummary, declared_rows, expand, markdown, table

    summary = RunSummary(run.recipe.name, run.dir, run.metrics, {})
    header, lines = table(expand(summary), declared_rows(run.recipe))
    return markdown(header, lines) if lines else "No metrics were measured (the recipe turned evaluation off).\n"


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "[]"
    if isinstance(value, dict):
        return ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) or "{}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def render_card(run: Run, directory: Path, kind: str, notes: str = "") -> str:
    """The card's text; see the module's docstring."""
    from ptrain import __version__

    recipe = run.recipe
    base = recipe.model.name
    base_hub = hub_id(base)
    table = recipe.to_table()
    data = run.metrics.get("data") or {}
    sources = data.get("sources") or {}
    datasets = [s["source"] for s in sources.values() if isinstance(s, dict) and hub_id(str(s.get("source", "")))]
    front = ["---", *([f"base_model: {base_hub}"] if base_hub else []), f"library_name: {'peft' if kind == 'adapter' else 'transformers'}",
             "pipeline_tag: text-generation", *_yaml_list("tags", ["ptrain", *recipe.methods]), *_yaml_list("datasets", datasets), "---"]
    what = {"adapter": "LoRA adapter", "quantized": "quantized model", "model": "model", "gguf": "GGUF export"}[kind]
    lines = [*front, "", f"# {text(recipe.name)}: {what}", ""]
    if recipe.description:
        lines += [text(recipe.description), ""]
    origin = f" (a converted copy of [{base_hub}](https://huggingface.co/{base_hub}))" if base in HUB_NAMES else ""
    random_init = " (a random-init ptrain built-in for tests and demos)" if base.startswith(_paths.BUILTIN) and not origin else ""
    lines += [f"Fine-tuned from {code(base)}{origin}{random_init} with [ptrain](https://pypi.org/project/ptrain/) {__version__}, "
              f"methods {' → '.join(f'`{m}`' for m in recipe.methods)} (in recipe order).", ""]
    lines += ["## Base model", "", code(base) + (f" = {code(base_hub)}" if base_hub and base_hub != base else "")
              + (f", layers kept: {recipe.model.keep_layers}" if recipe.model.keep_layers else "") + f", dtype {recipe.model.dtype}.", ""]
    lines += ["## Methods", ""]
    for method in recipe.methods:
        settings = table.get(method)
        detail = ", ".join(f"{text(k)} = {text(_value(v))}" for k, v in settings.items()) if isinstance(settings, dict) and settings else "defaults"
        lines.append(f"- **{text(method)}**: {detail}")
    lines += [""]
    if notes:
        lines += [notes.rstrip(), ""]
    lines += ["## Data", ""]
    if sources:
        lines += ["| source | location | format | share | training rows | eval rows |", "| --- | --- | --- | ---: | ---: | ---: |"]
        for label, entry in sources.items():
            rows = entry.get("train_rows", entry.get("train_rows_read", ""))
            lines.append(f"| {text(label)} | {code(entry.get('source', ''))} | {text(entry.get('format') or '')} | {entry.get('weight', 1)} | {rows} | {entry.get('eval_rows', '')} |")
        if data.get("duplicates_dropped"):
            lines.append(f"\n{data['duplicates_dropped']} exact duplicate training rows were dropped (`data.dedup`).")
        if data.get("streaming"):
            lines.append("\nTraining rows were streamed (`data.streaming`): the counts are the rows read.")
    else:
        lines.append(f"{code(recipe.data.source)} (format {text(recipe.data.format)}).")
    lines += [""]
    train = run.metrics.get("train") or {}
    lines += ["## Training", ""]
    if train:
        settings = ", ".join(f"{k} = {_value(getattr(recipe.train, k))}" for k in TRAINING_KEYS)
        done = ", ".join(f"{k} {train[k]}" for k in ("steps", "train_loss", "train_time_s", "tokens_per_s", "peak_memory_mb") if train.get(k) is not None)
        lines += [f"Settings: {settings}.", "", f"Measured: {done}." if done else "", ""]
    else:
        lines += ["No training in this recipe (the model was exported as loaded).", ""]
    lines += ["## Results", "", "On the held-out evaluation rows, before (base) and after training (final); other models the run "
              "measured have columns of their own.", "", _metrics_table(run)]
    lines += ["## How to load", "", *_how_to_load(directory, kind, base, base_hub, run), ""]
    lines += [f"Written by ptrain {__version__} from {code(recipe.path or recipe.name)}; the run directory also holds metrics.json, "
              "samples.jsonl and recipe.resolved.toml.", ""]
    return "\n".join(lines)


def _how_to_load(directory: Path, kind: str, base: str, base_hub: str | None, run: Run) -> list[str]:
    path = str(directory)
    if kind == "gguf":  # the exporter's notes say how to run it (Ollama, llama.cpp); transformers reads it too
        files = sorted(p.name for p in directory.glob("*.gguf")) or ["model.gguf"]
        return ["With transformers (weights de-quantized to float32):", "", "```python",
                "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f'model = AutoModelForCausalLM.from_pretrained("{path}", gguf_file="{files[0]}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{path}", gguf_file="{files[0]}")', "```", "",
                f"Or serve it: `ptrain serve {directory / files[0]}` (an OpenAI-compatible endpoint on 127.0.0.1)."]
    chat = f"Or talk to it: `ptrain chat {run.dir}`" + (" (add `--base` to compare with the base model)" if kind != "quantized" else "")
    if kind == "adapter":
        where = base_hub or base
        load_base = (f'base = AutoModelForCausalLM.from_pretrained("{where}")' if base_hub or _paths.is_local(base)
                     else f'base, _ = ptrain.load_pretrained("{base}", seed={run.recipe.seed})  # the same random-init weights')
        return ["With peft, on top of its base model (not merged):", "", "```python",
                "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                *(["import ptrain"] if "ptrain.load_pretrained" in load_base else []), "", load_base,
                f'model = PeftModel.from_pretrained(base, "{path}")', f'tokenizer = AutoTokenizer.from_pretrained("{path}")', "```", "", chat]
    extra = [] if kind != "quantized" else ["", "The quantization settings are in config.json (`quantization_config`); "
                                             "loading needs the same backend installed (bitsandbytes or torchao)."]
    return ["With transformers:", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'model = AutoModelForCausalLM.from_pretrained("{path}")', f'tokenizer = AutoTokenizer.from_pretrained("{path}")',
            "```", *extra, "", chat]


def write_model_card(run: Run, directory: str | Path, *, kind: str | None = None, notes: str = "") -> Path:
    """Write ``README.md``, a Hub-format model card, into an exported model, adapter or quantized directory.

    :param run: the current run (its recipe, metrics and run directory fill the card).
    :param directory: the directory just written (``run.dir / "adapter"``…).
    :param kind: ``"model"``, ``"adapter"``, ``"quantized"`` or ``"gguf"`` (a folder holding a ``.gguf`` file); default: told from the directory's files.
    :param notes: Markdown added after the methods, e.g. a quantized variant's format and measured quality change.
    :return: the card's path.
    """
    from ptrain._artifacts import write_text

    directory = Path(directory)
    card = directory / "README.md"
    write_text(card, render_card(run, directory, kind or _kind(directory), notes))
    return card


def write_missing_cards(run: Run) -> list[Path]:
    """A card in every exported model or adapter directory (``run.artifacts``) that has none yet:
    the core's ``model/``, and any exporter's that did not call :func:`write_model_card`."""
    written = []
    for location in dict.fromkeys(run.artifacts.values()):
        folder = Path(location)
        if folder.is_dir() and not (folder / "README.md").exists() and any((folder / f).is_file() for f in ("config.json", "adapter_config.json")):
            written.append(write_model_card(run, folder))
    return written
