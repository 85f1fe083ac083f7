"""Measuring a causal LM: completion loss, perplexity, greedy generation and task metrics.

These functions are public API: methods such as quantization or distillation call them to
measure their models exactly as the core measures the trained one.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any


def _normalise(text: str) -> str:
    return " ".join(text.split())


def exact_match(generation: str, reference: str) -> float:
    return float(_normalise(generation) == _normalise(reference))


FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


def _unfence(text: str) -> str:
    """The body of a Markdown code block (```json ... ```) when that is all the text is."""
    match = FENCE.match(text.strip())
    return match.group(1) if match else text


def json_match(generation: str, reference: str) -> float:
    """1.0 when the generation (or the code block it consists of) parses as JSON equal to the reference's."""
    try:
        return float(json.loads(_unfence(generation)) == json.loads(reference))
    except (json.JSONDecodeError, TypeError):
        return 0.0


def valid_json(generation: str, reference: str = "") -> float:
    """1.0 when the generation (or the code block it consists of) parses as JSON."""
    try:
        json.loads(_unfence(generation))
    except (json.JSONDecodeError, TypeError):
        return 0.0
    return 1.0


def contains(generation: str, reference: str) -> float:
    return float(_normalise(reference) in _normalise(generation))


NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def numeric_match(generation: str, reference: str) -> float:
    """1.0 when the last number in the generation equals the reference's number ("The answer is 42." for "42")."""
    found = NUMBER.findall(generation.replace(",", ""))
    try:
        return float(bool(found) and math.isclose(float(found[-1]), float(reference.strip()), rel_tol=0.0, abs_tol=1e-9))
    except ValueError:  # a reference that is not a number
        return 0.0


METRICS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "json_match": json_match,
    "numeric_match": numeric_match,
    "contains": contains,
}


def metric_for(row: dict[str, Any], requested: str) -> str:
    """The metric for a row: the recipe's choice, or with ``auto`` the task's own (exact match by default)."""
    if requested != "auto":
        return requested
    from ptrain._tasks import TASKS

    task = TASKS.get(row.get("task") or "")
    return task.metric if task else "exact_match"


def is_language_model(model: Any) -> bool:
    """Whether ``model`` generates text (a causal LM, with or without adapters); a reward model or
    another classifier does not, and gets no generation metrics."""
    can_generate = getattr(model, "can_generate", None)
    return bool(can_generate()) if callable(can_generate) else False


def _device(model: Any) -> Any:
    return next(model.parameters()).device


class _eval_mode:
    def __init__(self, model: Any):
        self.model = model

    def __enter__(self) -> None:
        import torch

        self.was_training = self.model.training
        self.grad = torch.is_grad_enabled()
        self.model.eval()
        torch.set_grad_enabled(False)

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.set_grad_enabled(self.grad)
        self.model.train(self.was_training)


def _input_logits(model: Any, input_ids: Any, attention_mask: Any = None) -> Any:
    """Float logits at the input's positions. Prompt-learning adapters (peft prompt tuning,
    P-tuning) put virtual tokens before the input and return their logits first: they are dropped."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return logits[:, -input_ids.shape[1] :].float()


def _completion_batches(
    model: Any, tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], batch_size: int, max_length: int
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(logits, labels)`` per batch of prompt + completion + EOS, tokenized as the SFT trainer
    does; both are shifted so ``logits[:, t]`` predicts ``labels[:, t]``, which is -100 outside the completion."""
    import torch

    eos = tokenizer.eos_token or ""
    sequences = []
    for prompt, completion in zip(prompts, completions, strict=True):
        prompt_ids = tokenizer(prompt)["input_ids"]
        full_text = prompt + completion
        full_ids = tokenizer(full_text if full_text.endswith(eos) else full_text + eos)["input_ids"][:max_length]
        start = next((i for i, (a, b) in enumerate(zip(prompt_ids, full_ids, strict=False)) if a != b), min(len(prompt_ids), len(full_ids)))
        sequences.append((full_ids, max(start, 1)))  # the first token is never predicted
    device = _device(model)
    with _eval_mode(model):
        for i in range(0, len(sequences), batch_size):
            batch = sequences[i : i + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id or 0, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (ids, start) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
                labels[row, start : len(ids)] = torch.tensor(ids[start:])
            logits = _input_logits(model, input_ids.to(device), attention.to(device))
            yield logits[:, :-1], labels[:, 1:].to(device)


def completion_loss(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    batch_size: int = 16,
    max_length: int = 512,
) -> float:
    """Mean negative log-likelihood per completion token (EOS included), as the SFT trainer computes it."""
    import torch

    total, count = 0.0, 0
    for logits, labels in _completion_batches(model, tokenizer, prompts, completions, batch_size, max_length):
        flat = labels.reshape(-1)
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), flat, ignore_index=-100, reduction="sum").item()
        count += int((flat != -100).sum())
    return total / max(count, 1)


def completion_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    batch_size: int = 16,
    max_length: int = 512,
    average: bool = False,
) -> list[float]:
    """Summed log-probability of each completion (EOS included) given its prompt.

    The quantity preference methods compare: ``logp(chosen) - logp(rejected)`` is a model's
    preference margin, and its change against a reference model is DPO's implicit reward.
    ``average``: the mean per completion token instead (SimPO's length-normalised reward, before its beta).
    """
    import torch

    results: list[float] = []
    for logits, labels in _completion_batches(model, tokenizer, prompts, completions, batch_size, max_length):
        mask = labels != -100
        picked = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        summed = (picked * mask).sum(dim=1)
        results.extend((summed / mask.sum(dim=1).clamp(min=1) if average else summed).tolist())
    return results


def preference_metrics(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    batch_size: int = 16,
    max_length: int = 512,
) -> dict[str, float]:
    """How often ``model`` prefers the chosen answer of held-out pairs, by summed log-probability.

    Returns ``preference_accuracy`` (fraction of pairs with ``logp(chosen) > logp(rejected)``),
    ``preference_margin`` (the mean difference) and ``preference_pairs``: the held-out measure every
    preference method (DPO, KTO, ORPO) reports at base and final, so their columns compare.
    """
    good = completion_logprobs(model, tokenizer, prompts, chosen, batch_size, max_length)
    bad = completion_logprobs(model, tokenizer, prompts, rejected, batch_size, max_length)
    margins = [g - b for g, b in zip(good, bad, strict=True)]
    count = max(len(margins), 1)
    return {
        "preference_accuracy": round(sum(m > 0 for m in margins) / count, 4),
        "preference_margin": round(sum(margins) / count, 4),
        "preference_pairs": len(margins),
    }


def reward_scores(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    batch_size: int = 16,
    max_length: int = 512,
) -> list[float]:
    """The scalar score a reward model (a sequence classifier with one label) gives each prompt + completion.

    The text is scored as TRL's ``RewardTrainer`` trains on it: prompt, completion and EOS,
    tokenized with the tokenizer's special tokens, right-padded, truncated to ``max_length``
    tokens; the model reads the score at the last token that is not padding.
    """
    eos = tokenizer.eos_token or ""
    texts = [p + c if (p + c).endswith(eos) else p + c + eos for p, c in zip(prompts, completions, strict=True)]
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    scores: list[float] = []
    device = _device(model)
    try:
        with _eval_mode(model):
            for i in range(0, len(texts), batch_size):
                batch = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=max_length)
                logits = model(**batch.to(device)).logits
                scores.extend(logits[:, 0].float().tolist())
    finally:
        tokenizer.padding_side = side
    return scores


@dataclass
class Generations:
    texts: list[str]
    new_tokens: int
    seconds: float
    reused: int = 0
    """Answers :meth:`ptrain.Run.generate` took from before instead of generating (their tokens are not counted)."""

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


WARMUP_TOKENS = 8
"""New tokens of the untimed warm-up pass :func:`generate` makes before it starts the clock."""


def generate(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 16, *, warm_up: bool = True
) -> Generations:
    """Greedy completions of ``prompts`` (left-padded batches), stopping at EOS.

    Its tokens/s is a warm model's: the first batch is first run untimed for a few tokens, since a
    model's first pass pays one-time costs (allocations, kernel set-up) that moved the phase-1 student's
    tokens/s by up to 15 %. ``warm_up=False`` skips that pass where only the texts are wanted.
    """
    import torch

    texts: list[str] = []
    new_tokens = 0
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = _device(model)
    eos_ids = model.generation_config.eos_token_id
    stop = set(eos_ids if isinstance(eos_ids, list) else [eos_ids if eos_ids is not None else tokenizer.eos_token_id])

    def answer(batch_prompts: Sequence[str], max_new: int) -> Any:
        batch = tokenizer(list(batch_prompts), return_tensors="pt", padding=True).to(device)
        output = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=max_new,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos_ids if eos_ids is not None else tokenizer.eos_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        return output[:, batch["input_ids"].shape[1] :]

    try:
        with _eval_mode(model):
            if warm_up and prompts:
                answer(prompts[:batch_size], min(WARMUP_TOKENS, max_new_tokens))
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
            start = time.perf_counter()
            for i in range(0, len(prompts), batch_size):
                for row in answer(prompts[i : i + batch_size], max_new_tokens).tolist():
                    length = next((j + 1 for j, t in enumerate(row) if t in stop), len(row))
                    new_tokens += length
                    texts.append(tokenizer.decode(row[:length], skip_special_tokens=True).strip())
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    finally:
        tokenizer.padding_side = side
    return Generations(texts, new_tokens, seconds)


def task_scores(rows: Sequence[dict[str, Any]], generations: Sequence[str], metric: str) -> list[float]:
    return [METRICS[metric_for(row, metric)](gen, row["output"]) for row, gen in zip(rows, generations, strict=True)]


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


@dataclass
class WindowedPerplexity:
    """Result of :func:`sliding_window_perplexity`."""

    perplexity: float
    nll: float
    """Mean negative log-likelihood per scored token."""
    tokens: int
    """Tokens scored (every token of the text but the first)."""
    windows: int
    window: int
    stride: int


def sliding_window_perplexity(
    model: Any,
    tokenizer: Any,
    text: str,
    window: int = 512,
    stride: int = 256,
    max_tokens: int | None = None,
) -> WindowedPerplexity:
    """Perplexity of ``text`` with the strided sliding-window method of fixed-length models.

    The text is tokenized once; windows of ``window`` tokens start every ``stride`` tokens and each
    scores only the tokens the previous window did not, so every token (but the first) is scored
    exactly once with at least ``window - stride`` tokens of context (Hugging Face, "Perplexity of
    fixed-length models"). ``window`` is capped at the model's maximum positions; ``max_tokens``
    truncates the text to keep the cost bounded.
    """
    import torch

    if not 0 < stride <= window:
        raise ValueError(f"need 0 < stride <= window, got stride={stride}, window={window}")
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit:
        window = min(window, int(limit))
        stride = min(stride, window)
    input_ids = tokenizer(text, return_tensors="pt")["input_ids"][:, : max_tokens or None]
    length = input_ids.size(1)
    if length < 2:
        raise ValueError(f"perplexity needs at least 2 tokens of text, got {length}")
    device = _device(model)
    total, count, windows, previous_end = 0.0, 0, 0, 0
    with _eval_mode(model):
        for begin in range(0, length, stride):
            end = min(begin + window, length)
            ids = input_ids[:, begin:end].to(device)
            labels = ids.clone()
            labels[:, : max(previous_end - begin, 0)] = -100  # already scored by the previous window
            logits = _input_logits(model, ids)
            targets = labels[:, 1:].reshape(-1)
            total += torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), targets, ignore_index=-100, reduction="sum"
            ).item()
            count += int((targets != -100).sum())
            windows += 1
            previous_end = end
            if end == length:
                break
    nll = total / max(count, 1)
    return WindowedPerplexity(perplexity(nll), nll, count, windows, window, stride)
