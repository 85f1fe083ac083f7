"""bitsandbytes' packed 4-bit CPU layout (CPUs with AVX512-BF16), forced on any CPU.

The repack (``_convert_weight_packed_for_cpu``) is plain torch, and ``has_avx512bf16`` decides at
layer construction whether a layer may take it, so both run on every machine: a model ptrain
exports or trains must never reach a repack that fails, nor train through a repacked layer.
"""

import copy

import pytest

from ptrain._bnb import keep_off_packed_path, packed_layout_fits
from ptrain_methods.quantize.backends import four_bit_skip_modules


def _odd_llama(tmp_path):
    """A tiny llama whose MLP width (352 = 5.5 blocks of 64) the packed layout cannot take."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=352, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    return tmp_path


def _four_bit(path, skip=None):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                                llm_int8_skip_modules=skip)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=config, device_map="cpu")


def _repack_failures(model):
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    failed = []
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            try:
                _convert_weight_packed_for_cpu(module.weight.data.clone(), copy.deepcopy(module.weight.quant_state))
            except (RuntimeError, AssertionError):
                failed.append(name)
    return failed


def test_shape_rule():
    assert packed_layout_fits(128, 384) and packed_layout_fits(1536, 576)  # tiny-llama, SmolLM2
    assert not packed_layout_fits(128, 352) and not packed_layout_fits(48, 128)


@pytest.fixture
def packed_path_forced(monkeypatch):
    """Layers built from here on believe the CPU has AVX512-BF16."""
    import bitsandbytes.nn.modules

    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)


def test_exports_leave_unfit_layers_unquantized(tmp_path, packed_path_forced):
    path = _odd_llama(tmp_path)
    naive = _four_bit(path)
    assert _repack_failures(naive) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]  # the bug, reproduced

    skip = four_bit_skip_modules(str(path))
    assert skip == ["lm_head", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    portable = _four_bit(path, skip)
    assert _repack_failures(portable) == []
    assert type(portable.model.layers[0].mlp.down_proj).__name__ == "Linear"
    assert type(portable.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    assert type(portable.lm_head).__name__ == "Linear"  # the head stays unquantized, as transformers does by default
    from ptrain._models import builtin_checkpoint

    assert four_bit_skip_modules(str(builtin_checkpoint("tiny-llama", 0))) is None  # the built-in fits every backend


def test_in_process_models_stay_off_the_packed_path_where_needed(tmp_path, packed_path_forced):
    import bitsandbytes as bnb

    model = _four_bit(_odd_llama(tmp_path))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert all(m.support_avx512bf16_for_cpu for m in layers.values())
    # forward only (a quantized teacher): only the layers that do not fit leave the fast path
    assert keep_off_packed_path(model, training=False) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    # a model that trains (QLoRA): every layer, since a repacked layer has no backward
    keep_off_packed_path(model, training=True)
    assert not any(m.support_avx512bf16_for_cpu for m in layers.values())


@pytest.mark.slow
def test_quantize_exports_an_odd_shaped_model_that_reloads_and_generates(tmp_path, run_recipe):
    """End to end through the quantize method; on a CPU with AVX512-BF16 the reload takes the packed path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptrain._models import ASSETS

    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-llama")
    path = _odd_llama(tmp_path / "odd")
    tokenizer.save_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(path)
    recipe = {
        "name": "odd", "methods": ["quantize"], "model": {"name": str(path)},
        "data": {"source": "builtin:tasks", "tasks": ["uppercase"], "num_examples": 40, "eval_size": 4},
        "eval": {"base": False, "max_samples": 4, "max_new_tokens": 4},
        "output": {"save_model": False, "plots": False},
        "quantize": {"variants": ["nf4"], "window": 32, "stride": 16},
    }
    run = run_recipe(recipe)
    row = run.metrics["quantize"]["models"]["nf4"]
    assert row["unquantized_modules"] == ["lm_head", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert row["perplexity"] > 0 and row["generation_tokens_per_s"] > 0
    reloaded = AutoModelForCausalLM.from_pretrained(run.dir / "quantized" / "nf4")
    ids = tokenizer("Write the text in capital letters.", return_tensors="pt")
    assert reloaded.generate(**ids, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 3
