"""Model facts without weights, the plan_memory hook, ``ptrain plan``, and predicted beside measured memory."""

import json
import subprocess
import sys
from dataclasses import dataclass

import pytest

import ptrain
from conftest import RECIPES
from ptrain.testing import tiny_recipe, validate

GPT2_CONFIG = {
    "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 64, "n_layer": 3, "n_head": 4,
    "n_positions": 256, "vocab_size": 300, "torch_dtype": "float32",
}


def _python(code, *args):
    """Run ``code`` in a fresh interpreter; it prints JSON on its last line, and whether torch & co got imported."""
    code += "\nheavy = sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules)\nprint(json.dumps(heavy))\n"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *lines, heavy = done.stdout.strip().splitlines()
    return json.loads(lines[-1]), json.loads(heavy)


def test_model_facts_of_builtin_and_local_directory_without_torch(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(GPT2_CONFIG))
    code = (
        "import json, sys, ptrain\n"
        "out = {n: ptrain.model_facts(n).as_dict() for n in ('builtin:tiny-llama', sys.argv[1])}\n"
        "print(json.dumps(out))"
    )
    facts, heavy = _python(code, str(tmp_path))
    assert heavy == []
    llama = facts["builtin:tiny-llama"]
    assert (llama["architecture"], llama["layers"], llama["hidden_size"], llama["heads"], llama["kv_heads"]) == ("llama", 4, 128, 4, 2)
    assert (llama["intermediate_size"], llama["vocab_size"], llama["dtype"], llama["tied_embeddings"]) == (384, 1024, "float32", True)
    assert llama["total_parameters"] == 918_656  # what the loaded model counts (tests/plugins/test_lora.py runs it)
    assert llama["parameters"]["head"] == 0 and llama["parameters"]["embeddings"] == 1024 * 128
    gpt2 = facts[str(tmp_path)]
    assert (gpt2["architecture"], gpt2["layers"], gpt2["hidden_size"], gpt2["intermediate_size"]) == ("gpt2", 3, 64, 256)
    assert gpt2["parameters"]["embeddings"] == 300 * 64 + 256 * 64


def test_facts_count_what_transformers_builds(tmp_path):
    """Parameter counts by kind equal the parameters of the model transformers builds from the same config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ptrain._models import BUILTIN_MODELS

    for name in ("tiny-llama", "tiny-gpt2", "tiny-llama-small"):
        facts = ptrain.model_facts(f"builtin:{name}")
        spec = {k: v for k, v in BUILTIN_MODELS[name].items() if k != "tokenizer"}
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), vocab_size=facts.vocab_size, **spec))
        assert facts.total_parameters == sum(p.numel() for p in model.parameters()), name
    (tmp_path / "config.json").write_text(json.dumps(GPT2_CONFIG))
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path))
    assert ptrain.model_facts(str(tmp_path)).total_parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("shape", [
    {"hidden_size": 128, "intermediate_size": 384, "num_attention_heads": 4, "num_key_value_heads": 2},   # builtin:tiny-llama
    {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3},  # SmolLM2-135M
    {"hidden_size": 256, "intermediate_size": 688, "num_attention_heads": 8, "num_key_value_heads": 8},   # no grouped keys
])
@pytest.mark.parametrize("frozen", [False, True])
def test_activation_term_counts_what_autograd_saves(shape, frozen, tmp_path):
    """The plan's activations per token and layer are the tensors autograd keeps for backward, counted
    with saved_tensors_hooks over a real llama forward (weights excluded), within 3 %; ``frozen``: only the
    inputs train (prompt tuning), so the projections keep no inputs for their weights' gradients."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ptrain._plan import activation_values

    config = LlamaConfig(vocab_size=512, num_hidden_layers=2, attn_implementation="sdpa", **shape)
    config.save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).train()
    if frozen:
        model.requires_grad_(False)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in weights:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    batch, length = 4, 48
    inputs = model.model.embed_tokens(torch.randint(0, 512, (batch, length))).detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.model(inputs_embeds=inputs)
    counted = sum(saved.values()) / 4 / (batch * length * config.num_hidden_layers)
    assert counted == pytest.approx(activation_values(ptrain.model_facts(str(tmp_path)), frozen=frozen), rel=0.03)


def test_facts_of_a_run_directory_and_keep_layers(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(GPT2_CONFIG))
    assert ptrain.model_facts(str(tmp_path)).layers == 3  # a ptrain run directory stands for its model/
    recipe = validate(tiny_recipe(["sft"], model={"name": "builtin:tiny-llama", "keep_layers": 2}))
    kept = ptrain.model_facts(recipe)
    assert kept.layers == 2 and kept.total_parameters == ptrain.model_facts("builtin:tiny-llama-small").total_parameters + 2 * 3 * 128 * (384 - 256)


def test_hub_model_offline_cannot_be_known(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # nothing cached
    with pytest.raises(ptrain.FactsUnavailable, match="cannot know its shape before loading"):
        ptrain.model_facts("some-org/some-model")
    assert ptrain.model_facts("some-org/some-model", required=False) is None
    assert issubclass(ptrain.FactsUnavailable, ptrain.UsageError)


@dataclass
class FreezeSection:
    layers: int = 1


class FreezeLayers:
    """A layer-freezing modifier written from the docs: it checks ``[freeze] layers`` against the model at validate."""

    @ptrain.hookimpl
    def recipe_sections(self):
        return {"freeze": FreezeSection}

    @ptrain.hookimpl
    def validate_recipe(self, recipe):
        facts = ptrain.model_facts(recipe, required=False)
        layers = recipe.section("freeze").layers
        if facts is not None and not 1 <= layers <= facts.layers:
            raise ptrain.RecipeError(f"must be in [1, {facts.layers}] ({recipe.model.name} has {facts.layers} layers), got {layers}", key="freeze.layers")


def test_validate_recipe_refuses_out_of_range_layer_count():
    plugin = {"freeze": FreezeLayers()}
    validate(tiny_recipe(["sft", "freeze"], freeze={"layers": 4}), plugins=plugin)
    with pytest.raises(ptrain.RecipeError, match=r"must be in \[1, 4\].*got 9") as caught:
        validate(tiny_recipe(["sft", "freeze"], freeze={"layers": 9}), plugins=plugin)
    assert caught.value.key == "freeze.layers"


def _plan(recipe, plugins=None, **kwargs):
    from ptrain._plan import plan_training

    return plan_training(validate(recipe, plugins=plugins), device=kwargs.pop("device", "cpu"), **kwargs)


def test_fp32_adapters_cost_memory_only_under_autocast(monkeypatch):
    from ptrain import _precision

    lora = {"r": 4, "target_modules": "all-linear"}

    def term(plan):
        return next((t for t in plan.terms if t.name == "fp32 adapter outputs"), None)

    bf16 = _plan(tiny_recipe(["sft", "lora"], lora=lora, train={"precision": "bf16"}))
    assert bf16.autocast
    found = term(bf16)
    outputs = sum(o for _, o in bf16.facts.matching_projections("all-linear"))
    assert found is not None and found.method == "lora"
    assert found.mib == pytest.approx(bf16.tokens_per_step * bf16.facts.layers * outputs * 5.75 / 2**20, abs=0.1)
    assert term(_plan(tiny_recipe(["sft", "lora"], lora={**lora, "fp32_adapters": False}, train={"precision": "bf16"}))) is None
    assert term(_plan(tiny_recipe(["sft", "lora"], lora=lora, train={"precision": "fp32"}))) is None
    assert term(_plan(tiny_recipe(["sft", "lora", "qlora"], lora=lora, train={"precision": "bf16"}))) is None  # 4-bit: fp32 already
    checkpointed = term(_plan(tiny_recipe(["sft", "lora"], lora=lora, train={"precision": "bf16", "gradient_checkpointing": True})))
    assert 0 < checkpointed.mib < found.mib
    # auto: what the CPU would choose, told without measuring (a tiny model stays fp32; a CPU without bf16 too)
    assert not _plan(tiny_recipe(["sft", "lora"], lora=lora)).autocast
    monkeypatch.setattr(_precision, "cpu_flags", lambda: set())
    assert not _precision.cpu_bf16_expected(10**9)
    monkeypatch.setattr(_precision, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setenv("PTRAIN_CACHE_DIR", str(_precision._cache_file().parent / "nowhere-for-this-test"))
    assert _precision.cpu_bf16_expected(10**9) and not _precision.cpu_bf16_expected(10**6)
    assert _plan(tiny_recipe(["sft", "lora"], lora=lora, train={"precision": "auto"}), device="cuda").autocast


def test_methods_add_their_terms():
    full = _plan(tiny_recipe(["sft"]))
    lora = _plan(tiny_recipe(["sft", "lora"], lora={"r": 4, "target_modules": "all-linear"}))
    qlora = _plan(tiny_recipe(["sft", "lora", "qlora"], lora={"r": 4, "target_modules": "all-linear"}))
    assert full.breakdown()["gradients"] == pytest.approx(918_656 * 4 / 2**20, abs=0.1)
    # LoRA r=4 on every projection of tiny-llama: 38,912 trainable parameters, as peft counts them in a run
    assert lora.trainable_parameters == 38_912
    assert lora.breakdown()["optimizer_state"] == pytest.approx(38_912 * 8 / 2**20, abs=0.05)
    assert qlora.breakdown()["weights"] < lora.breakdown()["weights"]
    prompt = _plan(tiny_recipe(["sft", "prompt_tuning"], prompt_tuning={"num_virtual_tokens": 10}))
    assert prompt.trainable_parameters == 10 * 128 and prompt.sequence_length == full.sequence_length + 10
    checkpointed = _plan(tiny_recipe(["sft"], train={"gradient_checkpointing": True}))
    terms = {t.name: t.mib for t in checkpointed.terms}
    assert terms["activations"] < {t.name: t.mib for t in full.terms}["activations"] / 2

    pairs = {"source": "builtin:preferences"}
    dpo_full = _plan(tiny_recipe(["dpo"], data=pairs))
    dpo_lora = _plan(tiny_recipe(["dpo", "lora"], data=pairs))
    assert "reference model" in {t.name for t in dpo_full.terms}
    assert "reference model" not in {t.name for t in dpo_lora.terms}  # the adapter disabled is the reference
    reward = _plan(tiny_recipe(["reward"], data=pairs))
    assert "logits" not in {t.name for t in reward.terms}
    # ORPO's trainer takes the whole logits of chosen + rejected; DPO's goes through the chunked head (one chunk)
    orpo = _plan(tiny_recipe(["orpo"], data=pairs, train={"batch_size": 64}))
    dpo = _plan(tiny_recipe(["dpo"], data=pairs, train={"batch_size": 64}))
    orpo_logits = {t.name: t.mib for t in orpo.terms}["logits"]
    assert orpo_logits == pytest.approx(4.5 * orpo.tokens_per_step * 1024 * 4 / 2**20, rel=0.01)
    assert orpo_logits > 3 * {t.name: t.mib for t in dpo.terms}["logits"]
    frozen = _plan(tiny_recipe(["sft", "prefix_tuning"]))
    assert not frozen.layers_train and frozen.sequence_length == full.sequence_length  # prefixes are keys, not inputs
    assert {t.name: t.mib for t in frozen.terms}["activations"] < 0.75 * {t.name: t.mib for t in full.terms}["activations"]
    grpo = _plan(tiny_recipe(["grpo"], grpo={"rewards": {"task_match": 1.0}, "num_generations": 4, "beta": 0.1}))
    names = {t.name for t in grpo.terms}
    assert {"generation KV cache", "reference model"} <= names
    distill = _plan(tiny_recipe(["distill"], distill={"teacher": "builtin:tiny-llama", "mode": "logit"}))
    assert {t.name for t in distill.terms if t.method == "distill"} == {"teacher weights", "teacher forward"}


def test_a_third_party_method_is_planned_too():
    class Cache:
        @ptrain.hookimpl
        def plan_memory(self, plan):
            plan.add("feature cache", 12.5, "activations_and_other", method="cache")

    plan = _plan(tiny_recipe(["sft", "cache"]), plugins={"cache": Cache()})
    assert plan.terms[0].name == "feature cache"  # methods first, the core's terms after
    assert plan.as_metrics()["terms_mb"]["cache: feature cache"] == 12.5


def test_plan_cli_over_the_device_names_largest_term_and_key():
    from test_plugins import _run_cli

    ok = _run_cli("plan", str(RECIPES / "sft_tiny.toml"), "--device", "cpu", "--json")
    assert ok.returncode == 0, ok.stderr
    assert "HEAVY=[]" in ok.stderr  # never loads weights, never imports torch
    figures = json.loads(ok.stdout)
    assert figures["facts"]["layers"] == 4 and set(figures["memory_breakdown_mb"]) == {
        "weights", "gradients", "optimizer_state", "activations_and_other"}
    assert figures["peak_memory_mb"] == pytest.approx(figures["memory_above_baseline_mb"] + 480, abs=0.2)

    # full-vocabulary logits (the chunked loss off): they dominate, and checkpointing would not shrink them
    over = _run_cli("plan", str(RECIPES / "sft_tiny.toml"), "--device", "200MiB", "--set", "train.batch_size=64",
                    "--set", "train.chunked_loss=false")
    assert over.returncode == 2
    line = [x for x in over.stderr.splitlines() if "does not fit" in x]
    assert line, over.stderr
    assert "largest term: logits" in line[0] and "train.batch_size = 32: -" in line[0]
    # the chunked loss (the default) holds one chunk's logits: the same run fits, and below it activations lead
    fits = _run_cli("plan", str(RECIPES / "sft_tiny.toml"), "--device", "200MiB", "--set", "train.batch_size=64")
    assert fits.returncode == 0, fits.stderr
    over = _run_cli("plan", str(RECIPES / "sft_tiny.toml"), "--device", "100MiB", "--set", "train.batch_size=64")
    line = [x for x in over.stderr.splitlines() if "does not fit" in x]
    assert over.returncode == 2 and line, over.stderr
    assert "largest term: activations" in line[0] and "train.gradient_checkpointing = true: -" in line[0]


def test_plan_names_gradient_checkpointing_where_activations_dominate(tmp_path, write_recipe):
    from test_plugins import _run_cli

    wide = {"model_type": "llama", "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
            "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 500, "max_position_embeddings": 1024}
    (tmp_path / "wide").mkdir()
    (tmp_path / "wide" / "config.json").write_text(json.dumps(wide))
    recipe = write_recipe(
        f'name = "wide"\nmethods = ["sft"]\n[model]\nname = "{tmp_path / "wide"}"\n[data]\nsource = "builtin:tasks"\n'
        "[train]\nbatch_size = 16\nmax_length = 512\n"
    )
    over = _run_cli("plan", str(recipe), "--device", "1GiB")
    assert over.returncode == 2, over.stderr
    line = next(x for x in over.stderr.splitlines() if "does not fit" in x)
    assert "largest term: activations" in line and "train.gradient_checkpointing = true: -" in line, line
    assert "HEAVY=[]" in over.stderr


    bad = _run_cli("plan", str(RECIPES / "sft_tiny.toml"), "--device", "lots")
    assert bad.returncode == 2 and "--device 'lots'" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["sft_tiny.toml", "lora_tiny.toml"])
def test_predicted_memory_within_bound_of_measured(tmp_path, recipe):
    """metrics.json carries the prediction beside the measurement; on CPU within ±20 % of the memory above baseline.
    Each run in a fresh process, as `ptrain run` is: what a process already imported is not the run's memory."""
    settings = ["train.max_steps=8", "eval.base=false", "eval.max_samples=0", "output.save_model=false",
                "output.plots=false", "output.report=false"]
    command = [sys.executable, "-m", "ptrain", "run", str(RECIPES / recipe), "--output-dir", str(tmp_path / "run")]
    done = subprocess.run(command + [a for s in settings for a in ("--set", s)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "predicted training memory on cpu" in done.stdout  # the figures head the run
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    train = metrics["train"]
    predicted = train["predicted"]
    assert set(predicted["memory_breakdown_mb"]) == set(train["memory_breakdown_mb"])
    assert predicted["memory_breakdown_mb"]["gradients"] == pytest.approx(train["memory_breakdown_mb"]["gradients"], abs=0.2)
    assert predicted["memory_breakdown_mb"]["optimizer_state"] == pytest.approx(train["memory_breakdown_mb"]["optimizer_state"], abs=0.2)
    ratio = predicted["memory_above_baseline_mb"] / train["memory_above_baseline_mb"]
    assert 0.8 <= ratio <= 1.2, (predicted, train["memory_above_baseline_mb"])
    rows = {r["key"] for r in metrics["report"]}
    assert "train.predicted.memory_above_baseline_mb" in rows  # ptrain compare shows it beside the measured row
    assert 0 < train["time_per_step_s"] < train["train_time_s"]  # the median step, the first (warm-up) left out
    assert "train.time_per_step_s" in rows


def test_model_facts_of_a_gguf_file(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in {"block_count": 2, "embedding_length": 64, "feed_forward_length": 128, "context_length": 256,
                       "attention.head_count": 4, "attention.head_count_kv": 2, "vocab_size": 100}.items():
        writer.add_uint32(f"llama.{key}", value)
    writer.add_tensor("token_embd.weight", np.zeros((100, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    facts = ptrain.model_facts(str(path))
    assert (facts.source, facts.layers, facts.hidden_size, facts.kv_heads, facts.vocab_size) == ("gguf", 2, 64, 2, 100)
    assert facts.tied_embeddings  # no output.weight tensor: the head is the embedding
    assert facts.parameters["mlp"] == 2 * 3 * 64 * 128
