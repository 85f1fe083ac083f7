"""Library output a ptrain user can do nothing about: log lines, progress bars and warnings, silenced
before the libraries load (every command that loads a model calls :func:`quiet_libraries`)."""

from __future__ import annotations

import logging
import warnings

QUIET_LOGGERS = (
    # torchao, imported by transformers when installed, warns about its CUDA-only kernels on a CPU
    # build and registers enums the way torch 2.13 deprecates
    "torch.utils._pytree",
    "torchao",
    # bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community" when it is
    # imported on a CPU with AVX512-BF16 (it falls back to its own kernels): every run, quantized or not
    "bitsandbytes.backends.cpu.ops",
    # "inputs will be cast to float16" on every INT8 matmul (LLM.int8 computes in float16 by design)
    "bitsandbytes.autograd._functions",
)


def quiet_libraries() -> None:
    """Errors only from the loggers above, no datasets/transformers progress bars, and no warning about
    an attribute transformers 5 deprecates that peft and trl still read. Imports datasets and transformers."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_warning()
