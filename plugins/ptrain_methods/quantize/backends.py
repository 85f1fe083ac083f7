"""The two quantization backends (bitsandbytes and torchao): variants, configs, availability and a probe."""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import warnings
from collections.abc import Iterator
from typing import Any, Literal

from ptrain import UsageError, unfit_4bit_layers

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


def is_four_bit(variant: str) -> bool:
    """Whether ``variant`` is one of bitsandbytes' 4-bit formats (``nf4``, ``fp4``, their ``-dq`` forms)."""
    return variant in VARIANTS and variant != "int8"


def backend(variant: str) -> str:
    """The library that makes ``variant``: ``torchao`` or ``bitsandbytes``."""
    return "torchao" if variant in TORCHAO_VARIANTS else "bitsandbytes"


def backend_label(variant: str) -> str:
    """``"bitsandbytes 0.50.2"``, ``"torchao 0.18.0"``: the backend that made ``variant`` and its version."""
    name = backend(variant)
    return f"{name} {importlib.metadata.version(name)}"


def compute_dtype(name: str) -> Any:
    import torch

    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(variant: str, section: Any, skip: list[str] | None = None) -> Any:
    """The transformers ``quantization_config`` that makes ``variant`` in ``from_pretrained``; ``skip`` names
    modules a 4-bit variant leaves unquantized."""
    return torchao_config(variant) if backend(variant) == "torchao" else bnb_config(variant, section, skip)


def torchao_config(variant: str) -> Any:
    import torchao.quantization
    from transformers import TorchAoConfig

    name, options = TORCHAO_VARIANTS[variant]
    return TorchAoConfig(quant_type=getattr(torchao.quantization, name)(**options))


def bnb_config(variant: str, section: Any, skip: list[str] | None = None) -> Any:
    from transformers import BitsAndBytesConfig

    options = dict(VARIANTS[variant])
    if variant == "int8":
        options["llm_int8_threshold"] = section.llm_int8_threshold
    else:
        options["bnb_4bit_compute_dtype"] = compute_dtype(section.compute_dtype)
    if skip:  # replaces transformers' default list (the output head): callers name the head in it
        options["llm_int8_skip_modules"] = list(skip)
    return BitsAndBytesConfig(**options)


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def probe(variant: str, section: Any) -> None:
    """Quantize and run one small linear layer as ``variant`` would; a UsageError naming the variant and the fix if it cannot."""
    if backend(variant) == "torchao":
        _probe_torchao(variant, section)
        return
    import torch

    problem = bitsandbytes_problem()
    if problem:
        raise UsageError(f"quantize variant {variant!r} cannot be made: {problem}")
    device = device_name()
    try:
        import bitsandbytes as bnb

        dtype = compute_dtype(section.compute_dtype)
        with quiet():
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


def _probe_torchao(variant: str, section: Any) -> None:
    """``probe`` for a torchao variant: quantize one small linear layer with its config and run it."""
    problem = torchao_problem()
    if problem:
        raise UsageError(f"quantize variant {variant!r} cannot be made: {problem}")
    device = device_name()
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


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """bitsandbytes warns once per matmul on CPU that int8 inputs are cast to float16; say it once in the log instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*inputs will be cast from.*")
        yield



def four_bit_skip_modules(location: str) -> list[str] | None:
    """``llm_int8_skip_modules`` for a portable 4-bit export of the model at ``location``, or None when every layer fits.

    Layers whose shape bitsandbytes' packed CPU kernel (AVX512-BF16) cannot take stay unquantized, so
    the export reloads and generates with plain ``from_pretrained`` on any CPU. Built on the meta
    device from the config (no weights read). The list also names the output head, which transformers
    leaves unquantized by default only while no skip list is given.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(location)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    unfit = unfit_4bit_layers(model)
    if not unfit:
        return None
    return sorted({*unfit, *_heads(model)})


def _heads(model: Any) -> list[str]:
    head = model.get_output_embeddings()
    return [name for name, module in model.named_modules() if head is not None and module is head]


def four_bit_skip_list(section: Any, location: str, unfit: list[str] | None = None) -> list[str] | None:
    """``llm_int8_skip_modules`` of the 4-bit variants of the model at ``location``: the layers that do not
    fit the CPU layout (``unfit``, from :func:`four_bit_skip_modules`) and the recipe's ``keep_modules``,
    with the output head (a given list replaces transformers' default one, which keeps the head)."""
    if not section.keep_modules:
        return unfit
    return sorted({*(unfit or []), *section.keep_modules, *head_modules(location)})


def head_modules(location: str) -> list[str]:
    """Names of the output head of the model at ``location`` (built on the meta device, no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return _heads(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(location)))
