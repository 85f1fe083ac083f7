"""The distillation losses against hand computations on small tensors."""

import math

import pytest

torch = pytest.importorskip("torch")

from ptrain_methods.distill.losses import (  # noqa: E402
    hybrid_uld_loss,
    kd_divergence,
    logit_kd_loss,
    matched_vocabulary,
    shared_starts,
    token_starts,
    uld_loss,
)


def softmax(row, t):
    exps = [math.exp(x / t) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


STUDENT = [
    [[0.1, 0.2, 0.3], [1.0, -1.0, 0.5], [0.3, 0.3, 2.0], [2.0, 0.0, -2.0]],
    [[0.5, 0.5, 0.5], [-0.2, 0.7, 0.1], [1.5, -0.5, 0.0], [9.0, 9.0, 9.0]],
]
TEACHER = [
    [[0.0, 1.0, 0.0], [2.0, -2.0, 0.0], [0.0, 0.5, 3.0], [-1.0, 3.0, 1.0]],
    [[1.0, 0.0, -1.0], [0.3, 1.2, -0.4], [2.5, -1.0, 0.2], [-9.0, 9.0, -9.0]],
]
# prompt at position 0 (and 1 in row 0), padding at the end of row 1: -100 everywhere but completions
LABELS = [[-100, -100, 2, 0], [-100, 1, 0, -100]]


def hand_loss(temperature, alpha, teacher_vocab_extra=0):
    """Position i predicts label i+1: valid predicting positions are (0,1), (0,2), (1,0), (1,1)."""
    positions = [(b, i) for b in range(2) for i in range(3) if LABELS[b][i + 1] != -100]
    assert positions == [(0, 1), (0, 2), (1, 0), (1, 1)]
    kds, ces = [], []
    for b, i in positions:
        s, t = STUDENT[b][i], TEACHER[b][i]
        kds.append(kl(softmax(t, temperature), softmax(s, temperature)))
        ces.append(-math.log(softmax(s, 1.0)[LABELS[b][i + 1]]))
    kd, ce = sum(kds) / len(kds), sum(ces) / len(ces)
    return alpha * temperature**2 * kd + (1 - alpha) * ce, kd, ce


@pytest.mark.parametrize("temperature,alpha", [(2.0, 0.5), (1.0, 0.3), (4.0, 1.0)])
def test_logit_kd_matches_hand_computation(temperature, alpha):
    loss, kd, ce = logit_kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS), temperature, alpha)
    want, want_kd, want_ce = hand_loss(temperature, alpha)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert kd.item() == pytest.approx(want_kd, rel=1e-5)
    assert ce.item() == pytest.approx(want_ce, rel=1e-5)


def test_masked_positions_do_not_matter():
    """Changing logits at prompt, padding and the last position (predicts nothing) leaves the loss unchanged."""
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    base = logit_kd_loss(student, teacher, torch.tensor(LABELS))[0]
    noisy_s, noisy_t = student.clone(), teacher.clone()
    for b, i in [(0, 0), (0, 3), (1, 2), (1, 3)]:
        noisy_s[b, i] += torch.tensor([5.0, -3.0, 1.0])
        noisy_t[b, i] -= torch.tensor([2.0, 4.0, -1.0])
    assert logit_kd_loss(noisy_s, noisy_t, torch.tensor(LABELS))[0].item() == pytest.approx(base.item(), rel=1e-6)


def test_per_token_average_not_per_sequence():
    """Row 0 has 2 completion tokens, row 1 has 2; dropping one token of row 1 reweights the mean per token."""
    labels = [[-100, -100, 2, 0], [-100, 1, -100, -100]]
    _, kd, _ = logit_kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(labels), 2.0, 0.5)
    parts = [kl(softmax(TEACHER[b][i], 2.0), softmax(STUDENT[b][i], 2.0)) for b, i in [(0, 1), (0, 2), (1, 0)]]
    assert kd.item() == pytest.approx(sum(parts) / 3, rel=1e-5)


def test_vocab_sliced_to_the_shared_part():
    """A teacher with two padded vocabulary entries: the divergence uses the first three only."""
    teacher = torch.cat([torch.tensor(TEACHER), torch.full((2, 4, 2), -1e4)], dim=-1)
    loss = logit_kd_loss(torch.tensor(STUDENT), teacher, torch.tensor(LABELS), 2.0, 0.5)[0]
    assert loss.item() == pytest.approx(hand_loss(2.0, 0.5)[0], rel=1e-5)


def test_divergences():
    s, t = torch.tensor([[0.2, 1.0, -0.5]]), torch.tensor([[1.0, 0.0, 0.3]])
    ps, pt = softmax(s[0].tolist(), 2.0), softmax(t[0].tolist(), 2.0)
    assert kd_divergence(s, t, 2.0, "forward_kl").item() == pytest.approx(kl(pt, ps), rel=1e-5)
    assert kd_divergence(s, t, 2.0, "reverse_kl").item() == pytest.approx(kl(ps, pt), rel=1e-5)
    m = [0.3 * a + 0.7 * b for a, b in zip(pt, ps, strict=True)]
    assert kd_divergence(s, t, 2.0, "jsd", beta=0.3).item() == pytest.approx(0.3 * kl(pt, m) + 0.7 * kl(ps, m), rel=1e-5)
    assert kd_divergence(s, s, 2.0, "jsd").item() == pytest.approx(0.0, abs=1e-6)


def test_uld_sorts_and_pads_vocabularies():
    student = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [3.0, 0.0, 0.0]])  # 3 positions, vocab 3
    teacher = torch.tensor([[2.0, 0.0, 1.0, -50.0], [0.0, 0.0, 0.0, 0.0]])  # 2 positions, vocab 4
    got = uld_loss(student, teacher, 1.0)
    assert got.shape == (2,)
    # position 0: the same three probabilities in another order (+ a ~0 one): nearly no loss
    assert got[0].item() == pytest.approx(0.0, abs=1e-6)
    # position 1: uniform over 3 vs uniform over 4 -> |1/3-1/4| * 3 + 1/4
    assert got[1].item() == pytest.approx(3 * (1 / 3 - 1 / 4) + 1 / 4, rel=1e-5)


def test_hybrid_uld_tells_which_token_where_plain_uld_cannot():
    # vocabularies of 4 (student) and 3 (teacher); student token 1 and teacher token 0 are the same text, as are 3 and 2
    matched = (torch.tensor([1, 3]), torch.tensor([0, 2]))
    teacher = torch.tensor([[4.0, 0.0, 1.0]])
    right = torch.tensor([[-50.0, 4.0, 0.0, 1.0]])  # the teacher's distribution on the matching tokens
    wrong = torch.tensor([[-50.0, 1.0, 0.0, 4.0]])  # the same probabilities on the wrong tokens
    assert uld_loss(wrong, teacher, 1.0).item() == pytest.approx(0.0, abs=1e-6)  # sorted: ULD sees no difference
    assert hybrid_uld_loss(right, teacher, matched).item() == pytest.approx(0.0, abs=1e-5)
    assert hybrid_uld_loss(wrong, teacher, matched).item() > 0.5
    # its gradient moves probability onto the token the teacher prefers
    student = wrong.clone().requires_grad_(True)
    for _ in range(50):
        loss = hybrid_uld_loss(student, teacher, matched, divergence="reverse_kl").sum()
        (grad,) = torch.autograd.grad(loss, student)
        student = (student - 0.5 * grad).detach().requires_grad_(True)
    probs = torch.softmax(student, -1)[0]
    assert probs[1] > probs[3]


def test_hybrid_uld_matched_part_is_a_divergence_over_matched_tokens_and_the_rest():
    matched = (torch.tensor([0, 1]), torch.tensor([0, 1]))
    s = torch.tensor([[0.0, 1.0, 2.0]])
    t = torch.tensor([[1.0, 0.0, 0.5, 0.2]])
    ps, pt = softmax(s[0].tolist(), 1.0), softmax(t[0].tolist(), 1.0)
    direct = kl([pt[0], pt[1], pt[2] + pt[3]], [ps[0], ps[1], ps[2]])
    sorted_rest = abs(ps[2] - max(pt[2], pt[3])) + min(pt[2], pt[3])
    assert hybrid_uld_loss(s, t, matched).item() == pytest.approx(direct + sorted_rest, rel=1e-5)


def test_matched_tokens_and_shared_character_starts_on_the_bundled_tokenizers():
    from transformers import AutoTokenizer

    from ptrain import _models  # the bundled tokenizers of builtin:tiny-gpt2 and builtin:tiny-llama

    gpt2 = AutoTokenizer.from_pretrained(_models.ASSETS / "tiny-gpt2")
    llama = AutoTokenizer.from_pretrained(_models.ASSETS / "tiny-llama")
    student_ids, teacher_ids = matched_vocabulary(gpt2, llama)
    pairs = set(zip(student_ids.tolist(), teacher_ids.tolist(), strict=True))
    assert (gpt2.convert_tokens_to_ids("Ġthe"), llama.convert_tokens_to_ids("▁the")) in pairs  # " the" both ways
    assert (gpt2.eos_token_id, llama.eos_token_id) in pairs
    assert llama.bos_token_id not in teacher_ids.tolist()
    assert 300 < len(pairs) < min(len(gpt2), len(llama))
    prompt, completion = "Reverse the word: harbor\nAnswer:", " robrah now"
    starts = []
    for tok in (gpt2, llama):
        ids = tok(prompt + completion, add_special_tokens=False)["input_ids"]
        head = tok(prompt, add_special_tokens=False)["input_ids"]
        assert ids[: len(head)] == head
        starts.append(token_starts(tok, head, ids[len(head) :]))
        assert starts[-1][0] == 0 and starts[-1] == sorted(starts[-1]) and starts[-1][-1] < len(completion)
    places = shared_starts(*starts)
    assert places[0] == (0, 0)  # both start the completion at its first character
    assert {starts[0][s] for s, _ in places} >= {0, 7}  # and a word at the space before it: " now"
    for s, t in places:
        assert starts[0][s] == starts[1][t]


def test_step_token_count_turns_the_mean_into_a_share_of_the_step():
    """With the step's completion-token count (here 4 in this batch, 10 in the whole step), the loss is
    this batch's token sum over 10: summed over the step's batches, the per-token mean of the step."""
    mean = logit_kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS), 2.0, 0.5)
    share = logit_kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS), 2.0, 0.5, num_items=torch.tensor(10))
    assert share[0].item() == pytest.approx(mean[0].item() * 4 / 10, rel=1e-6)
    assert share[1].item() == pytest.approx(mean[1].item()) and share[2].item() == pytest.approx(mean[2].item())


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_chunked_logit_kd_equals_the_full_logits_loss_and_gradients(divergence):
    """train.chunked_loss's path through the two models' hidden states: the loss and the student's
    gradients equal logit_kd_loss on full logits (fp32 tolerance), with a LoRA student too."""
    from peft import LoraConfig, get_peft_model

    from ptrain import load_pretrained
    from ptrain_methods.distill.losses import chunked_logit_kd_loss

    torch.manual_seed(0)
    teacher, _ = load_pretrained("builtin:tiny-llama")
    student = get_peft_model(load_pretrained("builtin:tiny-llama")[0], LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for p in student.parameters():  # LoRA's B starts at zero: move it so its gradient path is exercised
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    ids = torch.randint(3, teacher.config.vocab_size, (2, 12))
    attention = torch.ones_like(ids)
    attention[1, -3:] = 0
    labels = ids.clone()
    labels[:, :5] = -100
    labels[1, -3:] = -100
    inputs = {"input_ids": ids, "attention_mask": attention, "labels": labels}
    trainable = [p for p in student.parameters() if p.requires_grad]

    chunked, kd, ce = chunked_logit_kd_loss(student, teacher, inputs, 2.0, 0.3, divergence, 0.4, chunk_tokens=3)
    chunked_grads = torch.autograd.grad(chunked, trainable)
    with torch.no_grad():
        teacher_logits = teacher(input_ids=ids, attention_mask=attention).logits
    full, full_kd, full_ce = logit_kd_loss(student(input_ids=ids, attention_mask=attention).logits, teacher_logits, labels,
                                           2.0, 0.3, divergence, 0.4)
    full_grads = torch.autograd.grad(full, trainable)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((kd, ce), (full_kd, full_ce), rtol=1e-5, atol=1e-6)
    for a, b in zip(chunked_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
