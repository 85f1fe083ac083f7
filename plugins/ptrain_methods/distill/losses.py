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
    return sorted_l1(
        torch.softmax(student_logits[:n].float() / temperature, dim=-1), torch.softmax(teacher_logits[:n].float() / temperature, dim=-1)
    )


def sorted_l1(student_probs: Any, teacher_probs: Any) -> Any:
    """ULD's distance per row: the L1 distance between the two rows' probabilities sorted, the shorter padded with zeros."""
    import torch

    s = student_probs.sort(dim=-1, descending=True).values
    t = teacher_probs.sort(dim=-1, descending=True).values
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


def token_texts(tokenizer: Any) -> dict[str, int]:
    """Each token's text as it reads inside a text (after a plain letter), mapped to its id; special tokens,
    partial UTF-8 bytes and tokens that read as nothing are left out, and of two tokens with one text the first wins.

    Read in context, a word-initial marker (``Ġ`` in byte-level BPE, ``▁`` in SentencePiece) is the space it
    stands for, so ``Ġrob`` and ``▁rob`` are the same text.
    """
    anchor = tokenizer("a", add_special_tokens=False)["input_ids"]
    lead = tokenizer.decode(anchor)
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts: dict[str, int] = {}
    for token, text in zip(ids, tokenizer.batch_decode([anchor + [i] for i in ids]), strict=True):
        if text.startswith(lead) and len(text) > len(lead) and "\ufffd" not in text:
            texts.setdefault(text[len(lead) :], token)
    return texts


def matched_vocabulary(student_tokenizer: Any, teacher_tokenizer: Any) -> tuple[Any, Any]:
    """GOLD's matched tokens: ``(student ids, teacher ids)`` of the tokens that are the same text in both
    vocabularies (see :func:`token_texts`), the two EOS tokens paired with each other. Long tensors, one pair a column."""
    import torch

    student, teacher = token_texts(student_tokenizer), token_texts(teacher_tokenizer)
    pairs = [(student[text], teacher[text]) for text in student.keys() & teacher.keys()]
    if student_tokenizer.eos_token_id is not None and teacher_tokenizer.eos_token_id is not None:
        pairs.append((student_tokenizer.eos_token_id, teacher_tokenizer.eos_token_id))
    pairs.sort()
    return torch.tensor([s for s, _ in pairs], dtype=torch.long), torch.tensor([t for _, t in pairs], dtype=torch.long)


def token_starts(tokenizer: Any, prefix: list[int], ids: list[int], origin: int | None = None) -> list[int]:
    """Where each of ``ids`` starts in the text, as characters after ``origin`` (default: the end of ``prefix``'s
    text). Each prefix is decoded whole, so the offsets are those of the text the tokens make together; a special
    token reads as nothing. A token that starts before ``origin`` gets a negative offset."""
    texts = tokenizer.batch_decode([prefix + ids[:k] for k in range(len(ids) + 1)], skip_special_tokens=True)
    origin = len(texts[0]) if origin is None else origin
    starts, reached = [], -origin
    for text in texts[:-1]:
        reached = max(reached, len(text) - origin)  # a partial UTF-8 byte can read shorter than what follows it
        starts.append(reached)
    return starts


def shared_starts(student_starts: list[int], teacher_starts: list[int]) -> list[tuple[int, int]]:
    """``(student index, teacher index)`` of the tokens that start at the same character in both tokenizations (the
    first of each side's tokens starting there): at those places both models predict the next token of the same text."""
    teacher_at: dict[int, int] = {}
    for index, start in enumerate(teacher_starts):
        teacher_at.setdefault(start, index)
    pairs, seen = [], set()
    for index, start in enumerate(student_starts):
        if start in teacher_at and start not in seen:
            seen.add(start)
            pairs.append((index, teacher_at[start]))
    return pairs


def hybrid_uld_loss(
    student_logits: Any,
    teacher_logits: Any,
    matched: tuple[Any, Any],
    temperature: float = 1.0,
    divergence: str = "forward_kl",
    beta: float = 0.5,
) -> Any:
    """ULD with matched tokens (GOLD's hybrid), for ``[N, Vs]`` and ``[N, Vt]`` logits at N places where both models
    predict the next token of the same text (:func:`shared_starts`). Returns ``[N]``: per place,

    * the divergence (``forward_kl``, ``reverse_kl`` or ``jsd``) between the two distributions over the matched
      tokens plus one outcome "any other token", so the teacher says *which* token where the vocabularies share it;
    * plus ULD's L1 distance between the *sorted* probabilities of the tokens that are not matched, for the rest.
    """
    import torch

    student_ids, teacher_ids = (ids.to(student_logits.device) for ids in matched)
    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)

    def with_rest(log_probs: Any, ids: Any) -> Any:
        kept = log_probs[:, ids]
        rest = torch.log1p(-kept.exp().sum(-1).clamp(max=1 - 1e-6)).unsqueeze(-1)
        return torch.cat([kept, rest], dim=-1)

    direct = kd_divergence(with_rest(s, student_ids), with_rest(t, teacher_ids), 1.0, divergence, beta)
    s_rest = torch.ones(s.shape[-1], dtype=torch.bool, device=s.device)
    s_rest[student_ids] = False
    t_rest = torch.ones(t.shape[-1], dtype=torch.bool, device=s.device)
    t_rest[teacher_ids] = False
    return direct + sorted_l1(s[:, s_rest].exp(), t[:, t_rest].exp())
