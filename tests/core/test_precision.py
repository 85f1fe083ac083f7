"""bf16 on CPUs that compute it: what ``auto`` chooses and why (machine facts patched), and a real
bf16 run of builtin:tiny-llama on this CPU whose loss falls."""

import json

import pytest

from ptrain import RecipeError, _precision
from ptrain._precision import choose_precision

BIG = 135_000_000


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """Patch the CPU's flags and its matmul probe; the probe's cache goes to a temporary directory."""
    monkeypatch.setenv("PTRAIN_CACHE_DIR", str(tmp_path))

    def set_cpu(flags, fp32=100.0, bf16=150.0):
        monkeypatch.setattr(_precision, "cpu_flags", lambda: set(flags))
        monkeypatch.setattr(_precision, "matmul_peak", lambda refresh=False: {"fp32": fp32, "bf16": bf16})

    return set_cpu


def test_auto_picks_bf16_where_the_cpu_has_it_and_it_measures_faster(cpu):
    cpu({"avx2", "avx512_bf16"}, fp32=100, bf16=160)
    choice = choose_precision("auto", cuda=False, bf16=False, parameters=BIG)
    assert choice.chosen == "bf16" and choice.flags() == {"bf16": True, "fp16": False}
    assert "avx512_bf16" in choice.reason and "1.60x" in choice.reason


def test_auto_picks_fp32_where_the_probe_says_bf16_is_slower(cpu):
    cpu({"amx_bf16"}, fp32=100, bf16=80)
    choice = choose_precision("auto", cuda=False, bf16=False, parameters=BIG)
    assert choice.chosen == "fp32" and choice.flags() == {"bf16": False, "fp16": False}
    assert "bf16 matmuls measured 0.80x fp32's" in choice.reason


def test_auto_picks_fp32_on_a_cpu_without_bf16_instructions(cpu):
    cpu({"avx2", "avx512f"})
    choice = choose_precision("auto", cuda=False, bf16=False, parameters=BIG)
    assert choice.chosen == "fp32" and "no bf16 instructions" in choice.reason


def test_auto_keeps_tiny_models_in_fp32(cpu):
    cpu({"avx512_bf16"}, fp32=100, bf16=300)
    choice = choose_precision("auto", cuda=False, bf16=False, parameters=1_000_000)
    assert choice.chosen == "fp32" and "too small" in choice.reason


def test_fp16_on_a_cpu_names_the_key_and_the_fix():
    with pytest.raises(RecipeError, match="train.precision = 'fp16' needs a CUDA GPU; use 'bf16', 'auto' or 'fp32'"):
        choose_precision("fp16", cuda=False, bf16=False)


def test_the_probe_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("PTRAIN_CACHE_DIR", str(tmp_path))
    calls = []
    monkeypatch.setattr(_precision, "measure_matmul_gflops", lambda dtype, **_: calls.append(dtype) or 10.0)
    first = _precision.matmul_peak()
    assert first == _precision.matmul_peak() == {"fp32": 10.0, "bf16": 10.0}
    assert len(calls) == 2  # measured once, read back after
    assert (tmp_path / "matmul_peak.json").is_file()


@pytest.mark.slow
def test_bf16_on_cpu_trains_tiny_llama_with_a_falling_loss(run_recipe, monkeypatch, tmp_path):
    from conftest import RECIPES

    monkeypatch.setenv("PTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    run = run_recipe(
        RECIPES / "sft_tiny.toml", "train.precision='bf16'", "train.max_steps=40", "train.logging_steps=5",
        "data.num_examples=400", "data.eval_size=8", "eval.base=false", "output.save_model=false",
    )
    train = run.metrics["train"]
    assert train["precision"] == "bf16" and run.trainer.args.bf16
    assert train["last_logged_loss"] < 0.9 * train["first_logged_loss"], train
    assert 0 < train["mfu"] < 1 and train["peak_tflops"] > 0  # against this CPU's measured bf16 matmul peak
    env = json.loads((run.dir / "env.json").read_text())
    assert env["precision"] == {"requested": "bf16", "chosen": "bf16", "reason": "set in the recipe (bf16 autocast on the CPU)"}
    assert "precision: bf16" in (run.dir / "run.log").read_text()
    # after training the model's forward is its own again (the chunked head's patch kept, the trainer's autocast gone):
    # the final evaluation ran it in fp32, as the base evaluation and the exported weights do
    import torch

    assert "_original_forward" not in vars(run.model) and "generate" not in vars(run.model)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        assert torch.equal(run.model(input_ids=ids).logits, type(run.model).forward(run.model, input_ids=ids).logits)
