"""The chunked loss equals the unchunked one, in value and gradient (fp32 tolerance): SFT's
cross-entropy with completion-only masks, a preference loss's sequence log-probs, GRPO's per-token
log-probs at a temperature, logit distillation's KL/JSD; and TRL's trainers get the same outputs
from the chunked head as from their own."""

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from ptrain import (  # noqa: E402
    chunked_cross_entropy,
    chunked_distill_loss,
    chunked_kd_loss,
    chunked_token_logprobs,
    use_chunked_lm_head,
)

V, H = 300, 24


def _inputs(seed=0, batch=3, length=11):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, H, generator=g, dtype=torch.float64).float().requires_grad_()
    weight = (torch.randn(V, H, generator=g) * 0.3).requires_grad_()
    labels = torch.randint(0, V, (batch, length), generator=g)
    labels[0, :4] = -100  # a prompt: completion-only
    labels[1, -3:] = -100  # padding
    return hidden, weight, labels


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 5, 1024])
def test_sft_cross_entropy_and_gradients_equal_the_full_logits(chunk):
    hidden, weight, labels = _inputs()
    full = F.cross_entropy((hidden[:, :-1] @ weight.t()).reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    chunked = chunked_cross_entropy(hidden, weight, labels, chunk_tokens=chunk)
    _close(chunked, full)
    for a, b in zip(_grads(chunked, hidden, weight), _grads(full, hidden, weight), strict=True):
        _close(a, b)


def test_a_batch_with_nothing_to_learn_gives_zero_and_a_gradient():
    hidden, weight, labels = _inputs()
    loss = chunked_cross_entropy(hidden, weight, torch.full_like(labels, -100))
    assert loss.item() == 0.0
    assert _grads(loss, weight)[0].abs().sum() == 0


def test_preference_sequence_logprobs_and_dpo_loss_match():
    hidden, weight, labels = _inputs(seed=1, batch=4)
    targets = labels[:, 1:]
    reference = torch.log_softmax(hidden[:, :-1] @ weight.t(), -1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    reference = reference.masked_fill(targets == -100, 0)
    chunked = chunked_token_logprobs(hidden[:, :-1], weight, targets, chunk_tokens=7)
    _close(chunked, reference)

    def dpo(per_token):  # rows 0, 2 chosen; 1, 3 rejected
        seq = per_token.sum(-1)
        return -F.logsigmoid(0.1 * ((seq[0] - seq[1]) + (seq[2] - seq[3])))

    for a, b in zip(_grads(dpo(chunked), hidden, weight), _grads(dpo(reference), hidden, weight), strict=True):
        _close(a, b)


def test_grpo_per_token_logprobs_at_a_temperature_and_entropy_match():
    hidden, weight, labels = _inputs(seed=2)
    bias = torch.randn(V, requires_grad=True)
    logits = (hidden @ weight.t() + bias) / 0.7
    log_p = torch.log_softmax(logits, -1)
    mask = labels != -100
    ref = log_p.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * mask
    ref_entropy = -(log_p.exp() * log_p).sum(-1) * mask
    out = chunked_token_logprobs(hidden, weight, labels, bias=bias, temperature=0.7, chunk_tokens=4, stats=True)
    _close(out["log_probs"], ref)
    _close(out["entropy"], ref_entropy)
    assert torch.equal(out["is_top1"], (logits.argmax(-1) == labels) & mask)
    advantages = torch.linspace(-1, 1, labels.numel()).view(labels.shape)
    chunked_loss = -(out["log_probs"] * advantages).sum() / mask.sum()
    full_loss = -(ref * advantages).sum() / mask.sum()
    for a, b in zip(_grads(chunked_loss, hidden, weight, bias), _grads(full_loss, hidden, weight, bias), strict=True):
        _close(a, b)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_logit_distillation_divergence_matches_the_full_logits(divergence):
    from ptrain_methods.distill.losses import kd_divergence

    hidden, weight, labels = _inputs(seed=3)
    teacher_hidden = torch.randn(3, 11, 32)
    teacher_weight = torch.randn(V + 20, 32) * 0.3  # a padded teacher vocabulary: the first V entries are shared
    mask = labels != -100
    reference = kd_divergence((hidden @ weight.t())[mask], (teacher_hidden @ teacher_weight.t())[mask][:, :V], 2.0, divergence, 0.3)
    chunked = chunked_kd_loss(hidden, weight, teacher_hidden, teacher_weight, mask, temperature=2.0, divergence=divergence,
                              beta=0.3, chunk_tokens=6)
    _close(chunked, reference)
    for a, b in zip(_grads(chunked.sum(), hidden, weight), _grads(reference.sum(), hidden, weight), strict=True):
        _close(a, b)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("num_items", [None, 40])
def test_the_whole_distillation_loss_and_its_gradients_equal_the_full_logits(divergence, num_items):
    """chunked_distill_loss takes its gradient in the forward pass: value, d/d(hidden) and d/d(head weight) must
    equal logit_kd_loss on the full logits, whatever the backward pass multiplies the loss by."""
    from ptrain_methods.distill.losses import logit_kd_loss

    hidden, weight, labels = _inputs(seed=4)
    teacher_hidden = torch.randn(3, 11, 32)
    teacher_weight = torch.randn(V + 20, 32) * 0.3
    shifted = torch.cat([labels[:, :1], labels], dim=1)  # logit_kd_loss shifts: position i predicts labels[i + 1]
    pad = torch.zeros(3, 1, H)
    reference, ref_kd, ref_ce = logit_kd_loss(torch.cat([hidden, pad], 1) @ weight.t(), torch.cat([teacher_hidden, torch.zeros(3, 1, 32)], 1)
                                              @ teacher_weight.t(), shifted, temperature=2.0, alpha=0.3, divergence=divergence,
                                              beta=0.3, num_items=num_items)
    out = chunked_distill_loss(hidden, weight, teacher_hidden, teacher_weight, labels, alpha=0.3, temperature=2.0, divergence=divergence,
                               beta=0.3, num_items=num_items, chunk_tokens=7)
    _close(out["loss"], reference)
    _close(out["kd"], ref_kd)
    _close(out["ce"], ref_ce)
    for a, b in zip(_grads(3.0 * out["loss"], hidden, weight), _grads(3.0 * reference, hidden, weight), strict=True):
        _close(a, b)


def test_the_whole_distillation_loss_with_a_frozen_head_and_under_autocast():
    hidden, weight, labels = _inputs(seed=5)
    teacher_hidden, teacher_weight = torch.randn(3, 11, 32), torch.randn(V, 32) * 0.3
    frozen = weight.detach()
    out = chunked_distill_loss(hidden, frozen, teacher_hidden, teacher_weight, labels, chunk_tokens=4)
    full = chunked_kd_loss(hidden, frozen, teacher_hidden, teacher_weight, labels != -100, chunk_tokens=4)
    ce = -chunked_token_logprobs(hidden, frozen, labels)[labels != -100]
    _close(out["loss"], (0.5 * full.sum() + 0.5 * ce.sum()) / full.shape[0])
    (grad,) = _grads(out["loss"], hidden)
    (expected,) = _grads((0.5 * full.sum() + 0.5 * ce.sum()) / full.shape[0], hidden)
    _close(grad, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the head's matmuls in bf16, as the unfused path's
        fused = chunked_distill_loss(hidden, weight, teacher_hidden, teacher_weight, labels)["loss"]
        kd = chunked_kd_loss(hidden, weight, teacher_hidden, teacher_weight, labels != -100)
        ce = -chunked_token_logprobs(hidden, weight, labels)[labels != -100]
        unfused = (0.5 * kd.sum() + 0.5 * ce.sum()) / kd.shape[0]
    torch.testing.assert_close(fused, unfused, rtol=1e-3, atol=1e-3)
    for a, b in zip(_grads(fused, hidden, weight), _grads(unfused, hidden, weight), strict=True):
        torch.testing.assert_close(a, b, rtol=0.05, atol=2e-3)
    assert chunked_distill_loss(hidden, weight, teacher_hidden, teacher_weight, torch.full_like(labels, -100))["loss"].item() == 0.0


def test_trl_trainers_get_the_same_outputs_from_the_chunked_head():
    from trl.trainer.utils import add_fused_lm_head

    from ptrain import load_pretrained

    torch.manual_seed(0)
    model, _ = load_pretrained("builtin:tiny-llama")
    ids = torch.randint(3, model.config.vocab_size, (2, 9))
    labels = ids.clone()
    labels[:, :3] = -100
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1", "mean_logits"))
    theirs = model(input_ids=ids, labels=labels, fused_lm_head=True)
    their_grad = torch.autograd.grad(theirs.loss, model.lm_head.weight)[0]
    assert use_chunked_lm_head(model, chunk_tokens=5)
    ours = model(input_ids=ids, labels=labels, fused_lm_head=True)
    our_grad = torch.autograd.grad(ours.loss, model.lm_head.weight)[0]
    for name in ("loss", "log_probs", "entropy", "mean_logits"):
        _close(getattr(ours, name), getattr(theirs, name))
    assert torch.equal(ours.is_top1, theirs.is_top1) and torch.equal(ours.label_mask, theirs.label_mask)
    _close(our_grad, their_grad)
    plain = model(input_ids=ids)  # without fused_lm_head the forward is the model's own
    assert plain.logits.shape == (2, 9, model.config.vocab_size)


def test_the_recipe_key_turns_the_chunked_path_off():
    from types import SimpleNamespace

    from ptrain import load_pretrained, use_chunked_loss

    model, _ = load_pretrained("builtin:tiny-llama")
    before = model.forward
    trainer = SimpleNamespace(model=model, ref_model=None)
    off = SimpleNamespace(recipe=SimpleNamespace(train=SimpleNamespace(chunked_loss=False, loss_chunk_tokens=64)))
    assert not use_chunked_loss(off, trainer) and model.forward == before
    on = SimpleNamespace(recipe=SimpleNamespace(train=SimpleNamespace(chunked_loss=True, loss_chunk_tokens=64)))
    assert use_chunked_loss(on, trainer) and model.forward != before
