"""Losses through the output head, a chunk of tokens at a time: the ``[tokens × vocabulary]`` logits never exist whole.

Each chunk's logits are computed, reduced to what the loss needs (a log-probability per token, a
divergence per token) and dropped; the backward pass recomputes them chunk by chunk
(``torch.utils.checkpoint``). Peak memory of the head is then ``chunk_tokens × vocabulary`` floats
instead of ``tokens × vocabulary`` (49 152-token SmolLM2 at batch 8 × 256: 384 MiB of fp32 logits,
about three times that with the softmax and its gradient). Pure PyTorch: it runs on any device,
under autocast too (the matmul in bf16, the softmax in fp32).

* :func:`chunked_token_logprobs`: ``log p(label)`` per token (preference losses, GRPO, KTO), with
  the entropy and whether the label is the top token;
* :func:`chunked_cross_entropy`: the causal-LM loss (SFT), ``-100`` labels ignored (completion-only);
* :func:`chunked_kd_loss`: KL or JSD between student and teacher, both heads run per chunk;
* :func:`chunked_distill_loss`: logit distillation's whole loss (KD + CE), its gradient taken per chunk in the forward pass;
* :func:`use_chunked_loss`: serves a trainer's ``model(..., labels=..., fused_lm_head=True)`` calls
  (how TRL's SFT, DPO, KTO and GRPO trainers ask for per-token log-probs) with the above.
"""

from __future__ import annotations

import functools
import logging
import math
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ptrain._run import Run

log = logging.getLogger("ptrain")

DEFAULT_CHUNK_TOKENS = 1024
"""Tokens per chunk: 1024 × 49 152 fp32 logits are 192 MiB; smaller chunks save little more and cost speed."""

_SCALED = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def _head_logits(hidden: Any, weight: Any, bias: Any, temperature: float) -> Any:
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    return logits.float() / temperature if temperature != 1.0 else logits.float()


def _logprob_piece(hidden: Any, weight: Any, bias: Any, targets: Any, temperature: float) -> tuple[Any, ...]:
    import torch

    logits = _head_logits(hidden, weight, bias, temperature)
    log_z = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(-1, targets[:, None]).squeeze(-1)
    probs = torch.softmax(logits, dim=-1)
    entropy = log_z - (probs * logits).sum(-1)
    with torch.no_grad():
        is_top1 = target_logit >= logits.max(dim=-1).values
        mean_logits = logits.mean(-1)
        log_sum_sq = torch.log((probs.detach() ** 2).sum(-1))
    return target_logit - log_z, entropy, is_top1, mean_logits, log_sum_sq


def chunked_token_logprobs(
    hidden: Any,
    weight: Any,
    labels: Any,
    *,
    bias: Any = None,
    temperature: float = 1.0,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    stats: bool = False,
) -> Any:
    """``log p(label)`` under ``softmax(hidden @ weight.T + bias) / temperature``, one chunk of tokens at a time.

    :param hidden: ``[..., H]`` final hidden states (after the model's last norm), already aligned
        with ``labels`` (position ``i`` scores ``labels[i]``: shift before calling).
    :param weight: the output head's ``[V, H]`` weight (``model.get_output_embeddings().weight``).
    :param labels: ``[...]`` token ids; ``-100`` positions are skipped and get 0.
    :param stats: also return ``entropy`` (differentiable), ``is_top1`` (the label is the most
        likely token), ``mean_logits`` and ``log_sum_sq_probs`` (both without gradient), each
        shaped like ``labels`` and 0 where skipped.
    :return: the log-probabilities shaped like ``labels`` (fp32), or a dict with ``log_probs`` and
        the statistics when ``stats``. Gradients flow to ``hidden``, ``weight`` and ``bias``; each
        chunk's logits are recomputed in the backward pass, never stored.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    mask = labels != -100
    rows = hidden[mask]  # only the scored positions: a prompt's tokens cost nothing
    targets = labels[mask]
    parts: list[tuple[Any, ...]] = []
    for start in range(0, rows.shape[0], max(1, chunk_tokens)):
        end = start + chunk_tokens
        parts.append(checkpoint(_logprob_piece, rows[start:end], weight, bias, targets[start:end], temperature, use_reentrant=False))

    def scatter(index: int, dtype: Any) -> Any:
        if parts:
            values = torch.cat([p[index] for p in parts])
        else:
            values = torch.zeros((0,), dtype=dtype, device=rows.device)
            if index == 0:
                values = values + (rows.sum() + weight.sum()) * 0  # nothing to score: still a (zero) gradient
        # masked_scatter keeps the result connected to the graph, also when no label is scored
        return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)

    log_probs = scatter(0, torch.float32)
    if not stats:
        return log_probs
    return {
        "log_probs": log_probs,
        "entropy": scatter(1, torch.float32),
        "is_top1": scatter(2, torch.bool),
        "mean_logits": scatter(3, torch.float32),
        "log_sum_sq_probs": scatter(4, torch.float32),
        "label_mask": mask,
    }


def chunked_cross_entropy(
    hidden: Any,
    weight: Any,
    labels: Any,
    *,
    bias: Any = None,
    shift: bool = True,
    num_items_in_batch: Any = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> Any:
    """The causal-LM cross-entropy of ``hidden @ weight.T`` against ``labels``, chunk by chunk.

    :param hidden: ``[B, L, H]`` final hidden states; ``labels`` ``[B, L]`` with ``-100`` on the
        tokens not learned (prompt, padding): completion-only SFT as the model's own loss does it.
    :param shift: position ``i`` predicts ``labels[i + 1]`` (as ``model(labels=...)``); False when
        already aligned.
    :param num_items_in_batch: divide the sum by this count (the Trainer's tokens of a whole
        optimizer step) instead of this batch's scored tokens.
    :return: the mean loss over scored tokens (fp32 scalar), equal to the unchunked one.
    """
    if shift:
        hidden, labels = hidden[..., :-1, :], labels[..., 1:]
    log_probs = chunked_token_logprobs(hidden, weight, labels, bias=bias, chunk_tokens=chunk_tokens)
    count = (labels != -100).sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return -log_probs.sum() / count


def _divergence(s_logits: Any, t_logits: Any, temperature: float, divergence: str, beta: float) -> Any:
    """Per-row divergence of fp32 logits over their shared first ``min(Vs, Vt)`` entries."""
    import torch

    shared = min(s_logits.shape[-1], t_logits.shape[-1])
    s = torch.log_softmax(s_logits[:, :shared] / temperature, dim=-1)
    t = torch.log_softmax(t_logits[:, :shared] / temperature, dim=-1)
    if divergence == "forward_kl":
        return (t.exp() * (t - s)).sum(-1)
    if divergence == "reverse_kl":
        return (s.exp() * (s - t)).sum(-1)
    m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
    return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)


def _check_divergence(divergence: str) -> None:
    if divergence not in ("forward_kl", "reverse_kl", "jsd"):
        raise ValueError(f"unknown divergence {divergence!r}; use forward_kl, reverse_kl or jsd")


def _kd_piece(s_hidden: Any, s_weight: Any, t_hidden: Any, t_weight: Any, temperature: float, divergence: str, beta: float) -> Any:
    import torch

    s_logits = _head_logits(s_hidden, s_weight, None, 1.0)
    with torch.no_grad():
        t_logits = _head_logits(t_hidden, t_weight, None, 1.0)
    return _divergence(s_logits, t_logits, temperature, divergence, beta)


def chunked_kd_loss(
    student_hidden: Any,
    student_weight: Any,
    teacher_hidden: Any,
    teacher_weight: Any,
    mask: Any,
    *,
    temperature: float = 1.0,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> Any:
    """Per-token divergence between teacher and student next-token distributions, chunk by chunk.

    :param student_hidden: ``[..., Hs]`` and ``teacher_hidden`` ``[..., Ht]`` final hidden states at
        the same positions; ``mask`` ``[...]`` (bool) the positions to score (e.g. completion tokens).
        The teacher's logits are computed per chunk without gradient, like the student's never whole.
    :param divergence: ``forward_kl`` KL(teacher‖student), ``reverse_kl`` KL(student‖teacher), or ``jsd``
        the generalized JSD ``β·KL(t‖m) + (1−β)·KL(s‖m)`` with ``m = β·t + (1−β)·s``; softmax at
        ``temperature`` in fp32. Vocabularies of different sizes share their first ``min(Vs, Vt)`` entries.
    :return: ``[n]`` the divergence at each masked position (in order), differentiable in the student.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    _check_divergence(divergence)
    student_rows, teacher_rows = student_hidden[mask], teacher_hidden[mask].detach()
    parts = [
        checkpoint(
            _kd_piece, student_rows[i : i + chunk_tokens], student_weight, teacher_rows[i : i + chunk_tokens], teacher_weight.detach(),
            temperature, divergence, beta, use_reentrant=False,
        )
        for i in range(0, student_rows.shape[0], max(1, chunk_tokens))
    ]
    return torch.cat(parts) if parts else student_rows.sum(-1) * 0.0


def chunked_distill_loss(
    student_hidden: Any,
    student_weight: Any,
    teacher_hidden: Any,
    teacher_weight: Any,
    labels: Any,
    *,
    alpha: float = 0.5,
    temperature: float = 1.0,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    num_items: Any = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> dict[str, Any]:
    """Logit distillation's whole loss, ``(alpha·T²·Σ D + (1−alpha)·Σ CE) / count``, a chunk of tokens at a time,
    its gradient taken while each chunk is scored: each model's head runs once per chunk and nothing is
    recomputed in the backward pass (as fast as the full logits, where :func:`chunked_kd_loss` plus
    :func:`chunked_cross_entropy` run the student's head four times and the teacher's twice).

    :param student_hidden: ``[..., Hs]`` and ``teacher_hidden`` ``[..., Ht]`` final hidden states,
        aligned with ``labels`` ``[...]`` (position ``i`` predicts ``labels[i]``: shift before calling);
        ``-100`` positions are skipped. ``D`` is :func:`chunked_kd_loss`'s divergence at ``temperature``
        (``forward_kl``, ``reverse_kl``, ``jsd`` with ``beta``), ``CE`` the student's cross-entropy at 1.
    :param num_items: the count to divide by (the tokens of a whole optimizer step); default the scored tokens.
    :return: ``{"loss": scalar, differentiable in student_hidden and student_weight, "kd": mean D,
        "ce": mean CE}`` (the means detached, for logging).
    """

    _check_divergence(divergence)
    mask = labels != -100
    rows = int(mask.sum())
    if rows == 0:
        zero = student_hidden.sum() * 0.0
        return {"loss": zero, "kd": zero.detach(), "ce": zero.detach()}
    count = float(rows if num_items is None else num_items)
    loss, kd, ce = _fused_distill().apply(
        student_hidden[mask], student_weight, teacher_hidden[mask].detach(), teacher_weight.detach(), labels[mask],
        alpha * temperature**2 / count, (1 - alpha) / count, temperature, divergence, beta, max(1, chunk_tokens),
    )
    return {"loss": loss, "kd": kd / rows, "ce": ce / rows}


def _forward_kl_and_ce(logits: Any, t_logits: Any, targets: Any, temperature: float, scale_kd: float, scale_ce: float) -> tuple[Any, Any, Any]:
    """Per-row KL(teacher‖student) at ``temperature`` and cross-entropy, and the gradient of
    ``scale_kd·ΣKL + scale_ce·ΣCE`` in the student's logits: ``scale_kd·(p_s − p_t)/T + scale_ce·(softmax − onehot)``."""
    import torch

    shared = min(logits.shape[-1], t_logits.shape[-1])
    s = torch.log_softmax(logits[:, :shared] / temperature, dim=-1)
    t = torch.log_softmax(t_logits[:, :shared] / temperature, dim=-1)
    p_t = t.exp()
    kd = t.sub_(s).mul_(p_t).sum(-1)
    del t
    grad_kd = s.exp_().sub_(p_t).mul_(scale_kd / temperature)
    del p_t
    grad = torch.log_softmax(logits, dim=-1)
    ce = -grad.gather(-1, targets[:, None]).squeeze(-1)
    grad.exp_().scatter_add_(-1, targets[:, None], torch.full_like(ce[:, None], -1.0)).mul_(scale_ce)
    grad[:, :shared] += grad_kd
    return kd, ce, grad


@functools.cache
def _fused_distill() -> Any:
    import torch

    class FusedDistill(torch.autograd.Function):
        """Forward scores each chunk and keeps d(loss)/d(hidden rows) and d(loss)/d(weight); backward scales them."""

        @staticmethod
        def forward(ctx: Any, rows: Any, weight: Any, t_rows: Any, t_weight: Any, targets: Any, scale_kd: float,
                    scale_ce: float, temperature: float, divergence: str, beta: float, chunk: int) -> Any:
            grad_rows = torch.empty(rows.shape, dtype=torch.float32, device=rows.device)
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
            kd_sum = torch.zeros((), dtype=torch.float32, device=rows.device)
            ce_sum = torch.zeros((), dtype=torch.float32, device=rows.device)
            for start in range(0, rows.shape[0], chunk):
                hidden = rows[start : start + chunk]
                logits = _head_logits(hidden, weight, None, 1.0)
                t_logits = _head_logits(t_rows[start : start + chunk], t_weight, None, 1.0)
                if divergence == "forward_kl":  # the default: its gradient written out, in place (4 chunk-sized copies, not 9)
                    kd, ce, grad_logits = _forward_kl_and_ce(logits, t_logits, targets[start : start + chunk], temperature, scale_kd, scale_ce)
                else:
                    logits.requires_grad_()
                    with torch.enable_grad():
                        kd = _divergence(logits, t_logits, temperature, divergence, beta)
                        ce = torch.nn.functional.cross_entropy(logits, targets[start : start + chunk], reduction="none")
                        (grad_logits,) = torch.autograd.grad(scale_kd * kd.sum() + scale_ce * ce.sum(), logits)
                del t_logits
                kd_sum += kd.detach().sum()
                ce_sum += ce.detach().sum()
                grad_logits = grad_logits.to(hidden.dtype)  # the matmuls below run as the head's did (autocast included)
                grad_rows[start : start + chunk] = grad_logits @ weight
                if grad_weight is not None:
                    grad_weight += grad_logits.t() @ hidden
            ctx.save_for_backward(grad_rows, grad_weight)
            ctx.dtypes = (rows.dtype, weight.dtype)
            ctx.mark_non_differentiable(kd_sum, ce_sum)
            return scale_kd * kd_sum + scale_ce * ce_sum, kd_sum, ce_sum

        @staticmethod
        def backward(ctx: Any, grad_loss: Any, *_: Any) -> Any:
            grad_rows, grad_weight = ctx.saved_tensors
            rows_dtype, weight_dtype = ctx.dtypes
            grad_w = None if grad_weight is None else (grad_weight * grad_loss).to(weight_dtype)
            return (grad_rows * grad_loss).to(rows_dtype), grad_w, None, None, None, None, None, None, None, None, None

    return FusedDistill


def use_chunked_lm_head(model: Any, *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS, temperature: float = 1.0) -> bool:
    """Make ``model(..., labels=..., fused_lm_head=True)`` score per-token log-probs with :func:`chunked_token_logprobs`.

    That call is how TRL's trainers (SFT, DPO, KTO, GRPO, RLOO) ask for log-probs without full
    logits; TRL's own kernel tiles 32 768 vocabulary entries by 4 096 tokens, which on a CPU holds
    more than the full logits do. Without ``fused_lm_head`` the model's forward is unchanged
    (generation, evaluation). A PEFT model is patched on its base model. Returns False (and changes
    nothing) for models whose logits are scaled or soft-capped (Gemma 2, Granite…) or that add a
    mixture-of-experts loss: their trainer's own path stays.
    """
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config
    if any(getattr(config, name, None) not in (None, 1.0) for name in _SCALED) or getattr(config, "output_router_logits", False):
        return False
    previous = target.forward

    @functools.wraps(type(target).forward)
    def forward(self: Any, *args: Any, fused_lm_head: bool = False, labels: Any = None, shift_labels: Any = None,
                num_items_in_batch: Any = None, **kwargs: Any) -> Any:
        if not fused_lm_head:
            extra = {k: v for k, v in (("labels", labels), ("shift_labels", shift_labels), ("num_items_in_batch", num_items_in_batch))
                     if v is not None}
            return previous(*args, **kwargs, **extra)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        head = self.get_output_embeddings()
        out = chunked_token_logprobs(hidden.to(head.weight.device), head.weight, labels.to(head.weight.device), bias=head.bias,
                                     temperature=temperature, chunk_tokens=chunk_tokens, stats=True)
        count = out["label_mask"].sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return _fused_output(loss=-out["log_probs"].sum() / count, **out)

    target.forward = types.MethodType(forward, target)
    return True


def _fused_output(**fields: Any) -> Any:
    try:  # the output TRL's trainers read: same fields, so their metrics (entropy, accuracy) keep working
        from trl.trainer.utils import FusedCausalLMOutput
    except ImportError:  # pragma: no cover - without trl, a plain ModelOutput with the same fields
        from transformers.utils import ModelOutput

        return ModelOutput(**fields)
    return FusedCausalLMOutput(**fields)


def use_chunked_loss(run: Run, trainer: Any, *, temperature: float = 1.0) -> bool:
    """Serve ``trainer``'s per-token log-probs (its model and reference model) through the chunked head,
    when the recipe's ``train.chunked_loss`` is on (the default). Call it on the trainer you built,
    before returning it from ``build_trainer``; returns whether the chunked path is in use."""
    from ptrain._training import world_size

    train = run.recipe.train
    if not train.chunked_loss:
        return False
    if world_size() > 1 and run.recipe.distributed.backend == "fsdp":
        log.info("loss: the trainer's own (FSDP shards the output head; the chunked path does not gather it)")
        return False
    used = False
    for model in (getattr(trainer, "model", None), getattr(trainer, "ref_model", None)):
        if model is not None and hasattr(model, "config"):
            used = use_chunked_lm_head(model, chunk_tokens=train.loss_chunk_tokens, temperature=temperature) or used
    log.info("loss: %s", f"chunked, {train.loss_chunk_tokens} tokens at a time" if used else "the trainer's own")
    return used
