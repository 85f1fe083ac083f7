"""llama.cpp in the GGUF export, through ``llama-cpp-python`` (``pip install "ptrain[llamacpp]"``, compiles llama.cpp).

Two jobs, both only when ``llama_cpp`` is importable:

* :func:`quantize`: the K-quants (``q4_k_m``, ``q6_k``…), which only llama.cpp's quantizer writes. ptrain writes
  an f32 GGUF with its own writer (:mod:`.convert`) to a temporary file, then ``llama_model_quantize`` turns it into
  the requested type. A weight whose rows do not fill whole 256-value super-blocks (SmolLM2's hidden size 576,
  the tiny test model's 128) is stored by llama.cpp in a fallback type (``q5_0``/``q5_1``/``q8_0``…): the tensor
  types it chose are recorded (``tensor_types``).
* :func:`check`: llama.cpp as a second reader, independent of transformers' GGUF loader. Its tokenizer must give
  the source tokenizer's ids on every held-out text (else :class:`~.check.ExportMismatch`); measured and reported,
  not failed on: greedy answers from the source-tokenized prompts (identical share against the unexported model and
  against the transformers reading of the same file), the largest logit change against the unexported model, the
  task metric of its answers and its generation speed.

llama.cpp's own log (its C logger) does not reach stderr: its warnings and errors (the quantizer's per-tensor
fallbacks among them) go to the ``ptrain.llama_cpp`` logger at debug level (the run log), the rest is dropped.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ptrain import UsageError

from .check import ExportMismatch, HeldOut, first_difference_at, task_metric

log = logging.getLogger("ptrain.llama_cpp")
_callback: Any = None  # the C callback must stay referenced as long as llama.cpp may call it


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def version() -> str:
    import llama_cpp

    return f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')}"


def _quiet() -> Any:
    """``llama_cpp``, with llama.cpp's log routed to the debug logger (once)."""
    global _callback
    import llama_cpp

    if _callback is None:
        keeping = [False]

        @llama_cpp.llama_log_callback
        def to_debug(level: int, text: bytes, user_data: Any) -> None:
            # ggml's levels: 1 debug, 2 info (the metadata dump of every load), 3 warn, 4 error, 5 continues the last line
            keeping[0] = level in (3, 4) or (level == 5 and keeping[0])
            if keeping[0] and text and log.isEnabledFor(logging.DEBUG):
                log.debug("%s", text.decode("utf-8", errors="replace").rstrip())

        _callback = to_debug
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    return llama_cpp


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGML type the file holds (read from its header, memory-mapped)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return dict(sorted(Counter(t.tensor_type.name.lower() for t in reader.tensors).items(), key=lambda kv: -kv[1]))


def quantize(source: Path, target: Path, qtype: str, threads: int) -> dict[str, Any]:
    """``source`` (an f32 GGUF) -> ``target`` in ``qtype`` with llama.cpp's quantizer; what it wrote."""
    llama_cpp = _quiet()
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}", None)
    if ftype is None:
        raise UsageError(f"gguf.types: {qtype!r} is not a file type of this llama-cpp-python ({version()}); upgrade it")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = max(1, threads)
    started = time.perf_counter()
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if code != 0 or not target.is_file():
        raise UsageError(f"{target.name}: llama.cpp's quantizer failed to write {qtype} from {source.name} (return code {code}); "
                         "see the run log's ptrain.llama_cpp debug lines, or use a type of the gguf package (q8_0, q4_0…)")
    types = tensor_types(target)
    return {"quantizer": version(), "quantize_s": round(time.perf_counter() - started, 2), "tensor_types": types}


def check(name: str, path: Path, source_model: Any, source_tokenizer: Any, source_answers: list[list[int]],
          file_answers: list[list[int]], held_out: HeldOut, threads: int) -> dict[str, Any]:
    """Read ``path`` with llama.cpp: tokenization (checked), greedy answers, logit change, task metric, tokens/s (measured)."""
    import numpy as np
    import torch

    llama_cpp = _quiet()
    prompts = [source_tokenizer(r["prompt"]).input_ids for r in held_out.rows]
    texts = [source_tokenizer(t).input_ids for t in held_out.texts]
    context = int(getattr(source_model.config, "max_position_embeddings", 0) or 4096)
    needed = max([len(p) + held_out.max_new_tokens for p in prompts] + [len(t) for t in texts] + [64])
    if needed > context:
        needed = context
    try:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=needed, n_batch=min(needed, 512), logits_all=True, verbose=False,
                              n_threads=max(1, threads), n_threads_batch=max(1, threads))
    except (ValueError, RuntimeError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExportMismatch(f"{name}: llama.cpp cannot load the file ({type(err).__name__}: {first[:200]})") from None
    try:
        # tokenization: llama.cpp with its own special handling (BOS/EOS as the file's add_bos/add_eos say) = the source's ids
        for i, (text, expected) in enumerate(zip(held_out.texts, texts, strict=True), 1):
            got = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            if got != expected:
                at = first_difference_at(expected, got)
                hint = ""
                special = set(source_tokenizer.all_special_ids)
                special |= {i for i, t in getattr(source_tokenizer, "added_tokens_decoder", {}).items() if t.special}
                if at > 0 and expected[at - 1] in special and got[at:at + 1] != expected[at:at + 1]:
                    hint = ("; llama.cpp's SentencePiece tokenizer puts a space before the text after each special token, which this "
                            "tokenizer.json does not: serve this model with transformers (ptrain serve), or set gguf.llama_cpp = false "
                            "to export without this check")
                raise ExportMismatch(f"{name}: llama.cpp tokenizes held-out text {i} differently from the source tokenizer at token {at} "
                                     f"(source {expected[at:at + 3]}, llama.cpp {got[at:at + 3]}){hint}")
        eos = source_model.generation_config.eos_token_id
        stop = set(eos if isinstance(eos, list) else [eos if eos is not None else source_tokenizer.eos_token_id])
        answers: list[list[int]] = []
        generated, seconds = 0, 0.0
        for ids in prompts:
            started = time.perf_counter()
            llm.reset()
            llm.eval(ids)
            new: list[int] = []
            while len(new) < held_out.max_new_tokens and llm.n_tokens < needed:
                token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                new.append(token)
                if token in stop:
                    break
                llm.eval([token])
            seconds += time.perf_counter() - started
            generated += len(new)
            answers.append(new)
        worst = 0.0
        vocab = llm.n_vocab()
        with torch.no_grad():
            for ids in texts[:8]:
                llm.reset()
                llm.eval(ids)
                mine = np.array(llm.scores[: len(ids)], dtype=np.float32)
                reference = source_model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
                width = min(vocab, reference.shape[-1])
                worst = max(worst, float(np.abs(mine[:, :width] - reference[:, :width]).max()))
    finally:
        if hasattr(llm, "close"):
            llm.close()
        del llm
    result: dict[str, Any] = {
        "reader": version(),
        "tokenization_identical_texts": len(texts),
        "identical_generations": f"{sum(a == b for a, b in zip(answers, source_answers, strict=True))}/{len(prompts)}",
        "identical_to_transformers_reading": f"{sum(a == b for a, b in zip(answers, file_answers, strict=True))}/{len(prompts)}",
        "max_logit_change": round(worst, 5),
        "tokens_per_s": round(generated / seconds, 1) if seconds else None,
        "threads": max(1, threads),
    }
    metric = task_metric(source_tokenizer, answers, held_out)
    if metric is not None:
        result["task_metric"] = metric
    return result
