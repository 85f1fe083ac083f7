"""LoRA and QLoRA: adapters that train, exports that reload, and the recipe errors around them."""

import json
from pathlib import Path

import pytest

from conftest import RECIPES, assert_model_card
from ptrain._errors import RecipeError
from ptrain._recipe import load_recipe, load_recipe_dict

SMALL_RUN = (
    "data.num_examples=300",
    "data.eval_size=16",
    "train.batch_size=8",
    "train.logging_steps=1",
    "eval.base=false",
    "eval.max_samples=8",
    "output.plots=false",
)


def test_lora_section_rejects_nonsense():
    for key, value, message in [
        ("r", 0, "positive rank"),
        ("alpha", -1, "must be > 0"),
        ("dropout", 1.5, r"\[0, 1\)"),
        ("target_modules", [], "all-linear"),
        ("target_modules", "q_proj(", "regular expression"),
    ]:
        recipe = {
            "methods": ["sft", "lora"],
            "model": {"name": "builtin:tiny-llama"},
            "data": {"source": "builtin:tasks"},
            "lora": {key: value},
        }
        with pytest.raises(RecipeError, match=rf"lora\.{key}: .*{message}"):
            load_recipe_dict(recipe)


def test_recipes_validate():
    assert load_recipe(RECIPES / "lora_tiny.toml").methods == ["sft", "lora"]
    assert load_recipe(RECIPES / "qlora_tiny.toml").sections["qlora"].quant_type == "nf4"


@pytest.mark.parametrize("methods", [["sft", "qlora"], ["sft", "qlora", "lora"]])
def test_qlora_needs_lora_before_it(run_recipe, methods):
    recipe = {"methods": methods, "model": {"name": "builtin:tiny-llama"}, "data": {"source": "builtin:tasks"}}
    with pytest.raises(RecipeError, match=r"methods: qlora only quantizes the base.*\['sft', 'lora', 'qlora'\]"):
        run_recipe(recipe)


@pytest.mark.parametrize(
    ("model", "listed"), [("builtin:tiny-llama", "down_proj, gate_proj, k_proj"), ("builtin:tiny-gpt2", "c_attn, c_fc, c_proj")]
)
def test_unknown_target_module_lists_linear_modules(run_recipe, model, listed):
    with pytest.raises(RecipeError, match=rf"lora\.target_modules: 'qkv' not found in the model; its linear modules are {listed}"):
        run_recipe(RECIPES / "lora_tiny.toml", f"model.name={json.dumps(model)}", 'lora.target_modules=["qkv"]')


def _generations(model, tokenizer, run):
    from ptrain._evaluation import generate

    prompts = [row["prompt"] for row in list(run.eval_dataset)[: run.recipe.eval.max_samples]]
    return generate(model, tokenizer, prompts, run.recipe.eval.max_new_tokens, run.recipe.eval.batch_size).texts


@pytest.mark.slow
def test_lora_beats_base_and_exports_reload(run_recipe, trained_tiny_llama):
    """LoRA adapts the SFT-trained tiny llama to a prompt format it has never seen (its tokenizer's
    chat template): < 5 % trainable, task metric from ~0 to well above, identical reloads."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = trained_tiny_llama.dir / "model"
    run = run_recipe(
        RECIPES / "lora_tiny.toml",
        f"model.name={json.dumps(str(base_dir))}",
        "train.max_steps=120",
        "train.learning_rate=1e-2",
        "data.chat=true",
        "eval.max_samples=100",
        "output.plots=false",
    )
    lora = run.metrics["lora"]
    assert 0 < lora["trainable_parameters"] < 0.05 * lora["total_parameters"]
    assert lora["trainable_percent"] < 5
    final = run.metrics["final"]
    assert 0 < final["adapter_size_mb"] < 0.2 * final["model_size_mb"]
    train = run.metrics["train"]
    assert train["peak_memory_mb"] > 0 and train["tokens_per_s"] > 0
    # the memory breakdown: gradients are the trainable parameters' fp32 size, AdamW keeps two moments of
    # each, the parts add up to the figure they split
    parts = train["memory_breakdown_mb"]
    assert parts["gradients"] == pytest.approx(lora["trainable_parameters"] * 4 / 2**20, abs=0.1)
    assert parts["optimizer_state"] == pytest.approx(2 * parts["gradients"], abs=0.1)
    assert parts["weights"] >= final["adapter_size_mb"]
    assert sum(parts.values()) == pytest.approx(train["memory_above_baseline_mb"], abs=0.3) or parts["activations_and_other"] == 0

    in_memory = [json.loads(line)["generation"] for line in (run.dir / "samples.jsonl").read_text().splitlines()]
    assert in_memory == _generations(run.model, run.tokenizer, run)

    adapter_dir = run.dir / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "chat_template.jinja"} <= {p.name for p in adapter_dir.iterdir()}
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    assert _generations(reloaded, AutoTokenizer.from_pretrained(adapter_dir), run) == in_memory

    merged = AutoModelForCausalLM.from_pretrained(run.dir / "model")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(run.dir / "model")
    assert tokenizer.chat_template
    assert _generations(merged, tokenizer, run) == in_memory
    assert run.artifacts == {"adapter": str(adapter_dir), "model": str(run.dir / "model")}
    for exported in (adapter_dir, run.dir / "model"):  # both carry a model card naming the base and the metrics
        assert "LoRA trainable share" in assert_model_card(exported, str(base_dir))
    assert not (run.dir / "model" / "adapter_config.json").exists()
    assert merged.dtype == torch.float32
    # measured over seeds 42, 0, 1 on an AVX512-BF16 CPU (bench/seed_margins/README.md, lora_chat): base 0.0 ->
    # 0.24, 0.19, 0.15. (Before the tiny model's MLP went 352 -> 384 wide, this CPU gave 0.07 where another gave 0.35.)
    assert run.metrics["final"]["task_metric"] >= run.metrics["base"]["task_metric"] + 0.08


@pytest.mark.slow
def test_lora_with_gradient_checkpointing_trains_adapters(run_recipe):
    run = run_recipe(RECIPES / "lora_tiny.toml", *SMALL_RUN, "train.max_steps=3", "train.gradient_checkpointing=true", "lora.merge=false")
    assert run.model.base_model.model.model.gradient_checkpointing
    lora_b = [p for name, p in run.model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: gradients reached every adapter
    assert run.artifacts == {"adapter": str(run.dir / "adapter"), "model": str(run.dir / "adapter")}
    assert not (run.dir / "model").exists()


@pytest.mark.slow
def test_qlora_trains_on_4bit_base_and_merged_export_reloads(run_recipe, monkeypatch):
    import bitsandbytes as bnb
    import bitsandbytes.nn.modules
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # as on a CPU with AVX512-BF16, whose packed 4-bit kernel has no backward: the base evaluation
    # must not leave the model on it for training
    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)
    run = run_recipe(RECIPES / "qlora_tiny.toml", *SMALL_RUN, "train.max_steps=4", "eval.base=true")
    assert not any(m.support_avx512bf16_for_cpu for m in run.model.modules() if isinstance(m, bnb.nn.Linear4bit))
    report = run.metrics["qlora"]
    assert report["base_weight_bits"] == 4 and report["quant_type"] == "nf4" and report["double_quant"]
    assert report["quantized_linear_layers"] == 28  # 7 projections x 4 layers; the tied head stays unquantized
    layers = [m for m in run.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 28 and all(m.weight.dtype == torch.uint8 for m in layers)
    assert run.metrics["lora"]["trainable_percent"] < 5
    lora_b = [p for name, p in run.model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)

    merged = AutoModelForCausalLM.from_pretrained(run.dir / "model")
    config = json.loads((run.dir / "model" / "config.json").read_text())
    assert "quantization_config" not in config
    assert merged.dtype == torch.float32
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    texts = _generations(merged, AutoTokenizer.from_pretrained(run.dir / "model"), run)
    assert len(texts) == run.recipe.eval.max_samples
    for exported in (run.dir / "adapter", run.dir / "model"):
        assert "- **qlora**: quant_type = nf4" in assert_model_card(exported, "builtin:tiny-llama")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory map (Linux)")
def test_a_4bit_model_lets_go_of_the_checkpoint_file_it_was_quantized_from(tmp_path):
    """transformers keeps the tensors it does not quantize (embedding, norms) as views of the memory-mapped
    checkpoint, which keeps every page quantizing read resident (about 500 MiB for SmolLM2-135M's fp32 file,
    under a 160 MiB 4-bit model). qlora copies them: the file is unmapped and the model is unchanged."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ptrain import load_pretrained, release_checkpoint_file

    source = tmp_path / "fp32"
    model, tokenizer = load_pretrained("builtin:tiny-llama")
    model.save_pretrained(source)
    del model
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    quantized = AutoModelForCausalLM.from_pretrained(source, quantization_config=config)

    def mapped() -> bool:
        gc.collect()
        return str(source / "model.safetensors") in Path("/proc/self/maps").read_text()

    assert mapped()  # the embedding still reads from the file
    ids = tokenizer("reverse: stone apple", return_tensors="pt").input_ids
    with torch.no_grad():
        before = quantized(ids).logits
    release_checkpoint_file(quantized)
    assert not mapped()
    assert quantized.get_input_embeddings().weight is quantized.get_output_embeddings().weight  # still tied
    with torch.no_grad():
        assert torch.equal(quantized(ids).logits, before)


def _one_projection(use_dora=False):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(64, 64)

        def forward(self, x):
            return self.proj(x)

    net = Net()
    with torch.no_grad():
        net.proj.weight.mul_(40.0)  # base outputs of a few tens: bf16's step there is 0.125 or more
    model = get_peft_model(net, LoraConfig(r=4, lora_alpha=4, target_modules=["proj"], use_dora=use_dora))
    with torch.no_grad():
        model.base_model.model.proj.lora_B["default"].weight.normal_(std=1e-3)  # an update of ~1e-3, as early in training
    return model


def test_fp32_adapters_keep_the_update_that_bf16_autocast_rounds_away():
    import torch

    from ptrain_methods.adapters import fp32_lora

    x = torch.randn(8, 64)
    model = _one_projection()
    layer = model.base_model.model.proj
    with torch.no_grad():
        exact = layer(x) - layer.base_layer(x)  # the update in fp32, no autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            base = layer.base_layer(x).float()
            rounded = layer(x)
        assert rounded.dtype == torch.bfloat16
        lost = ((rounded.float() - base) - exact).abs().max()
        assert lost > 0.5 * exact.abs().max()  # in bf16 the update is mostly rounding
        plain = layer(x)
    assert fp32_lora(model) == 1
    with torch.no_grad():
        assert torch.equal(layer(x), plain)  # no autocast: exactly as before
        with torch.autocast("cpu", dtype=torch.bfloat16):
            kept = layer(x)
    assert kept.dtype == torch.float32
    assert torch.allclose(kept - base, exact, atol=2e-5, rtol=1e-3)
    # still trains: gradients reach both adapter matrices under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x).sum().backward()
    assert layer.lora_A["default"].weight.grad.abs().sum() > 0 and layer.lora_B["default"].weight.grad.abs().sum() > 0
    assert fp32_lora(model) == 1 and len(layer.base_layer._forward_hooks) == 1  # idempotent


def test_fp32_adapters_with_dora_and_the_recipe_switch():
    import torch

    from ptrain_methods.adapters import fp32_lora

    model = _one_projection(use_dora=True)
    fp32_lora(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(4, 64))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    recipe = load_recipe_dict({"methods": ["sft", "lora"], "model": {"name": "builtin:tiny-llama"}, "data": {"source": "builtin:tasks"},
                               "lora": {"fp32_adapters": False}})
    assert recipe.section("lora").fp32_adapters is False
