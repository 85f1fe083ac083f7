"""The distillation losses: pure functions of logits (and the tokenization of a completion for ULD)."""

from __future__ import annotations

from typing import Any


def kd_divergence(student_logits: Any, teacher_logits: Any, temperature: float, divergence: str = "forward_kl", beta: float = 0.5) -> Any:
    """Per-position divergence between teacher and student distributions at ``temperature``.

    Both inputs are ``[N, V]`` logits over one vocabulary; softmax runs in fp32. ``forward_kl`` is
    KL(teacher‖student), ``reverse_kl`` KL(student‖teacher), ``jsd`` the generalized JSD
    ``β·KL(t‖m) + (1−β)·KL(s‖m)`` with ``m = β·t + (1−β)·s``. Returns ``[N]``.
    """
    import math

    import torch

    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if divergence == "forward_kl":
        return (t.exp() * (t - s)).sum(-1)
    if divergence == "reverse_kl":
        return (s.exp() * (s - t)).sum(-1)
    if divergence == "jsd":
        m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
        return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)
    raise ValueError(f"unknown divergence {divergence!r}")


def logit_kd_loss(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    temperature: float = 2.0,
    alpha: float = 0.5,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    num_items: Any = None,
) -> tuple[Any, Any, Any]:
    """``α·T²·D + (1−α)·CE`` averaged over completion tokens; returns ``(loss, kd, ce)``.

    ``num_items``: the completion tokens of the whole optimizer step (every micro-batch of gradient
    accumulation, every process), as the Trainer counts them; the loss is then this batch's sum over
    that count, so that the step's gradient is the per-token mean over all of them. Left out, the
    mean over this batch. The two parts come back detached (means over this batch), for logging. ``student_logits`` ``[B, L, Vs]`` and ``teacher_logits`` ``[B, L, Vt]`` come from the same
    input ids; ``labels`` ``[B, L]`` hold ``-100`` on prompt and padding (the mask comes from the
    labels, never from the pad id). Position ``i`` predicts token ``i + 1``. When the vocabulary
    sizes differ (padded embeddings within one family) the divergence uses the shared first
    ``min(Vs, Vt)`` entries; CE uses the student's full vocabulary.
    """
    import torch

    targets = labels[:, 1:]
    mask = targets != -100
    student = student_logits[:, :-1][mask]
    teacher = teacher_logits[:, :-1][mask]
    if student.shape[0] == 0:
        zero = student_logits.sum() * 0.0
        return zero, zero.detach(), zero.detach()
    ce = torch.nn.functional.cross_entropy(student.float(), targets[mask], reduction="none")
    shared = min(student.shape[-1], teacher.shape[-1])
    kd = kd_divergence(student[:, :shared], teacher[:, :shared], temperature, divergence, beta)
    count = student.shape[0] if num_items is None else num_items
    loss = (alpha * temperature**2 * kd.sum() + (1 - alpha) * ce.sum()) / count
    return loss, kd.mean().detach(), ce.mean().detach()


def chunked_logit_kd_loss(
    student: Any,
    teacher: Any,
    inputs: dict[str, Any],
    temperature: float = 2.0,
    alpha: float = 0.5,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    num_items: Any = None,
    chunk_tokens: int = 1024,
) -> tuple[Any, Any, Any] | None:
    """:func:`logit_kd_loss` from the two models' hidden states, through :func:`ptrain.chunked_distill_loss`: neither
    model's ``[tokens × vocabulary]`` logits exist whole. Returns None where the chunked path does not apply
    (a prompt-learning adapter's virtual tokens, an output head with a bias or scaled logits): use the logits then."""
    import torch

    from ptrain import chunked_distill_loss

    def backbone_and_head(model: Any) -> tuple[Any, Any] | None:
        if getattr(model, "peft_config", None) and getattr(model, "active_peft_config", None) is not None:
            if model.active_peft_config.is_prompt_learning:
                return None
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        head = base.get_output_embeddings()
        config = base.config
        scaled = any(getattr(config, k, None) not in (None, 1.0) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
        if head is None or head.bias is not None or scaled:
            return None
        return base.base_model, head

    parts = backbone_and_head(student), backbone_and_head(teacher)
    if parts[0] is None or parts[1] is None:
        return None
    (s_body, s_head), (t_body, t_head) = parts
    ids, attention = inputs["input_ids"], inputs.get("attention_mask")
    student_hidden = s_body(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state[:, :-1]
    with torch.no_grad():
        teacher_hidden = t_body(input_ids=ids.to(t_head.weight.device), attention_mask=None if attention is None else
                                attention.to(t_head.weight.device), use_cache=False).last_hidden_state[:, :-1]
    out = chunked_distill_loss(student_hidden, s_head.weight, teacher_hidden.to(student_hidden.device), t_head.weight.to(student_hidden.device),
                               inputs["labels"][:, 1:], alpha=alpha, temperature=temperature, divergence=divergence, beta=beta, num_items=num_items,
                               chunk_tokens=chunk_tokens)
    return out["loss"], out["kd"], out["ce"]


def uld_loss(student_logits: Any, teacher_logits: Any, temperature: float = 1.0) -> Any:
    """Universal Logit Distillation (Boizard et al., 2024) for tokenizers with different vocabularies.

    ``student_logits`` ``[Ns, Vs]`` and ``teacher_logits`` ``[Nt, Vt]`` are the logits at the
    completion positions of one example in each tokenization; the first ``min(Ns, Nt)`` positions are
    aligned. Each distribution is sorted (so no token mapping is needed), the shorter vocabulary is
    padded with zeros, and the loss is the L1 distance per position (the 1-D Wasserstein distance
    between sorted distributions), summed over the vocabulary. Returns ``[min(Ns, Nt)]``.
    """
    import torch

    n = min(student_logits.shape[0], teacher_logits.shape[0])
    s = torch.softmax(student_logits[:n].float() / temperature, dim=-1).sort(dim=-1, descending=True).values
    t = torch.softmax(teacher_logits[:n].float() / temperature, dim=-1).sort(dim=-1, descending=True).values
    width = max(s.shape[-1], t.shape[-1])
    s = torch.nn.functional.pad(s, (0, width - s.shape[-1]))
    t = torch.nn.functional.pad(t, (0, width - t.shape[-1]))
    return (s - t).abs().sum(-1)


def completion_ids(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], int]:
    """``(ids of prompt + completion + EOS, index of the first completion token)`` in ``tokenizer``."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + completion)["input_ids"] + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    start = next((i for i, (a, b) in enumerate(zip(prompt_ids, full, strict=False)) if a != b), min(len(prompt_ids), len(full)))
    return full, max(start, 1)
