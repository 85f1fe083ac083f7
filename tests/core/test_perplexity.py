"""The strided sliding-window perplexity of ptrain.evaluation."""

import math

import pytest


@pytest.fixture(scope="module")
def tiny():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptrain._models import builtin_checkpoint

    location = builtin_checkpoint("tiny-llama", 42)
    return AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32), AutoTokenizer.from_pretrained(location)


TEXT = "\n\n".join(f"Reverse the words: alpha beta gamma {i}\n### Response:\ngamma beta alpha {i}" for i in range(12))


def full_sequence_nll(model, tokenizer, text):
    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item(), ids.size(1)


def test_one_window_covering_the_text_is_the_full_sequence_loss(tiny):
    from ptrain._evaluation import sliding_window_perplexity

    model, tokenizer = tiny
    nll, length = full_sequence_nll(model, tokenizer, TEXT)
    result = sliding_window_perplexity(model, tokenizer, TEXT, window=1024, stride=1024)
    assert result.windows == 1 and result.tokens == length - 1
    assert result.nll == pytest.approx(nll, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll), rel=1e-5)


def test_overlapping_windows_score_every_token_once(tiny):
    from ptrain._evaluation import sliding_window_perplexity

    model, tokenizer = tiny
    _, length = full_sequence_nll(model, tokenizer, TEXT)
    result = sliding_window_perplexity(model, tokenizer, TEXT, window=64, stride=16)
    assert result.tokens == length - 1
    assert result.windows > length // 16 - 4
    # without overlap the first token of every window has no context: fewer tokens are scored
    disjoint = sliding_window_perplexity(model, tokenizer, TEXT, window=64, stride=64)
    assert disjoint.tokens < result.tokens


def test_window_is_capped_and_text_truncated(tiny):
    from ptrain._evaluation import sliding_window_perplexity

    model, tokenizer = tiny
    result = sliding_window_perplexity(model, tokenizer, TEXT, window=10**6, stride=10**6, max_tokens=50)
    assert result.window == model.config.max_position_embeddings
    assert result.tokens == 49
    with pytest.raises(ValueError, match="stride"):
        sliding_window_perplexity(model, tokenizer, TEXT, window=8, stride=16)
