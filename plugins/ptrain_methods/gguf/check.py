"""The export checks itself: each GGUF file reloaded by an independent reader and compared with the model it came from.

Reader: transformers' GGUF loader (``from_pretrained(folder, gguf_file=...)``, weights de-quantized), which
shares no code with the writer in :mod:`.convert`. Checks, each a failed export when it does not hold:

* the special token ids (BOS, EOS, padding, unknown) equal the source tokenizer's;
* the embedded chat template renders every held-out conversation byte-identically to the training-time
  rendering (the run's ``prompt`` of that row; for a run trained with a prompt template, or a plain model,
  the source tokenizer's own rendering of the same conversation);
* the tokenizer round trip: the held-out texts encode to the same ids and decode to the same text;
* for the lossless types (f32, f16, bf16): greedy generations on the held-out prompts token-identical to the
  source model with its weights rounded to that type (the file stores exactly those numbers).

Measured and reported, not failed on: for every type the largest logit change against the unexported model,
the task metric and perplexity of both, and the share of held-out prompts answered token-identically.

Second reader, where ``llama-cpp-python`` is installed (``ptrain[llamacpp]``) and ``gguf.llama_cpp`` is true:
llama.cpp itself (:mod:`.llamacpp`). Its tokenizer must give the source tokenizer's ids on every held-out
text (a failed export otherwise); its greedy answers, largest logit change, task metric and tokens/s are
measured (``entry["llama_cpp"]``), not failed on: it computes in its own kernels. Without it the entry says
it was skipped and why.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptrain import UsageError, render_prompt, sliding_window_perplexity, task_scores

from .convert import LOSSLESS


@dataclass
class HeldOut:
    """Held-out rows as the run rendered them for training, and how it rendered them."""

    rows: list[dict[str, Any]]
    """Each with ``prompt`` (the training-time rendering), ``instruction``/``input``/``context`` where known, ``output``."""
    chat: bool
    """Rendered through the chat template (else a prompt template or plain text)."""
    where: str
    """Where the rows come from, for messages (``run eval split``, ``runs/x/samples.jsonl``)."""
    metric: str = "auto"
    max_new_tokens: int = 32
    texts: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.texts = [r["prompt"] + r["output"] for r in self.rows if r.get("output") is not None]


class ExportMismatch(UsageError):
    """A GGUF file that does not reproduce its source: the export fails with this one line."""


def first_difference_at(a: Any, b: Any) -> int:
    """Index of the first element (character, token id) where two sequences differ; the shorter length if one is a prefix."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _first_difference(a: str, b: str) -> str:
    at = first_difference_at(a, b)
    return f"at character {at}: expected {a[at:at + 30]!r}, file gives {b[at:at + 30]!r}"


def load_gguf(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype="float32")
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExportMismatch(f"{path.name}: transformers' GGUF loader cannot read the file ({type(err).__name__}: {first[:200]})") from None
    model.eval()
    return model, tokenizer


def check_tokenizer(name: str, source: Any, loaded: Any, held_out: HeldOut) -> dict[str, Any]:
    """Special ids, chat template rendering and the round trip; the first failure raises :class:`ExportMismatch`."""
    for kind in ("bos", "eos", "pad", "unk"):
        expected, got = getattr(source, f"{kind}_token_id"), getattr(loaded, f"{kind}_token_id")
        if expected is not None and expected != got:
            raise ExportMismatch(f"{name}: {kind} token id {got} in the file, {expected} in the source tokenizer")
    rendered = 0
    template = getattr(loaded, "chat_template", None)
    for i, row in enumerate(held_out.rows, 1):
        if held_out.chat:
            if not (row.get("context") or row.get("instruction") or row.get("input")):
                continue
            expected = row["prompt"]
            got = render_prompt(row, "", "", tokenizer=loaded, chat=True) if template else None
            what = f"the training-time rendering ({held_out.where})"
        else:
            if not getattr(source, "chat_template", None) or not row.get("instruction"):
                continue
            conversation = [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row.get("output") or ""}]
            expected = source.apply_chat_template(conversation, tokenize=False)
            got = loaded.apply_chat_template(conversation, tokenize=False) if template else None
            what = "the source tokenizer's chat template"
        if got is None:
            raise ExportMismatch(f"{name}: the file carries no chat template; held-out row {i} was rendered with one")
        if got != expected:
            raise ExportMismatch(
                f"{name}: the chat template in the file renders held-out row {i} differently from {what}, "
                f"{_first_difference(expected, got)}; was the template changed after training? restore it or retrain"
            )
        rendered += 1
    for i, text in enumerate(held_out.texts, 1):
        expected_ids, got_ids = source(text).input_ids, loaded(text).input_ids
        if expected_ids != got_ids:
            at = first_difference_at(expected_ids, got_ids)
            raise ExportMismatch(
                f"{name}: the file's tokenizer encodes held-out text {i} differently from the source's at token {at} "
                f"(source {expected_ids[at:at + 3]}, file {got_ids[at:at + 3]})"
            )
        if loaded.decode(got_ids, skip_special_tokens=True) != source.decode(expected_ids, skip_special_tokens=True):
            raise ExportMismatch(f"{name}: the file's tokenizer decodes held-out text {i} differently from the source's")
    return {"special_ids": True, "template_rows": rendered, "round_trip_texts": len(held_out.texts)}


def greedy(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """Greedy new-token ids of each prompt, one at a time (no padding to differ between models), cut after EOS."""
    import torch

    eos = model.generation_config.eos_token_id
    stop = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    answers = []
    with torch.no_grad():
        for prompt in prompts:
            inputs = tokenizer(prompt, return_tensors="pt")
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
            new = out[0, inputs["input_ids"].shape[1]:].tolist()
            answers.append(new[: next((j + 1 for j, t in enumerate(new) if t in stop), len(new))])
    return answers


def logit_change(reference: Any, tokenizer: Any, model: Any, loaded_tokenizer: Any, texts: list[str]) -> float:
    """The largest absolute difference of any next-token logit over the held-out texts."""
    import torch

    worst = 0.0
    with torch.no_grad():
        for text in texts[:8]:
            a = reference(**tokenizer(text, return_tensors="pt")).logits
            b = model(**loaded_tokenizer(text, return_tensors="pt")).logits
            worst = max(worst, float((a - b).abs().max()))
    return worst


def rounded_copy(model: Any, qtype: str) -> Any:
    """``model`` with its matrices rounded to ``qtype``'s precision, as the file stores them (norms and biases stay
    float32, as llama.cpp keeps them); computed in float32 still."""
    import copy

    import torch

    if qtype == "f32":
        return model
    dtype = torch.bfloat16 if qtype == "bf16" else torch.float16
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in rounded.parameters():
            if parameter.ndim >= 2:
                parameter.copy_(parameter.to(dtype).float())
    return rounded


def task_metric(tokenizer: Any, answers: list[list[int]], held_out: HeldOut) -> float | None:
    """The run's task metric of greedy answers (new-token ids) on the held-out rows that have a reference."""
    scored = [(r, a) for r, a in zip(held_out.rows, answers, strict=True) if r.get("output") is not None]
    if not scored:
        return None
    texts = [tokenizer.decode(a, skip_special_tokens=True).strip() for _, a in scored]
    scores = task_scores([r for r, _ in scored], texts, held_out.metric)
    return round(sum(scores) / len(scores), 4)


def quality(model: Any, tokenizer: Any, answers: list[list[int]], held_out: HeldOut, window: int, max_tokens: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    metric = task_metric(tokenizer, answers, held_out)
    if metric is not None:
        result["task_metric"] = metric
    if held_out.texts:
        text = "\n\n".join(held_out.texts)
        ppl = sliding_window_perplexity(model, tokenizer, text, window, window // 2, max_tokens)
        result["perplexity"] = round(ppl.perplexity, 4)
    return result


def check_file(name: str, path: Path, qtype: str, source_model: Any, source_tokenizer: Any, source_answers: list[list[int]],
               source_quality: dict[str, Any], held_out: HeldOut, window: int, max_tokens: int, llama_cpp: bool = True) -> dict[str, Any]:
    """Reload ``path`` and run every check (transformers' loader, then llama.cpp where ``llama_cpp`` and it is installed);
    the measured figures, or :class:`ExportMismatch`."""
    model, tokenizer = load_gguf(path)
    checks = check_tokenizer(name, source_tokenizer, tokenizer, held_out)
    prompts = [r["prompt"] for r in held_out.rows]
    answers = greedy(model, tokenizer, prompts, held_out.max_new_tokens)
    same = sum(a == b for a, b in zip(answers, source_answers, strict=True))
    result: dict[str, Any] = {"checks": checks, "reader": "transformers GGUF loader"}
    result["max_logit_change"] = round(logit_change(source_model, source_tokenizer, model, tokenizer, held_out.texts), 5)
    result["identical_generations"] = f"{same}/{len(prompts)}"
    if qtype in LOSSLESS:
        reference = rounded_copy(source_model, qtype)
        expected = greedy(reference, source_tokenizer, prompts, held_out.max_new_tokens) if qtype != "f32" else source_answers
        for i, (a, b) in enumerate(zip(expected, answers, strict=True), 1):
            if a != b:
                raise ExportMismatch(
                    f"{name}: greedy generation on held-out prompt {i} differs from the source model rounded to {qtype} "
                    f"(source {a[:6]}, file {b[:6]}): the weights were not written faithfully"
                )
        checks["generations_identical_to_rounded_source"] = len(prompts)
        del reference
    result.update(quality(model, tokenizer, answers, held_out, window, max_tokens))
    if "task_metric" in result and "task_metric" in source_quality:
        result["task_metric_change"] = round(result["task_metric"] - source_quality["task_metric"], 4)
    if result.get("perplexity") and source_quality.get("perplexity"):
        result["perplexity_increase_pct"] = round(100 * (result["perplexity"] / source_quality["perplexity"] - 1), 3)
    del model
    gc.collect()
    from . import llamacpp

    if not llama_cpp:
        result["llama_cpp"] = {"skipped": "gguf.llama_cpp = false"}
    elif not llamacpp.available():
        result["llama_cpp"] = {"skipped": 'llama-cpp-python is not installed (pip install "ptrain[llamacpp]")'}
    else:
        import torch

        reading = llamacpp.check(name, path, source_model, source_tokenizer, source_answers, answers, held_out, torch.get_num_threads())
        if reading.get("task_metric") is not None and source_quality.get("task_metric") is not None:
            reading["task_metric_change"] = round(reading["task_metric"] - source_quality["task_metric"], 4)
        result["llama_cpp"] = reading
        result["reader"] = f"transformers GGUF loader and llama.cpp ({reading['reader']})"
    return result
