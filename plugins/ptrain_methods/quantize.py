"""Post-training quantization: bitsandbytes (INT8 LLM.int8, 4-bit NF4/FP4) and torchao (INT8) exports, each measured.

The method needs no trainer: ``methods = ["quantize"]`` quantizes the recipe's model (or
``quantize.source``); after a training method it quantizes the trained model. Its ``export`` hook
is a wrapper: every other exporter runs first (the core saves ``model/``, a LoRA method its merged
model), then each variant is quantized from that directory, saved to ``quantized/<variant>/``
(safetensors + ``quantization_config`` in ``config.json``, reloadable with plain
``from_pretrained``), reloaded from disk and measured against the unquantized model on the same
text and prompts. The table lands in ``metrics.json`` under ``quantize`` and on the terminal; each
model row names the backend (and its version) that made it.

Backends: bitsandbytes (the default; the GPU path, NF4/FP4, what QLoRA trains on) and, with
``pip install torchao``, torchao's ``ao-int8-weight`` (int8 weights with per-row scales, activations
in the compute dtype) and ``ao-int8-dynamic`` (int8 weights and per-token int8 activations). On CPU
torchao's INT8 weight-only is the better INT8: on SmolLM2-135M it lost 0.8 % perplexity and ran at
1.2x fp32 speed where bitsandbytes INT8 lost 3.1 % at 0.46x (bench/quantize_smollm2.py). Both
backends go through transformers: ``from_pretrained(quantization_config=BitsAndBytesConfig(...) or
TorchAoConfig(...))``.

Export format of the torchao variants: safetensors as well. transformers' torchao quantizer flattens
each torchao tensor subclass into plain tensors (``...down_proj._weight_qdata``, ``_weight_scale``,
``_weight_zero_point``) and records the subclass (``Int8Tensor``) in the safetensors header; a plain
``from_pretrained(dir)`` rebuilds it, with torchao installed. That needs torchao >= 0.16 and the
configs' ``version=2`` (before 0.18 the default, version 1, makes an ``AffineQuantizedTensor`` that
safetensors export rejects). No int4 torchao variant: torchao 0.18's ``Int4WeightOnlyConfig`` needs
mslk or CUDA, and the CPU-capable ``IntxWeightOnlyConfig(torch.int4)`` keeps one int4 value per int8
byte, no smaller than INT8.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ptrain import RecipeError, Run, UsageError, hookimpl

Variant = Literal["int8", "nf4", "nf4-dq", "fp4", "fp4-dq", "ao-int8-weight", "ao-int8-dynamic"]
VARIANTS: dict[str, dict[str, Any]] = {
    "int8": {"load_in_8bit": True},
    "nf4": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False},
    "nf4-dq": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
    "fp4": {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False},
    "fp4-dq": {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": True},
}
"""Variant name -> ``BitsAndBytesConfig`` arguments. ``-dq``: double quantization (the 4-bit
block scales are quantized too, ~0.4 bit/parameter less, as in QLoRA)."""
MIN_BITSANDBYTES = (0, 45)
TORCHAO_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "ao-int8-weight": ("Int8WeightOnlyConfig", {"version": 2, "set_inductor_config": False}),
    "ao-int8-dynamic": ("Int8DynamicActivationInt8WeightConfig", {"version": 2, "set_inductor_config": False}),
}
"""Variant name -> (``torchao.quantization`` config class, its arguments), for ``TorchAoConfig``.
``version=2``: the ``Int8Tensor`` format that exports to safetensors (the default from torchao 0.18,
not before); ``set_inductor_config=False``: nothing here compiles, so leave torch's global inductor
settings alone."""
MIN_TORCHAO = (0, 16)
UNQUANTIZED = "unquantized"


@dataclass
class QuantizeSection:
    """``[quantize]``: which quantized variants to export and how to measure them."""

    variants: list[Variant] = field(default_factory=lambda: ["int8", "nf4"])
    """Variants to export. bitsandbytes: ``int8`` (LLM.int8), ``nf4``/``fp4`` (4-bit), ``nf4-dq``/``fp4-dq``
    (4-bit with double quantization). torchao (``pip install torchao``): ``ao-int8-weight`` (int8
    weight-only, the faster INT8 on CPU), ``ao-int8-dynamic`` (int8 weights and activations)."""
    source: str | None = None
    """Model directory (or a previous run's directory holding ``model/``) or hub ID to quantize;
    default: this run's model (the trained one when the recipe trains, else ``[model]``)."""
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """dtype of the 4-bit matmuls and of the modules left unquantized; ``auto``: bfloat16 (or float16)
    on a GPU, float32 on CPU. The unquantized reference is measured in ``[model].dtype``."""
    llm_int8_threshold: float = 6.0
    """bitsandbytes INT8 outlier threshold: activations above it are computed in 16-bit (LLM.int8 mixed decomposition)."""
    evaluate: bool = True
    """Measure every variant against the unquantized model; false only exports."""
    perplexity_text: str | None = None
    """UTF-8 text file for perplexity; default: the eval split, prompt + completion of each row joined by blank lines."""
    window: int = 512
    """Sliding-window length for perplexity (capped at the model's maximum positions)."""
    stride: int = 256
    """Tokens between window starts; each window scores only its last ``stride`` tokens (context >= window - stride)."""
    max_tokens: int = 32768
    """Perplexity reads at most this many tokens of the text."""

    def validate(self) -> None:
        if not self.variants:
            raise RecipeError("needs at least one variant, e.g. [\"int8\", \"nf4\"]", key="variants")
        duplicates = sorted({v for v in self.variants if self.variants.count(v) > 1})
        if duplicates:
            raise RecipeError(f"variant {duplicates[0]!r} is listed twice", key="variants")
        if not 0 < self.stride <= self.window:
            raise RecipeError(f"need 0 < stride <= window, got stride {self.stride} and window {self.window}", key="stride")
        if self.max_tokens < 2:
            raise RecipeError("must be >= 2", key="max_tokens")
        if self.llm_int8_threshold <= 0:
            raise RecipeError("must be > 0 (6.0 is the LLM.int8 paper's value)", key="llm_int8_threshold")
        if self.perplexity_text is not None and not Path(self.perplexity_text).expanduser().is_file():
            raise RecipeError(f"text file {self.perplexity_text!r} not found (relative paths are read from {Path.cwd()})", key="perplexity_text")
        if self.source is not None and _looks_local(self.source) and not Path(self.source).expanduser().is_dir():
            raise RecipeError(f"model directory {self.source!r} not found (relative paths are read from {Path.cwd()})", key="source")
        for name, problem_of in (("bitsandbytes", bitsandbytes_problem), ("torchao", torchao_problem)):
            wanted = [v for v in self.variants if backend(v) == name]
            problem = problem_of() if wanted else None
            if problem:
                raise RecipeError(f"variant {wanted[0]!r} cannot be made: {problem}", key="variants")


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def package_problem(package: str, minimum: tuple[int, int], why_minimum: str) -> str | None:
    """Why ``package`` cannot be used (not installed, too old), read from its metadata without importing it."""
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return f"{package} is not installed; pip install '{package}>={minimum[0]}.{minimum[1]}'"
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if found < minimum:
        return f"{package} {version} is too old ({why_minimum}); pip install -U {package}"
    return None


def bitsandbytes_problem() -> str | None:
    return package_problem("bitsandbytes", MIN_BITSANDBYTES, "CPU and multi-backend support need >= 0.45")


def torchao_problem() -> str | None:
    return package_problem("torchao", MIN_TORCHAO, "its int8 weights export to safetensors from 0.16")


def backend(variant: str) -> str:
    """The library that makes ``variant``: ``torchao`` or ``bitsandbytes``."""
    return "torchao" if variant in TORCHAO_VARIANTS else "bitsandbytes"


def backend_label(variant: str) -> str:
    """``"bitsandbytes 0.50.2"``, ``"torchao 0.18.0"``: the backend that made ``variant`` and its version."""
    name = backend(variant)
    return f"{name} {importlib.metadata.version(name)}"


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"quantize": QuantizeSection}


@hookimpl(wrapper=True)
def load_model(run: Run) -> Any:
    """Before anything is loaded or trained: prove every variant runs on this machine's backend."""
    section: QuantizeSection = run.section("quantize")
    for variant in section.variants:
        probe(variant, section)
    return (yield)


@hookimpl(wrapper=True)
def export(run: Run) -> Any:
    written = yield
    section: QuantizeSection = run.section("quantize")
    with _source_model(run, section) as source:
        paths = quantize_and_measure(run, section, source)
    return [*(written or []), paths]  # one list per implementation, as the core expects


# ------------------------------------------------------------------ quantizing


def compute_dtype(name: str) -> Any:
    import torch

    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(variant: str, section: QuantizeSection, skip: list[str] | None = None) -> Any:
    """The transformers ``quantization_config`` that makes ``variant`` in ``from_pretrained``; ``skip`` names
    modules a 4-bit variant leaves unquantized."""
    return torchao_config(variant) if backend(variant) == "torchao" else bnb_config(variant, section, skip)


def torchao_config(variant: str) -> Any:
    import torchao.quantization
    from transformers import TorchAoConfig

    name, options = TORCHAO_VARIANTS[variant]
    return TorchAoConfig(quant_type=getattr(torchao.quantization, name)(**options))


def bnb_config(variant: str, section: QuantizeSection, skip: list[str] | None = None) -> Any:
    from transformers import BitsAndBytesConfig

    options = dict(VARIANTS[variant])
    if variant == "int8":
        options["llm_int8_threshold"] = section.llm_int8_threshold
    else:
        options["bnb_4bit_compute_dtype"] = compute_dtype(section.compute_dtype)
        if skip:
            options["llm_int8_skip_modules"] = list(skip)
    return BitsAndBytesConfig(**options)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def probe(variant: str, section: QuantizeSection) -> None:
    """Quantize and run one small linear layer as ``variant`` would; a UsageError naming the variant and the fix if it cannot."""
    if backend(variant) == "torchao":
        _probe_torchao(variant, section)
        return
    import torch

    problem = bitsandbytes_problem()
    if problem:
        raise UsageError(f"quantize variant {variant!r} cannot be made: {problem}")
    device = _device()
    try:
        import bitsandbytes as bnb

        dtype = compute_dtype(section.compute_dtype)
        with _quiet():
            if variant == "int8":
                layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False, threshold=section.llm_int8_threshold)
            else:
                options = VARIANTS[variant]
                layer = bnb.nn.Linear4bit(
                    64,
                    64,
                    bias=False,
                    compute_dtype=dtype,
                    quant_type=options["bnb_4bit_quant_type"],
                    compress_statistics=options["bnb_4bit_use_double_quant"],
                )
            layer = layer.to(device)
            layer(torch.randn(2, 64, dtype=dtype, device=device))
    except Exception as err:  # any backend failure: say which variant and what to do
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        version = importlib.metadata.version("bitsandbytes")
        raise UsageError(
            f"quantize variant {variant!r} does not run on this machine ({device}, bitsandbytes {version}): "
            f"{type(err).__name__}: {first}; install a bitsandbytes build for this backend "
            f"(pip install -U bitsandbytes; CPU needs >= 0.45), run on a CUDA GPU, or remove {variant!r} from quantize.variants"
        ) from err


def _probe_torchao(variant: str, section: QuantizeSection) -> None:
    """``probe`` for a torchao variant: quantize one small linear layer with its config and run it."""
    problem = torchao_problem()
    if problem:
        raise UsageError(f"quantize variant {variant!r} cannot be made: {problem}")
    device = _device()
    try:
        import torch
        from torchao.quantization import quantize_

        dtype = compute_dtype(section.compute_dtype)
        layer = torch.nn.Linear(64, 64, bias=False).to(device=device, dtype=dtype)
        quantize_(layer, torchao_config(variant).quant_type)
        layer(torch.randn(2, 64, dtype=dtype, device=device))
    except Exception as err:  # any backend failure: say which variant and what to do
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(
            f"quantize variant {variant!r} does not run on this machine ({device}, {backend_label(variant)}): "
            f"{type(err).__name__}: {first}; pip install -U torchao (built for this torch), "
            f"or remove {variant!r} from quantize.variants"
        ) from err


def footprint_bytes(model: Any) -> int:
    """Bytes of the model's parameters and buffers, as ``get_memory_footprint`` counts them, except that a
    torchao tensor subclass is counted by the inner tensors that hold it (int8 data, scales, zero
    points): ``get_memory_footprint`` counts it at its outer dtype, as if it were not quantized."""

    def size(tensor: Any) -> int:
        if hasattr(tensor, "__tensor_flatten__"):
            names, _ = tensor.__tensor_flatten__()
            return sum(size(inner) for inner in (getattr(tensor, n) for n in names) if inner is not None)
        return tensor.nbytes

    return sum(size(t) for t in [*model.parameters(), *model.buffers()])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """bitsandbytes warns once per matmul on CPU that int8 inputs are cast to float16; say it once in the log instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*inputs will be cast from.*")
        yield


@contextlib.contextmanager
def _source_model(run: Run, section: QuantizeSection) -> Iterator[str]:
    """The directory or hub ID to quantize: ``source``, else this run's exported model (saved to a temporary
    directory when ``output.save_model`` is false)."""
    if section.source:
        path = Path(section.source).expanduser()
        if path.is_dir() and not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
            path = path / "model"  # a previous run's directory
        yield str(path) if path.is_dir() else section.source
        return
    if "model" in run.artifacts:
        yield run.artifacts["model"]
        return
    if run.trainer is None and run.recipe.model.keep_layers is None:  # nothing changed the model: quantize it where it lies
        from ptrain.models import model_location

        yield str(model_location(run.recipe.model, run.recipe.seed))
        return
    with tempfile.TemporaryDirectory(prefix="ptrain-quantize-", dir=run.dir) as tmp:
        run.model.save_pretrained(tmp, safe_serialization=True)
        run.tokenizer.save_pretrained(tmp)
        yield tmp


def _tokenizer(source: str, fallback: Any) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        return fallback
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load(location: str, **kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM

    with _quiet():
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    model.eval()
    return model


def quantize_and_measure(run: Run, section: QuantizeSection, source: str) -> list[str]:
    from ptrain.artifacts import atomic_dir, dir_size
    from ptrain.bnb import four_bit_skip_modules
    from ptrain.models import resolve_dtype

    tokenizer = _tokenizer(source, run.tokenizer)
    dtype = compute_dtype(section.compute_dtype)
    written: list[str] = []
    # 4-bit layers whose shape bitsandbytes' packed CPU kernel (AVX512-BF16) cannot take stay unquantized,
    # so every export reloads and generates with plain from_pretrained on any CPU
    skip = four_bit_skip_modules(source) if any(v in VARIANTS and v != "int8" for v in section.variants) else None
    if skip:
        run.log.warning(
            "quantize: %d layers stay unquantized in the 4-bit variants, their shape does not fit bitsandbytes' "
            "4-bit CPU layout (out_features a multiple of 32, in_features of 64): %s", len(skip), ", ".join(skip),
        )
    unquantized = {v: skip for v in section.variants if skip and v in VARIANTS and v != "int8"}
    for variant in section.variants:
        target = run.dir / "quantized" / variant
        run.log.info("quantize: %s -> %s", variant, target)
        with atomic_dir(target) as tmp:
            try:
                config = quantization_config(variant, section, unquantized.get(variant))
                model = _load(source, quantization_config=config, dtype=dtype, device_map=_device())
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
        "device": _device(),
        "compute_dtype": str(dtype).removeprefix("torch."),
        "llm_int8_threshold": section.llm_int8_threshold,
    }
    if section.evaluate:
        text = _perplexity_text(run, section, tokenizer)
        prompts = list(run.eval_dataset)[: run.recipe.eval.max_samples] if run.eval_dataset is not None else []
        reference_dtype = resolve_dtype(run.recipe.model.dtype)
        models = {UNQUANTIZED: (source, {"dtype": reference_dtype, "device_map": _device()})}
        models.update({v: (str(run.dir / "quantized" / v), {"dtype": dtype, "device_map": _device()}) for v in section.variants})
        rows: dict[str, dict[str, Any]] = {}
        for name, (location, kwargs) in models.items():
            rows[name] = measure(run, section, location, kwargs, tokenizer, text, prompts)
            if name != UNQUANTIZED:
                rows[name]["backend"] = backends[name]
                rows[name]["disk_mb"] = round(dir_size(location) / 2**20, 3)
                if name in unquantized:
                    rows[name]["unquantized_modules"] = unquantized[name]
        rows[UNQUANTIZED]["disk_mb"] = _weights_mb(source)
        _compare(rows)
        window = {key: rows[UNQUANTIZED].get(key) for key in ("perplexity_tokens", "window", "stride")}
        for row in rows.values():
            for key in window:
                row.pop(key, None)
        table.update(text=section.perplexity_text or "eval split", **window, task_rows=len(prompts), models=rows)
    run.metrics["quantize"] = table
    if section.evaluate:
        show(run, table)
    return written


def _weights_mb(source: str) -> float | None:
    """Size of the unquantized model's files as they would be exported (weights, config, tokenizer)."""
    from ptrain.artifacts import dir_size

    path = Path(source)
    return round(dir_size(path) / 2**20, 3) if path.is_dir() else None


def _perplexity_text(run: Run, section: QuantizeSection, tokenizer: Any) -> str | None:
    if section.perplexity_text:
        return Path(section.perplexity_text).expanduser().read_text(encoding="utf-8")
    rows = list(run.eval_dataset) if run.eval_dataset is not None else []
    if not rows:
        return None
    return "\n\n".join(r["prompt"] + r["completion"] for r in rows)


def measure(
    run: Run,
    section: QuantizeSection,
    location: str,
    kwargs: dict[str, Any],
    tokenizer: Any,
    text: str | None,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """Load one model from ``location`` and measure it: perplexity, task metric, footprint, speed, peak memory."""
    from ptrain.evaluation import generate, sliding_window_perplexity, task_scores

    result: dict[str, Any] = {"path": location}
    with peak_memory() as peak:
        model = _load(location, **kwargs)
        result["footprint_mb"] = round(footprint_bytes(model) / 2**20, 3)
        with _quiet():
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
    result["peak_memory_mb"] = round(peak.mb, 1)
    return result


def _compare(rows: dict[str, dict[str, Any]]) -> None:
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


class peak_memory:
    """Peak memory while the block runs, above what was in use when it started, in MiB.

    On CUDA: peak allocated tensor memory. On Linux CPU: the peak resident set (VmHWM), reset at
    entry through ``/proc/self/clear_refs`` so each block is measured on its own; elsewhere the
    process's lifetime peak (``ru_maxrss``), which never decreases.
    """

    def __enter__(self) -> peak_memory:
        import torch

        self.mb = 0.0
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = _resident_bytes(reset=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _resident_bytes(peak=True)
        self.mb = max(peak - self.start, 0) / 2**20


def _resident_bytes(reset: bool = False, peak: bool = False) -> int:
    status = Path("/proc/self/status")
    if not status.is_file():
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss if sys.platform == "darwin" else maxrss * 1024
    if reset:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
    found = re.search(rf"{'VmHWM' if peak else 'VmRSS'}:\s+(\d+) kB", status.read_text())
    return int(found.group(1)) * 1024 if found else 0


# ------------------------------------------------------------------ display

COLUMNS = [
    ("backend", "backend"),
    ("perplexity", "ppl"),
    ("perplexity_increase_pct", "Δppl%"),
    ("task_metric", "task"),
    ("disk_mb", "disk MiB"),
    ("footprint_mb", "mem MiB"),
    ("footprint_ratio", "mem ×"),
    ("generation_tokens_per_s", "tok/s"),
    ("peak_memory_mb", "peak MiB"),
]


def show(run: Run, table: dict[str, Any]) -> None:
    """The comparison table on the terminal (rich) and in the log."""
    rows = table["models"]
    title = (
        f"quantization of {table['source']} ({table['backend']}, {table['device']}; perplexity over "
        f"{table['perplexity_tokens']} tokens of the {table['text']}, window {table['window']}/stride {table['stride']})"
    )
    for name, row in rows.items():
        run.log.info("quantize %s: %s", name, ", ".join(f"{key}={row.get(key)}" for key, _ in COLUMNS))
    if run.console is None or not run.is_main_process:
        return
    from rich.table import Table

    grid = Table(title=title, title_justify="left")
    grid.add_column("model", no_wrap=True)
    for _, header in COLUMNS:
        grid.add_column(header, justify="right")
    for name, row in rows.items():
        grid.add_row(name, *(_cell(row.get(key)) for key, _ in COLUMNS))
    run.console.print(grid)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
