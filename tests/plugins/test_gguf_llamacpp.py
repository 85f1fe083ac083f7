"""The gguf method with llama.cpp (``ptrain[llamacpp]``): K-quants by its quantizer, llama.cpp as the second reader.

Skipped where llama-cpp-python is not installed (CI does not compile llama.cpp); the validate-time refusal
without it is tested in test_gguf.py."""

import json

import pytest

from ptrain._errors import UsageError
from ptrain.testing import execute, tiny_recipe

llama_cpp = pytest.importorskip("llama_cpp")

PLAIN = {"num_examples": 40, "eval_size": 4}


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    """builtin:tiny-llama trained a step with a prompt template, exported to bf16 (gguf package) and q4_k_m (llama.cpp)."""
    recipe = tiny_recipe(["sft", "gguf"], data=PLAIN, train={"max_steps": 1}, eval={"max_samples": 2},
                         gguf={"types": ["bf16", "q4_k_m"], "prompts": 4})
    return execute(recipe, output_dir=tmp_path_factory.mktemp("gguf-llamacpp") / "run")


@pytest.mark.slow
def test_q4_k_m_is_written_by_llama_cpp_and_passes_both_readers(llama_run):
    table = llama_run.metrics["gguf"]
    assert table["passed"] == 2, table
    q4 = table["files"]["q4_k_m"]
    assert q4["quantizer"].startswith("llama-cpp-python") and "llama.cpp" in q4["reader"] and "transformers" in q4["reader"], q4
    # hidden size 128 fills no 256-value K-quant super-block: llama.cpp falls back per tensor (q5_0 / q8_0), norms stay f32
    assert set(q4["tensor_types"]) <= {"q5_0", "q5_1", "q8_0", "f16", "f32"} and q4["tensor_types"]["f32"] == 9, q4["tensor_types"]
    assert q4["size_mb"] < 0.5 * table["files"]["bf16"]["size_mb"]
    assert 0 < q4["max_logit_change"] < 0.5 and 0 < q4["llama_cpp"]["max_logit_change"] < 0.5, q4
    for entry in table["files"].values():
        reading = entry["llama_cpp"]
        assert reading["tokenization_identical_texts"] == 4 and reading["tokens_per_s"] > 0, reading
        assert reading["identical_generations"].endswith("/4") and "task_metric" in reading
    card = (llama_run.dir / "gguf" / "q4_k_m" / "README.md").read_text()
    assert "quantized by llama.cpp" in card and "Read by llama.cpp" in card and "tokenizes 4 held-out texts" in card
    # independently of the method: the file reloads with transformers and with llama.cpp, whose tokens are the source's
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = llama_run.dir / "gguf" / "q4_k_m"
    AutoModelForCausalLM.from_pretrained(folder, gguf_file="test-q4_k_m.gguf")
    source = AutoTokenizer.from_pretrained(llama_run.dir / "model")
    llm = llama_cpp.Llama(model_path=str(folder / "test-q4_k_m.gguf"), n_ctx=256, verbose=False, n_threads=1)
    for line in (llama_run.dir / "samples.jsonl").read_text().splitlines()[:2]:
        text = json.loads(line)["prompt"]
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == source(text).input_ids


@pytest.mark.slow
def test_bf16_read_by_llama_cpp_answers_like_the_source(llama_run):
    """llama.cpp computes in its own kernels: its bf16 answers are reported, not failed on; on the tiny model they match."""
    reading = llama_run.metrics["gguf"]["files"]["bf16"]["llama_cpp"]
    same, total = map(int, reading["identical_generations"].split("/"))
    assert same >= total - 1, reading
    assert reading["max_logit_change"] < 0.05, reading


@pytest.mark.slow
def test_real_k_quant_blocks_reload_with_both_readers(tmp_path):
    """Hidden 256: llama.cpp writes true q4_k / q6_k tensors, which transformers' loader (gguf-py) de-quantizes too."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ptrain._models import model_location

    tokenizer = AutoTokenizer.from_pretrained(model_location("builtin:tiny-gpt2"))
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    source = tmp_path / "source"
    AutoModelForCausalLM.from_config(config).save_pretrained(source)
    tokenizer.save_pretrained(source)
    recipe = tiny_recipe(["gguf"], data=PLAIN, gguf={"types": ["q4_k_m"], "source": str(source), "prompts": 3, "name": "tiny"})
    entry = execute(recipe, output_dir=tmp_path / "export").metrics["gguf"]["files"]["q4_k_m"]
    assert entry["passed"] and entry["tokenizer"] == "gpt2", entry
    assert entry["tensor_types"].get("q4_k", 0) > 0 and entry["tensor_types"].get("q6_k", 0) > 0, entry["tensor_types"]
    assert entry["max_logit_change"] < 0.5 and entry["llama_cpp"]["max_logit_change"] < 0.5, entry
    assert entry["llama_cpp"]["tokenization_identical_texts"] == 3


@pytest.mark.slow
def test_llama_cpp_tokenizing_a_chat_template_differently_fails_in_one_line(tmp_path):
    """tiny-llama's SentencePiece-style tokenizer.json (Metaspace, prepend_scheme "first") puts no space after a special
    token; llama.cpp's SentencePiece tokenizer does (``<|im_start|>user`` -> ``▁user``): what Ollama would feed the model
    differs from training, so the export fails, naming the cause and the way out (``gguf.llama_cpp = false``)."""
    recipe = tiny_recipe(["gguf"], data={"chat": True, "num_examples": 40, "eval_size": 4}, gguf={"types": ["bf16"], "prompts": 2})
    with pytest.raises(UsageError) as caught:
        execute(recipe, output_dir=tmp_path / "chat")
    message = str(caught.value)
    assert "\n" not in message and "llama.cpp tokenizes held-out text 1 differently" in message, message
    assert "space before the text after each special token" in message and "gguf.llama_cpp = false" in message
    assert not (tmp_path / "chat" / "gguf" / "bf16").exists()
    recipe["gguf"]["llama_cpp"] = False  # transformers' reader only: the export passes
    assert execute(recipe, output_dir=tmp_path / "without").metrics["gguf"]["files"]["bf16"]["llama_cpp"] == {"skipped": "gguf.llama_cpp = false"}
