"""bitsandbytes 4-bit on CPUs with AVX512-BF16: what its packed layout accepts, and keeping models off it where needed.

On such CPUs (``bitsandbytes.functional.has_avx512bf16()``), a ``Linear4bit`` repacks its weight
for a faster kernel at its first forward in eval mode without gradients. Two limits of that path
(bitsandbytes 0.50) matter to ptrain:

* the repack assumes ``out_features`` is a multiple of 32 and ``in_features`` a multiple of the
  quantization block (64): any other layer raises ``shape '[N, K/64]' is invalid`` on its first
  eval forward, deep inside a run or a user's ``generate``;
* a repacked layer has no backward: the gradient to its input is silently lost, so a QLoRA model
  that is evaluated (``eval.base``) and then trained would train with broken gradients.

So the core keeps a model it trains off the packed path entirely, and an in-process model that
only runs forward off it layer by layer where the shape does not fit. (An exported 4-bit model
leaves the layers that do not fit unquantized: the ``quantize`` method's ``skip_modules``.)
"""

from __future__ import annotations

import sys
from typing import Any

PACKED_BLOCK_N = 32
"""Rows per tile of bitsandbytes' packed CPU layout (``_convert_weight_packed_for_cpu``)."""
BLOCKSIZE_4BIT = 64
"""bitsandbytes' 4-bit quantization block on CPU and for ``from_pretrained`` (``bnb_4bit_blocksize``)."""


def packed_layout_fits(out_features: int, in_features: int, blocksize: int = BLOCKSIZE_4BIT) -> bool:
    """Whether bitsandbytes' packed CPU layout takes a 4-bit linear layer of this shape."""
    return out_features % PACKED_BLOCK_N == 0 and in_features % blocksize == 0


def unfit_4bit_layers(model: Any) -> list[str]:
    """Names of the model's linear layers whose shape bitsandbytes' packed 4-bit CPU layout cannot take
    (out_features not a multiple of 32, in_features not of 64): a portable 4-bit export leaves them
    unquantized (``llm_int8_skip_modules``). Works on a model built on the meta device."""
    import torch

    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not packed_layout_fits(module.out_features, module.in_features)
    ]


def keep_off_packed_path(model: Any, training: bool) -> list[str]:
    """Keep the model's 4-bit layers off the packed CPU path: all of them for a model that trains,
    else those whose shape does not fit. Returns the names of the layers changed."""
    if "bitsandbytes" not in sys.modules:  # no 4-bit layer can exist
        return []
    import bitsandbytes as bnb

    changed = []
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit) or not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        blocksize = getattr(module.weight, "blocksize", None) or BLOCKSIZE_4BIT
        if training or not packed_layout_fits(module.out_features, module.in_features, blocksize):
            module.support_avx512bf16_for_cpu = False
            changed.append(name)
    return changed


def release_checkpoint_file(model: Any) -> None:
    """Copy the tensors of a model quantized while loading that still read from the checkpoint file.

    safetensors memory-maps the checkpoint and transformers keeps the tensors it does not convert
    (embeddings, norms, the output head of a 4-bit model) as views of that mapping. Quantizing read
    every page of the file, and while one view is alive the whole file stays mapped and counted in
    the process's resident memory: about 500 MiB of an fp32 SmolLM2-135M for a 4-bit model of
    160 MiB. Copying the unconverted tensors (a few MiB, plus the embedding) drops the last views, and the mapping
    goes with them (the core gives freed memory back to the system before training).
    Tied parameters stay tied (each Parameter object is updated in place).
    """
    import torch

    with torch.no_grad():
        for module in model.modules():
            for parameter in module.parameters(recurse=False):
                if type(parameter).__name__ not in ("Params4bit", "Int8Params"):
                    parameter.data = parameter.data.clone()
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer is not None:
                    module._buffers[name] = buffer.clone()
