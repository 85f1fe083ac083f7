"""The gguf method: GGUF files that reload with transformers' GGUF loader and check themselves against their source."""

import json
import shutil

import pytest

from ptrain._errors import RecipeError, UsageError
from ptrain.testing import execute, tiny_recipe, validate

CHAT = {"chat": True, "num_examples": 120, "eval_size": 8}


@pytest.fixture(scope="module")
def gguf_run(tmp_path_factory):
    """A chat-trained builtin:tiny-llama run (a few SFT steps) exported to GGUF bf16 and q8_0, checked."""
    recipe = tiny_recipe(["sft", "gguf"], data=CHAT, train={"max_steps": 4}, gguf={"types": ["bf16", "q8_0"], "prompts": 6, "llama_cpp": False})
    return execute(recipe, output_dir=tmp_path_factory.mktemp("gguf") / "run")


@pytest.mark.slow
def test_bf16_and_q8_0_reload_with_transformers_and_pass_their_checks(gguf_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    table = gguf_run.metrics["gguf"]
    assert table["passed"] == 2, table
    bf16, q8 = table["files"]["bf16"], table["files"]["q8_0"]
    assert bf16["checks"]["generations_identical_to_rounded_source"] == 6 and bf16["checks"]["template_rows"] == 6
    assert bf16["max_logit_change"] < 0.05 and 0 < q8["max_logit_change"] < 0.5, (bf16, q8)
    assert q8["size_mb"] < 0.7 * bf16["size_mb"]
    # independently of the method: the files reload, bf16 gives the source's greedy tokens (weights rounded to bf16)
    source = gguf_run.dir / "model"
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in reference.parameters():
            if p.ndim >= 2:  # the file keeps norms in float32, as llama.cpp does
                p.copy_(p.to(torch.bfloat16).float())
    tokenizer = AutoTokenizer.from_pretrained(source)
    rows = [json.loads(line) for line in (gguf_run.dir / "samples.jsonl").read_text().splitlines()[:4]]
    logits = {}
    for qtype in ("bf16", "q8_0"):
        folder = gguf_run.dir / "gguf" / qtype
        name = f"test-{qtype}.gguf"
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()
        loaded = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        assert loaded.chat_template == tokenizer.chat_template
        for row in rows:
            ids = loaded(row["prompt"], return_tensors="pt")
            assert ids.input_ids.tolist() == tokenizer(row["prompt"], return_tensors="pt").input_ids.tolist()
            with torch.no_grad():
                logits[qtype] = (model(**ids).logits - reference(**ids).logits).abs().max().item()
            if qtype == "bf16":
                kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tokenizer.eos_token_id}
                assert model.generate(**ids, **kwargs).tolist() == reference.generate(**ids, **kwargs).tolist()
    assert logits["bf16"] == 0.0 and 0 < logits["q8_0"] < 0.5, logits
    modelfile = (gguf_run.dir / "gguf" / "q8_0" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./test-q8_0.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile and "TEMPLATE" not in modelfile
    card = (gguf_run.dir / "gguf" / "q8_0" / "README.md").read_text()
    assert "ollama create test-q8_0 -f Modelfile" in card and "byte-identically" in card and 'gguf_file="test-q8_0.gguf"' in card
    assert gguf_run.metrics["models"]["gguf-q8_0"]["final"]["model_size_mb"] == q8["size_mb"]


@pytest.mark.slow
def test_a_template_changed_after_training_fails_the_export_with_one_line(gguf_run, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(gguf_run.dir, edited, ignore=shutil.ignore_patterns("gguf"))
    template = edited / "model" / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>assistant\n", "<|im_start|>assistant\n\n"))
    recipe = tiny_recipe(["gguf"], data=CHAT, gguf={"types": ["bf16"], "source": str(edited), "prompts": 3})
    with pytest.raises(UsageError) as caught:
        execute(recipe, output_dir=tmp_path / "export")
    message = str(caught.value)
    assert "\n" not in message and "chat template" in message and "held-out row 1" in message, message
    assert "changed after training" in message
    assert not (tmp_path / "export" / "gguf" / "bf16").exists()  # a failed check leaves no file that looks complete


def test_types_are_checked_at_validation(monkeypatch):
    import importlib.util

    with pytest.raises(RecipeError, match="unknown GGUF type 'q3'"):
        validate(tiny_recipe(["gguf"], gguf={"types": ["q3"]}))
    validate(tiny_recipe(["gguf"], gguf={"types": ["f16", "q4_0"]}))
    # without llama-cpp-python (as in CI): a K-quant is refused before anything runs, in one line naming the extra
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else find_spec(name, *a))
    with pytest.raises(RecipeError) as caught:
        validate(tiny_recipe(["gguf"], gguf={"types": ["bf16", "q4_k_m"]}))
    message = str(caught.value)
    assert "\n" not in message and "'q4_k_m'" in message and 'pip install "ptrain[llamacpp]"' in message and "gguf.types" in message, message
    validate(tiny_recipe(["gguf"], gguf={"types": ["f16", "q4_0"]}))  # the numpy types need no llama.cpp


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_a_byte_level_tokenizer_and_qwen2_export_and_check(model_type, tmp_path):
    """SmolLM2 / Llama 3 / Qwen2 use byte-level BPE: written as ``gpt2`` with its merges; Qwen2 has q/k/v biases.
    (transformers rebuilds a qwen2 file's tokenizer with Qwen2's split rule: written as ``pre = "qwen2"``, else the
    round-trip check fails on these texts.)"""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ptrain._models import model_location

    tokenizer = AutoTokenizer.from_pretrained(model_location("builtin:tiny-gpt2"))
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    source = tmp_path / "source"
    AutoModelForCausalLM.from_config(config).save_pretrained(source)
    tokenizer.save_pretrained(source)
    recipe = tiny_recipe(["gguf"], data={"num_examples": 40, "eval_size": 4},
                         gguf={"types": ["f16"], "source": str(source), "prompts": 4, "name": "tiny"})
    run = execute(recipe, output_dir=tmp_path / "export")
    entry = run.metrics["gguf"]["files"]["f16"]
    assert entry["passed"] and entry["tokenizer"] == "gpt2" and entry["architecture"] == model_type, entry
    assert entry["checks"]["generations_identical_to_rounded_source"] == 4 and entry["checks"]["round_trip_texts"] == 4


@pytest.mark.slow
def test_a_prompt_template_run_gets_its_template_in_the_modelfile(tmp_path):
    recipe = tiny_recipe(["sft", "gguf"], data={"num_examples": 40, "eval_size": 4}, train={"max_steps": 1},
                         eval={"max_samples": 2}, gguf={"types": ["q8_0"], "prompts": 3})
    run = execute(recipe, output_dir=tmp_path / "run")
    entry = run.metrics["gguf"]["files"]["q8_0"]
    # trained without the chat template: the file's template is checked against the source tokenizer's own rendering
    assert entry["passed"] and entry["checks"]["template_rows"] == 3, entry
    modelfile = (run.dir / "gguf" / "q8_0" / "Modelfile").read_text()
    template = run.metrics["data"]["prompt"]["template_no_input"].replace("{instruction}", "{{ .Prompt }}")
    assert f'TEMPLATE """{template}{{{{ .Response }}}}"""' in modelfile, modelfile
