"""Model facts without weights: a model's shape and parameter counts read from its ``config.json`` alone.

Sources, none of which imports torch or reads a weight: a ``builtin:`` model (its spec and bundled
tokenizer), a local model directory or a ptrain run directory (``config.json``), a GGUF file's metadata
(the ``gguf`` package's reader, numpy only; the result is cached), and a Hub ID's ``config.json`` (a few
KB, cached by ``huggingface_hub``) when the Hub is reachable. Offline with nothing cached, the answer is
"cannot know before loading" (:class:`FactsUnavailable`), never a guess.

Parameter counts by kind follow the architecture's layout: llama-like decoders (llama, mistral, qwen2,
gemma, phi3…: gated MLP, grouped-query attention) and gpt2-like ones (fused attention, 4x MLP, learned
positions). Other model types are counted with the llama layout and say so (``exact = False``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ptrain import _paths
from ptrain._errors import UsageError

GATED_MLP = {"llama", "mistral", "qwen2", "gemma", "phi3", "granite", "smollm3"}
"""Model types counted exactly with the llama layout (gate, up and down projections)."""
GPT2_LIKE = {"gpt2"}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


class FactsUnavailable(UsageError):
    """A model's facts cannot be known before loading it (the Hub is unreachable and nothing is cached,
    the directory has no ``config.json``, the config names no layer count)."""


@dataclass
class ModelFacts:
    """What a model is, from its configuration alone (:func:`ptrain.model_facts`)."""

    name: str
    """The name asked about (``builtin:tiny-llama``, a directory, a hub ID)."""
    architecture: str
    """The ``model_type`` (``llama``, ``gpt2``…)."""
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int | None
    head_dim: int
    tied_embeddings: bool
    """The output head shares the input embedding's weights (counted once)."""
    dtype: str
    """The dtype the checkpoint is stored in (``float32``, ``bfloat16``…)."""
    parameters: dict[str, int] = field(default_factory=dict)
    """Parameter counts by kind: ``embeddings`` (token and position), ``attention``, ``mlp``, ``norms``,
    ``head`` (0 when tied)."""
    exact: bool = True
    """False where the architecture is not one whose layout ptrain knows: counts use the llama layout."""
    source: str = ""
    """Where the facts came from (``builtin``, ``config.json``, ``gguf``, ``hub``)."""

    @property
    def total_parameters(self) -> int:
        return sum(self.parameters.values())

    @property
    def linear_parameters(self) -> int:
        """Parameters in the layers' linear projections (attention and MLP): what 4-bit loading quantizes."""
        return self.parameters.get("attention", 0) + self.parameters.get("mlp", 0)

    @property
    def projections(self) -> dict[str, tuple[int, int]]:
        """Each layer's linear projections by module name: ``(in_features, out_features)`` (what adapters target)."""
        h, i = self.hidden_size, self.intermediate_size
        if self.architecture in GPT2_LIKE:
            return {"attn.c_attn": (h, 3 * h), "attn.c_proj": (h, h), "mlp.c_fc": (h, i), "mlp.c_proj": (i, h)}
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "self_attn.q_proj": (h, q), "self_attn.k_proj": (h, kv), "self_attn.v_proj": (h, kv), "self_attn.o_proj": (q, h),
            "mlp.gate_proj": (h, i), "mlp.up_proj": (h, i), "mlp.down_proj": (i, h),
        }

    def matching_projections(self, targets: list[str] | str) -> list[tuple[int, int]]:
        """The per-layer ``(in, out)`` shapes of the projections a peft ``target_modules`` names
        (``"all-linear"``, a list of name ends, or a regular expression on the name inside a layer)."""
        import re

        if targets == "all-linear":
            return list(self.projections.values())
        if isinstance(targets, str):
            return [s for n, s in self.projections.items() if re.search(targets, n)]
        return [s for n, s in self.projections.items() if any(n == t or n.endswith("." + t) for t in targets)]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_parameters": self.total_parameters}


def model_facts(source: Any, *, required: bool = True, revision: str | None = None) -> ModelFacts | None:
    """The facts of a model without loading it, and without importing torch: usable in ``validate_recipe``.

    :param source: a model name (``builtin:NAME``, a local model directory, a ptrain run directory, a
        ``.gguf`` file, a hub ID), a ``[model]`` section (:class:`ptrain.ModelSection`) or a whole
        :class:`ptrain.Recipe` (its ``model``; ``model.keep_layers`` is applied to the layer count).
    :param required: when the facts cannot be known before loading (offline hub ID with nothing
        cached), raise :class:`FactsUnavailable` (a :class:`ptrain.UsageError`) if True, return None if False.
    :param revision: the hub revision (a section or recipe gives its own).
    """
    section = getattr(source, "model", source) if not isinstance(source, str) else None
    name = source if isinstance(source, str) else section.name
    revision = revision or getattr(section, "revision", None)
    keep = getattr(section, "keep_layers", None)
    try:
        facts = _read(name, revision)
    except FactsUnavailable:
        if required:
            raise
        return None
    if keep is not None and keep < facts.layers:
        per_layer = {k: facts.parameters[k] // facts.layers for k in ("attention", "mlp")}
        norms_per_layer = (facts.parameters["norms"] - _final_norm(facts)) // facts.layers
        facts.parameters["attention"] = per_layer["attention"] * keep
        facts.parameters["mlp"] = per_layer["mlp"] * keep
        facts.parameters["norms"] = norms_per_layer * keep + _final_norm(facts)
        facts.layers = keep
    return facts


def _final_norm(facts: ModelFacts) -> int:
    return facts.hidden_size * (2 if facts.architecture in GPT2_LIKE else 1)


def _read(name: str, revision: str | None) -> ModelFacts:
    if name.startswith(_paths.BUILTIN):
        return _builtin(name)
    if _paths.is_local(name):
        path = _paths.expand(name)
        if path is not None and path.is_file() and path.suffix == ".gguf":
            return _gguf(name, path)
        directory = _paths.model_dir(name)
        if directory is None or not (directory / "config.json").is_file():
            raise FactsUnavailable(f"model {name!r}: no config.json there (nor in its model/); cannot know its shape before loading")
        return from_config(name, _read_json(directory / "config.json"), "config.json")
    return _hub(name, revision)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FactsUnavailable(f"{path}: not readable JSON ({err}); cannot know the model's shape before loading") from None
    if not isinstance(value, dict):
        raise FactsUnavailable(f"{path}: not a JSON object; cannot know the model's shape before loading")
    return value


def _builtin(name: str) -> ModelFacts:
    from ptrain._models import ASSETS, BUILTIN_MODELS, PRETRAINED_OFFLINE, cache_dir, gguf_file

    builtin = name.removeprefix(_paths.BUILTIN)
    if builtin in PRETRAINED_OFFLINE:
        converted = cache_dir() / "pretrained" / builtin / "config.json"
        if converted.is_file():
            return from_config(name, _read_json(converted), "config.json")
        return _gguf(name, gguf_file(builtin), dtype="float32")  # the conversion is fp32
    if builtin not in BUILTIN_MODELS:
        raise FactsUnavailable(f"unknown builtin model {name!r} (available: {', '.join('builtin:' + m for m in [*BUILTIN_MODELS, *PRETRAINED_OFFLINE])})")
    spec = dict(BUILTIN_MODELS[builtin])
    tokenizer = _read_json(ASSETS / spec.pop("tokenizer", builtin) / "tokenizer.json")
    vocab = set(tokenizer.get("model", {}).get("vocab", {})) | {t["content"] for t in tokenizer.get("added_tokens", [])}
    return from_config(name, {**spec, "vocab_size": len(vocab), "dtype": "float32"}, "builtin")


def _hub(name: str, revision: str | None) -> ModelFacts:
    why = "cannot know its shape before loading"
    try:
        from huggingface_hub import hf_hub_download

        try:  # the cached copy first: no network round trip when the config was fetched before
            path = hf_hub_download(name, "config.json", revision=revision, local_files_only=True)
        except Exception:
            path = hf_hub_download(name, "config.json", revision=revision)
    except ImportError:
        raise FactsUnavailable(f"model {name!r}: huggingface_hub is not installed; {why}") from None
    except Exception as err:  # offline, unknown repo, gated: all mean the same here
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        reason = "the Hub is not reachable (HF_HUB_OFFLINE=1) and its config.json is not cached" if offline else (
            f"its config.json could not be fetched ({type(err).__name__})"
        )
        raise FactsUnavailable(f"model {name!r}: {reason}; {why} (download it once, or name a local directory)") from None
    return from_config(name, _read_json(Path(path)), "hub")


GGUF_CACHE_VERSION = 1


def _gguf(name: str, path: Path, dtype: str | None = None) -> ModelFacts:
    """Facts from a GGUF file's metadata (cached by the file's path, size and time: reading its vocabulary takes seconds)."""
    from ptrain._models import cache_dir

    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{GGUF_CACHE_VERSION}"
    cached = cache_dir() / "facts" / "gguf.json"
    try:
        known = json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    config = known.get(key)
    if config is None:
        config = _gguf_config(path)
        known[key] = config
        from ptrain._artifacts import write_json

        try:
            write_json(cached, known)
        except OSError:
            pass
    if dtype:
        config = {**config, "dtype": dtype}
    return from_config(name, config, "gguf")


def _gguf_config(path: Path) -> dict[str, Any]:
    try:
        from gguf import GGUFReader
    except ImportError:
        raise FactsUnavailable(f"{path}: reading a GGUF's metadata needs the gguf package (pip install gguf)") from None
    reader = GGUFReader(path)

    def value(key: str) -> Any:
        found = reader.fields.get(key)
        return found.contents() if found is not None else None

    arch = value("general.architecture") or "llama"
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    names = {t.name for t in reader.tensors}
    return {
        "model_type": arch,
        "num_hidden_layers": value(f"{arch}.block_count"),
        "hidden_size": value(f"{arch}.embedding_length"),
        "intermediate_size": value(f"{arch}.feed_forward_length"),
        "num_attention_heads": value(f"{arch}.attention.head_count"),
        "num_key_value_heads": value(f"{arch}.attention.head_count_kv"),
        "max_position_embeddings": value(f"{arch}.context_length"),
        "vocab_size": value(f"{arch}.vocab_size") or (len(tokens.data) if tokens is not None else None),
        "tie_word_embeddings": "output.weight" not in names,
        "dtype": "float32",
    }


def from_config(name: str, config: dict[str, Any], source: str) -> ModelFacts:
    """:class:`ModelFacts` from a ``config.json`` mapping (a multimodal config's ``text_config`` is used)."""
    if isinstance(config.get("text_config"), dict) and "num_hidden_layers" not in config:
        config = {**config["text_config"], "dtype": config.get("dtype") or config.get("torch_dtype")}
    arch = str(config.get("model_type") or "unknown")

    def pick(*keys: str, default: Any = None) -> Any:
        return next((config[k] for k in keys if config.get(k) is not None), default)

    layers = pick("num_hidden_layers", "n_layer", "num_layers")
    hidden = pick("hidden_size", "n_embd", "d_model")
    vocab = pick("vocab_size")
    if not all(isinstance(v, int) and v > 0 for v in (layers, hidden, vocab)):
        raise FactsUnavailable(
            f"model {name!r}: its config ({source}) gives no layer count, hidden size or vocabulary size; cannot know its shape before loading"
        )
    heads = pick("num_attention_heads", "n_head", default=max(1, hidden // 64))
    kv_heads = pick("num_key_value_heads", "n_head_kv", default=heads)
    gpt2 = arch in GPT2_LIKE
    intermediate = pick("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)
    tied = bool(pick("tie_word_embeddings", default=True))
    positions = pick("max_position_embeddings", "n_positions", "n_ctx")
    dtype = str(pick("dtype", "torch_dtype", default="float32")).removeprefix("torch.")
    head_dim = pick("head_dim", default=hidden // heads)
    if gpt2:
        parameters = {
            "embeddings": vocab * hidden + (positions or 0) * hidden,
            "attention": layers * (hidden * 3 * hidden + 3 * hidden + hidden * hidden + hidden),
            "mlp": layers * (2 * hidden * intermediate + intermediate + hidden),
            "norms": (2 * layers + 1) * 2 * hidden,
        }
    else:
        bias = bool(config.get("attention_bias")) or arch == "qwen2"
        q, kv = heads * head_dim, kv_heads * head_dim
        attention = hidden * q + 2 * hidden * kv + q * hidden + ((q + 2 * kv) if bias else 0)
        parameters = {
            "embeddings": vocab * hidden,
            "attention": layers * attention,
            "mlp": layers * 3 * hidden * intermediate,
            "norms": (2 * layers + 1) * hidden,
        }
    parameters["head"] = 0 if tied else vocab * hidden
    return ModelFacts(
        name=name, architecture=arch, layers=layers, hidden_size=hidden, heads=heads, kv_heads=kv_heads,
        intermediate_size=intermediate, vocab_size=vocab, max_positions=positions, head_dim=head_dim, tied_embeddings=tied, dtype=dtype,
        parameters=parameters, exact=gpt2 or arch in GATED_MLP, source=source,
    )
