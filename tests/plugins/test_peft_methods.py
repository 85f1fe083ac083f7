"""The peft family beyond plain LoRA (IA³, LoHa, LoKr, prompt/prefix/P-tuning, LoRA's DoRA, rsLoRA, PiSSA and
OLoRA): recipe errors at validation, adapters that train, exports that reload with plain peft."""

import json
import types

import pytest

from conftest import RECIPES
from ptrain import hookimpl
from ptrain._errors import RecipeError
from ptrain._recipe import load_recipe, load_recipe_dict
from ptrain.testing import tiny_recipe

PROMPT_LEARNING = ["prompt_tuning", "prefix_tuning", "p_tuning"]
WEIGHT_ADAPTERS = ["ia3", "loha", "lokr"]


def _recipe(methods, **sections):
    return {"methods": methods, "model": {"name": "builtin:tiny-llama"}, "data": {"source": "builtin:tasks"}, **sections}


@pytest.mark.parametrize(
    ("method", "key", "value", "message"),
    [
        ("ia3", "target_modules", [], "is empty"),
        ("ia3", "target_modules", "q_proj(", "neither \"auto\" nor a valid regular expression"),
        ("ia3", "feedforward_modules", ["down_proj"], "must be a subset of target_modules, which is \"auto\""),
        ("loha", "r", 0, "positive rank"),
        ("loha", "rank_dropout", 1.0, r"\[0, 1\)"),
        ("lokr", "module_dropout", -0.1, r"\[0, 1\)"),
        ("lokr", "decompose_factor", 0, "-1 \\(automatic\\) or a positive size"),
        ("lokr", "alpha", 0, "must be > 0"),
        ("prompt_tuning", "num_virtual_tokens", 0, r"\[1, 512\]"),
        ("prompt_tuning", "init_text", "Reverse the words", 'used only with init = "text"'),
        ("prefix_tuning", "projection_hidden_size", 64, "set projection = true"),
        ("prefix_tuning", "init_text", "Reverse the words", 'used only with init = "text"'),
        ("prefix_tuning", "merge", True, "cannot be true: virtual tokens are extra input, not a change to any weight"),
        ("p_tuning", "encoder_layers", 3, "MLP prompt encoder has 2 layers"),
        ("p_tuning", "encoder_dropout", 1.5, r"\[0, 1\)"),
        ("lora", "init", "loftq", "one of 'default', 'gaussian', 'orthogonal', 'pissa', 'olora'"),
    ],
)
def test_sections_reject_nonsense(method, key, value, message):
    with pytest.raises(RecipeError, match=rf"{method}\.{key}: .*{message}"):
        load_recipe_dict(_recipe(["sft", method], **{method: {key: value}}))


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (_recipe(["sft", "ia3"], ia3={"target_modules": ["k_proj", "v_proj"], "feedforward_modules": ["down_proj"]}),
         r"ia3\.feedforward_modules: 'down_proj' not in target_modules; feed-forward layers are a subset of the targets"),
        (_recipe(["sft", "ia3"], ia3={"target_modules": ["k_proj", "down_proj"]}),
         r'ia3\.feedforward_modules: is "auto", which only goes with target_modules = "auto"'),
        (_recipe(["sft", "prefix_tuning"], prefix_tuning={"init": "text", "init_text": "Reverse", "projection": True}),
         r"prefix_tuning\.init: is \"text\", which sets the prefixes themselves, and projection = true produces them"),
        (_recipe(["sft", "prefix_tuning"], train={"gradient_checkpointing": True}),
         r"train\.gradient_checkpointing: prefix_tuning hands its prefixes to every layer as cached keys and values"),
        (_recipe(["sft", "prompt_tuning"], prompt_tuning={"init": "text"}),
         r"prompt_tuning\.init_text: is empty, and init = \"text\" starts the prompt from it"),
        (_recipe(["loha"]), r"methods: loha adds adapters for a trainer to train, and no method in methods builds one; "
                            r"add one \(e\.g\. methods = \['sft', 'loha'\]\)"),
        (_recipe(["sft", "lora", "ia3"]), r"methods: lora and ia3 both put a peft adapter on the model.*methods = \['sft', 'lora'\]"),
        (_recipe(["sft", "p_tuning"], sft={"packing": True}), r"sft\.packing: p_tuning puts its virtual tokens before each sequence"),
        (_recipe(["sft", "lora", "qlora"], lora={"init": "pissa"}), r"lora\.init: pissa rewrites the base weights as a residual"),
    ],
)
def test_whole_recipe_errors(recipe, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe_dict(recipe)


def test_recipes_validate_without_torch():
    """Every recipe of the SmolLM2 comparison validates, as `ptrain validate` runs it (no heavy import)."""
    import subprocess
    import sys

    paths = sorted((RECIPES / "peft").glob("*.toml"))
    assert len(paths) >= 12
    code = (
        "import sys; from ptrain._recipe import load_recipe\n"
        "for path in sys.argv[1:]: load_recipe(path)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    methods = {tuple(load_recipe(p).methods) for p in paths}
    assert {("sft",), ("sft", "lora"), *(("sft", m) for m in WEIGHT_ADAPTERS + PROMPT_LEARNING)} <= methods


@pytest.mark.parametrize(
    ("model", "method", "targets", "message"),
    [
        ("builtin:tiny-llama", "loha", '["qkv"]', r"loha\.target_modules: 'qkv' not found in the model; its linear modules are down_proj, gate_proj"),
        ("builtin:tiny-llama", "ia3", '["embed_tokens"]', r"ia3\.target_modules: 'model\.embed_tokens' is a Embedding, and ia3 adapts only Linear or Conv1D layers"),
        ("builtin:tiny-gpt2", "lokr", '"all-linear"', r"lokr\.target_modules: '.*c_attn' is a Conv1D, and lokr adapts only Linear layers; this model has none"),
    ],
)
def test_targets_the_model_cannot_take_are_named_with_its_linear_modules(ptrain_run, model, method, targets, message):
    """Found when the model has loaded, before anything trains."""
    overrides = [f"model.name={json.dumps(model)}", f"{method}.target_modules={targets}"]
    if method == "ia3":
        overrides.append("ia3.feedforward_modules=[]")
    with pytest.raises(RecipeError, match=message):
        ptrain_run(tiny_recipe(["sft", method]), *overrides)


TRAINED = [  # (method, its section, learning rate)
    ("ia3", {}, 1e-1),
    ("loha", {"r": 4, "alpha": 8}, 1e-2),
    ("lokr", {"r": 4, "alpha": 8}, 1e-2),
    ("prompt_tuning", {"num_virtual_tokens": 8, "init": "text", "init_text": "Answer with the words reversed or in capitals"}, 1e-1),
    ("prefix_tuning", {"num_virtual_tokens": 8}, 1e-1),
    ("prefix_tuning", {"num_virtual_tokens": 8, "init": "text", "init_text": "Answer with the words reversed or in capitals"}, 1e-1),
    ("p_tuning", {"num_virtual_tokens": 8, "encoder_hidden_size": 64}, 1e-1),
    ("lora", {"r": 4, "alpha": 8, "use_dora": True}, 1e-2),
    ("lora", {"r": 4, "alpha": 8, "use_rslora": True}, 1e-2),
    ("lora", {"r": 4, "alpha": 8, "init": "pissa"}, 1e-2),
    ("lora", {"r": 4, "alpha": 8, "init": "olora"}, 1e-2),
]


def _generations(model, tokenizer, run):
    from ptrain._evaluation import generate

    prompts = [row["prompt"] for row in list(run.eval_dataset)[: run.recipe.eval.max_samples]]
    return generate(model, tokenizer, prompts, run.recipe.eval.max_new_tokens, run.recipe.eval.batch_size).texts


@pytest.mark.slow
@pytest.mark.parametrize(("method", "options", "rate"), TRAINED, ids=[f"{m}-{'-'.join(map(str, o.values()))}"[:40] for m, o, _ in TRAINED])
def test_method_trains_and_its_adapter_reloads_with_plain_peft(ptrain_run, trained_tiny_llama, method, options, rate):
    """Each method adapts the SFT-trained tiny llama to a prompt format it has never seen (its chat
    template); the adapter reloads with plain ``PeftModel.from_pretrained`` on a fresh base and
    generates exactly what the trained model did; where the method merges, so does ``model/``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = trained_tiny_llama.dir / "model"
    recipe = tiny_recipe(
        ["sft", method],
        model={"name": str(base_dir)},
        data={"num_examples": 300, "eval_size": 16, "chat": True},
        train={"max_steps": 16, "learning_rate": rate},
        eval={"max_samples": 8, "max_new_tokens": 12},
        **{method: options},
    )
    run = ptrain_run(recipe)
    base, final = run.metrics["base"], run.metrics["final"]
    # measured (seeds 42, 1, 2): final eval loss / the base model's = 0.53-0.79 for the weight adapters,
    # 0.77-0.89 for the prompt-learning methods (prompt_tuning the weakest: 0.85, 0.89, 0.83; prefix_tuning
    # started from text: 0.78, 0.84, 0.76)
    assert final["eval_loss"] < 0.95 * base["eval_loss"], (base["eval_loss"], final["eval_loss"])
    report = run.metrics[method]
    weights = (run.dir / "adapter" / "adapter_model.safetensors").stat().st_size
    assert 0 < final["adapter_weights_mb"] == round(weights / 2**20, 4) < final["adapter_size_mb"]
    assert 0 < report["trainable_parameters"] == run.metrics["train"]["trainable_parameters"] < report["total_parameters"]

    in_memory = [json.loads(line)["generation"] for line in (run.dir / "samples.jsonl").read_text().splitlines()]
    adapter_dir = run.dir / "adapter"
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    assert _generations(reloaded, tokenizer, run) == in_memory

    if method in PROMPT_LEARNING:
        assert not report["mergeable"] and not (run.dir / "model").exists()
        assert run.artifacts == {"adapter": str(adapter_dir), "model": str(adapter_dir)}
        assert run.metrics["final"]["model_size_mb"] == run.metrics["final"]["adapter_size_mb"]
    else:
        merged = AutoModelForCausalLM.from_pretrained(run.dir / "model")
        assert not any(part in name for name, _ in merged.named_parameters() for part in ("lora_", "hada_", "lokr_", "ia3_l"))
        assert _generations(merged, tokenizer, run) == in_memory
        assert run.metrics["final"]["adapter_size_mb"] < 0.5 * run.metrics["final"]["model_size_mb"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("methods", "sections"),
    [
        (["dpo", "prompt_tuning"], {"data": {"source": "builtin:preferences", "num_examples": 64, "eval_size": 8}}),
        (["dpo", "ia3"], {"data": {"source": "builtin:preferences", "num_examples": 64, "eval_size": 8}}),
        (["distill", "p_tuning"], {"distill": {"mode": "logit"}}),
    ],
)
def test_other_trainers_train_the_adapters(ptrain_run, request, methods, sections):
    """DPO's reference is the model with its adapter disabled; distillation compares the student's
    logits with the teacher's position by position, past a prompt-learning adapter's virtual tokens.
    A throwaway plugin copies the adapter's weights just before training: every one of them moved."""
    import torch

    before = {}
    probe = types.ModuleType("probe")
    probe.training_setup = hookimpl(
        lambda run: before.update({n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad})
    )
    if "distill" in methods:
        sections["distill"]["teacher"] = str(request.getfixturevalue("trained_tiny_llama").dir / "model")
    adapter = methods[1]
    options = {adapter: {"num_virtual_tokens": 4}} if adapter in PROMPT_LEARNING else {}
    run = ptrain_run(tiny_recipe([*methods, "probe"], **options, **sections), plugins={"probe": probe})
    # TRL's DPO adds "ref", a copy of the initial adapter, as its reference: it must not train nor be saved
    after = {n: p for n, p in run.model.named_parameters() if p.requires_grad and ".ref." not in n}
    assert before and sorted(before) == sorted(after), (sorted(before), sorted(after))
    for name, param in run.model.named_parameters():
        if ".ref." in name:
            assert torch.equal(param, before[name.replace(".ref.", ".default.")])
    assert all(torch.isfinite(p).all() and not torch.equal(p, before[n]) for n, p in after.items())
    assert run.metrics[adapter]["trainable_parameters"] == sum(p.numel() for p in after.values())
    assert (run.dir / "adapter" / "adapter_config.json").is_file()
    assert sorted(p.name for p in (run.dir / "adapter").iterdir() if p.is_dir()) == []  # no adapter/ref/
