"""The quantize method: INT8 / NF4 (bitsandbytes) and torchao INT8 exports that reload with plain transformers, measured honestly."""

import importlib.metadata
import importlib.util
import json
import math
import subprocess
import sys

import pytest

from conftest import RECIPES, assert_model_card
from ptrain._errors import RecipeError, UsageError
from ptrain._recipe import load_recipe, load_recipe_dict

RELOAD = """
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

result = {}
rows = json.loads(sys.argv[2])
for variant in sys.argv[3:]:
    path = f"{sys.argv[1]}/{variant}"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    correct = 0
    for row in rows:
        ids = tokenizer(row["prompt"], return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        correct += text == row["output"]
    result[variant] = {
        "linear": type(model.model.layers[0].mlp.down_proj).__name__,
        "quant_method": model.config.to_dict()["quantization_config"]["quant_method"],
        "exact_match": correct / len(rows),
    }
print(json.dumps(result))
"""


AO_RELOAD = """
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

source, quantized, text = sys.argv[1:4]
reference = AutoModelForCausalLM.from_pretrained(source)
layers = [m for n, m in reference.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
result = {"linear_weights": sum(m.weight.numel() for m in layers), "linear_rows": sum(m.out_features for m in layers)}
for variant in sys.argv[4:]:
    path = f"{quantized}/{variant}"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        expected, got = reference(**ids).logits, model(**ids).logits
    out = model.generate(**ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    result[variant] = {
        "weight": type(model.model.layers[0].mlp.down_proj.weight).__name__,
        "lm_head": type(model.lm_head.weight).__name__,
        "quant_method": model.config.to_dict()["quantization_config"]["quant_method"],
        "logits_rel_error": float((got - expected).norm() / expected.norm()),
        "same_top1": float((got.argmax(-1) == expected.argmax(-1)).float().mean()),
        "new_tokens": out.shape[1] - ids["input_ids"].shape[1],
    }
print(json.dumps(result))
"""


def quantize_recipe(model_dir, **quantize):
    return {
        "name": "quantize_test",
        "methods": ["quantize"],
        "model": {"name": str(model_dir)},
        "data": {"source": "builtin:tasks", "tasks": ["reverse", "uppercase"], "num_examples": 6000, "eval_size": 60},
        "eval": {"base": False, "max_samples": 60, "max_new_tokens": 16, "batch_size": 64},
        "output": {"save_model": False},
        "quantize": {"window": 128, "stride": 64, **quantize},
    }


@pytest.mark.slow
def test_int8_and_nf4_of_a_trained_model(trained_tiny_llama, run_recipe):
    trained = trained_tiny_llama.dir / "model"
    # source: a previous run's directory (its model/ is found); no method trains
    run = run_recipe(quantize_recipe(trained, variants=["int8", "nf4"], source=str(trained_tiny_llama.dir)))
    assert "train" not in run.metrics
    metrics = json.loads((run.dir / "metrics.json").read_text())
    table = metrics["quantize"]
    assert table["source"] == str(trained) and table["perplexity_tokens"] > 1000
    rows = table["models"]
    reference = rows["unquantized"]
    assert set(rows) == {"unquantized", "int8", "nf4"}
    for variant in ("int8", "nf4"):
        row = rows[variant]
        assert str(run.dir / "quantized" / variant) in metrics["artifacts"]
        assert math.isfinite(row["perplexity_increase_pct"])
        assert row["perplexity_increase_pct"] == pytest.approx(100 * (row["perplexity"] / reference["perplexity"] - 1), abs=0.01)
        # quantization keeps the trained model's perplexity (measured over prompts and answers alike). Over seeds
        # 42, 0, 1 (bench/seed_margins/README.md, quantize): nf4/unquantized perplexity 0.978-1.006, int8 change
        # 0.12-0.25 %, nf4 task change -0.02 to +0.013
        assert row["perplexity"] < 1.25 * reference["perplexity"]
        assert row["task_metric"] >= reference["task_metric"] - 0.2
        assert row["disk_mb"] < reference["disk_mb"] and row["generation_tokens_per_s"] > 0
    for variant in ("int8", "nf4"):  # each export's card says its format and its measured quality change
        card = assert_model_card(run.dir / "quantized" / variant, str(trained))
        assert f"Variant `{variant}`" in card and f"perplexity {rows[variant]['perplexity_increase_pct']:+.2f} %" in card
    # ptrain chat answers with a quantized export, and a variant the run did not make is a one-line error
    from click.testing import CliRunner

    from ptrain._cli import cli

    asked = CliRunner().invoke(cli, ["chat", str(run.dir), "--variant", "nf4", "--prompt", "Reverse the words.", "--json", "--max-new-tokens", "8"])
    assert asked.exit_code == 0, asked.output
    assert json.loads(asked.output.strip().splitlines()[-1])["model"] == f"{run.dir}/quantized/nf4"
    missing = CliRunner().invoke(cli, ["chat", str(run.dir), "--variant", "fp4", "--prompt", "hi"])
    assert missing.exit_code == 2 and "its variants: int8, nf4" in missing.output
    assert abs(rows["int8"]["perplexity_increase_pct"]) < 5
    assert rows["nf4"]["footprint_ratio"] < 0.40
    assert rows["nf4"]["footprint_ratio"] < rows["int8"]["footprint_ratio"] < 0.5

    # each export reloads with plain transformers in a fresh process and still does the task
    eval_rows = [{"prompt": r["prompt"], "output": r["output"]} for r in list(run.eval_dataset)[:20]]
    out = subprocess.run(
        [sys.executable, "-c", RELOAD, str(run.dir / "quantized"), json.dumps(eval_rows), "int8", "nf4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    reloaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert reloaded["int8"]["linear"] == "Linear8bitLt" and reloaded["nf4"]["linear"] == "Linear4bit"
    assert {r["quant_method"] for r in reloaded.values()} == {"bitsandbytes"}
    assert reloaded["nf4"]["exact_match"] > 0.1 and reloaded["int8"]["exact_match"] > 0.1

    # ptrain compare gives the unquantized reference and every variant a column, with the machine the runs ran on
    from ptrain._report import compare

    header, rows, md, _ = compare([str(run.dir)], run.dir / "compare")
    label = header[1]
    assert header[2:] == [f"{label}: unquantized", f"{label}: int8", f"{label}: nf4"]
    table_rows = {row[0]: row[1:] for row in rows}
    assert all(table_rows["perplexity change vs unquantized (%)"][2:]) and not table_rows["perplexity change vs unquantized (%)"][1]
    memory = [float(v) for v in table_rows["inference memory (MiB)"][1:]]
    assert memory[2] < memory[1] < memory[0]
    assert "CPU cores" in md.read_text()


@pytest.mark.slow
def test_torchao_int8_exports_reload_with_plain_transformers(run_recipe):
    pytest.importorskip("torchao")
    recipe = quantize_recipe("builtin:tiny-llama", variants=["int8", "ao-int8-weight", "ao-int8-dynamic"])
    recipe["data"].update(num_examples=400, eval_size=60)
    recipe["eval"].update(max_samples=8)
    recipe["output"]["save_model"] = True  # model/: the unquantized source, for the reload below
    run = run_recipe(recipe)
    table = json.loads((run.dir / "metrics.json").read_text())["quantize"]
    rows = table["models"]
    versions = {name: importlib.metadata.version(name) for name in ("bitsandbytes", "torchao")}
    assert table["backend"] == f"bitsandbytes {versions['bitsandbytes']}, torchao {versions['torchao']}"
    assert rows["int8"]["backend"] == f"bitsandbytes {versions['bitsandbytes']}"
    assert rows["ao-int8-weight"]["backend"] == rows["ao-int8-dynamic"]["backend"] == f"torchao {versions['torchao']}"
    assert "backend" not in rows["unquantized"]
    reference = rows["unquantized"]
    for variant in ("ao-int8-weight", "ao-int8-dynamic"):
        row = rows[variant]
        # an untrained model: its perplexity is high (near the vocabulary size) but any change is quantization's
        assert abs(row["perplexity_increase_pct"]) < 3, row
        assert row["generation_tokens_per_s"] > 0
        # exported as safetensors (the torchao tensors flattened by transformers), nothing pickled
        files = {p.name for p in (run.dir / "quantized" / variant).iterdir()}
        assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files), files

    # each torchao export reloads with plain transformers in a fresh process, stays close to the unquantized
    # logits and generates
    text = "\n\n".join(r["prompt"] + r["completion"] for r in list(run.eval_dataset)[:4])
    out = subprocess.run(
        [sys.executable, "-c", AO_RELOAD, str(run.dir / "model"), str(run.dir / "quantized"), text, "ao-int8-weight", "ao-int8-dynamic"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    reloaded = json.loads(out.stdout.strip().splitlines()[-1])
    for variant in ("ao-int8-weight", "ao-int8-dynamic"):
        got = reloaded[variant]
        assert got["weight"] == "Int8Tensor" and got["quant_method"] == "torchao", got
        assert got["lm_head"] == "Parameter"  # embeddings (tied to lm_head) are left unquantized, as transformers does
        assert got["logits_rel_error"] < 0.05 and got["same_top1"] > 0.9, got  # ~0.015 here; a broken reload gives ~1
        assert got["new_tokens"] == 8

    # Footprint, counted through torchao's tensor subclasses (get_memory_footprint() would report a ratio of
    # 1.0): each linear weight goes from 4 bytes to 1 byte, plus an fp32 scale and an int8 zero point per
    # output row. torchao leaves embeddings in fp32; on the tiny model the tied embedding is ~15 % of the
    # parameters, so the ratio is ~0.37, not INT8's ideal 0.25 (on SmolLM2-135M, embedding ~21 %: ~0.41).
    linear, out_rows = reloaded["linear_weights"], reloaded["linear_rows"]
    expected_mb = reference["footprint_mb"] - (4 * linear - linear - 5 * out_rows) / 2**20
    for variant in ("ao-int8-weight", "ao-int8-dynamic"):
        assert rows[variant]["footprint_mb"] == pytest.approx(expected_mb, abs=0.002)
        assert rows[variant]["footprint_ratio"] < 0.5
    # bitsandbytes INT8 counts the same int8 weights but not its row scales (SCB lives outside the
    # parameters and buffers, where neither get_memory_footprint nor footprint_bytes looks)
    assert rows["int8"]["footprint_mb"] == pytest.approx(expected_mb - 5 * out_rows / 2**20, abs=0.002)


def test_missing_bitsandbytes_is_a_recipe_error_naming_the_variant(monkeypatch):
    real = importlib.metadata.version

    def version(name):
        if name == "bitsandbytes":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(RecipeError, match=r"quantize\.variants: variant 'nf4' cannot be made: bitsandbytes is not installed; pip install"):
        load_recipe_dict(quantize_recipe("builtin:tiny-llama", variants=["nf4"]))


@pytest.mark.parametrize(
    ("installed", "message"),
    [
        (None, r"quantize\.variants: variant 'ao-int8-dynamic' cannot be made: torchao is not installed; pip install 'torchao>=0\.16'$"),
        ("0.15.0", r"quantize\.variants: variant 'ao-int8-dynamic' cannot be made: torchao 0\.15\.0 is too old .*pip install -U torchao$"),
    ],
)
def test_missing_torchao_is_a_one_line_recipe_error_naming_the_variant(monkeypatch, installed, message):
    from ptrain_methods.quantize import QuantizeSection, probe

    real = importlib.metadata.version

    def version(name):
        if name == "torchao":
            if installed is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return installed
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(RecipeError, match=message) as caught:
        load_recipe_dict(quantize_recipe("builtin:tiny-llama", variants=["int8", "ao-int8-dynamic", "ao-int8-weight"]))
    assert "\n" not in str(caught.value)
    load_recipe_dict(quantize_recipe("builtin:tiny-llama", variants=["int8", "nf4"]))  # bitsandbytes variants need no torchao
    with pytest.raises(UsageError, match=r"variant 'ao-int8-weight' cannot be made: torchao"):
        probe("ao-int8-weight", QuantizeSection(variants=["ao-int8-weight"]))  # the early probe says the same


def test_torchao_probe_runs_here_and_names_the_variant_when_it_cannot(monkeypatch):
    pytest.importorskip("torchao")
    import torchao.quantization

    from ptrain_methods.quantize import QuantizeSection, probe

    probe("ao-int8-weight", QuantizeSection())
    probe("ao-int8-dynamic", QuantizeSection())

    def unsupported(*args, **kwargs):
        raise RuntimeError("no int8 kernel for this device")

    monkeypatch.setattr(torchao.quantization, "quantize_", unsupported)
    expected = r"variant 'ao-int8-dynamic' does not run on this machine \(cpu, torchao .*no int8 kernel.*remove 'ao-int8-dynamic' from quantize.variants"
    with pytest.raises(UsageError, match=expected):
        probe("ao-int8-dynamic", QuantizeSection())


def test_every_variant_has_a_backend():
    from typing import get_args

    from ptrain_methods.quantize import TORCHAO_VARIANTS, VARIANTS, Variant, backend

    assert set(get_args(Variant)) == set(VARIANTS) | set(TORCHAO_VARIANTS)
    assert {backend(v) for v in VARIANTS} == {"bitsandbytes"} and {backend(v) for v in TORCHAO_VARIANTS} == {"torchao"}


def test_a_backend_that_cannot_run_the_variant_fails_before_loading(monkeypatch, run_recipe, tmp_path):
    import bitsandbytes as bnb

    from ptrain_methods.quantize import QuantizeSection, probe

    def unsupported(*args, **kwargs):
        raise RuntimeError("no 4-bit kernel for this backend")

    monkeypatch.setattr(bnb.nn, "Linear4bit", unsupported)
    expected = r"variant 'fp4-dq' does not run on this machine \(cpu, bitsandbytes .*no 4-bit kernel.*remove 'fp4-dq' from quantize.variants"
    with pytest.raises(UsageError, match=expected):
        run_recipe(quantize_recipe("builtin:tiny-llama", variants=["int8", "fp4-dq"]), output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # a run that fails on a usage error leaves no half-made directory
    probe("int8", QuantizeSection())  # the real backend runs INT8 here


@pytest.mark.parametrize(
    ("quantize", "message"),
    [
        ({"variants": ["int4"]}, r"quantize\.variants\[0\]: expected one of 'int8', 'nf4'.*did you mean 'int8'"),
        ({"variants": ["nf4", "ao-int8-weights"]}, r"quantize\.variants\[1\]: expected one of .*'ao-int8-dynamic', got .*did you mean 'ao-int8-weight'"),
        ({"variants": []}, r"quantize\.variants: needs at least one variant"),
        ({"window": 64, "stride": 128}, r"quantize\.stride: need 0 < stride <= window"),
        ({"source": "./no/such/model"}, r"quantize\.source: model directory './no/such/model' not found"),
        ({"keep_modules": ["down_proj", ""]}, r"quantize\.keep_modules: needs module names such as \"down_proj\", got ''"),
        ({"keep_modules": ["proj("]}, r"quantize\.keep_modules: 'proj\(' is not a valid name pattern"),
    ],
)
def test_section_errors(quantize, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe_dict(quantize_recipe("builtin:tiny-llama", **quantize))


def test_recipes_validate():
    assert load_recipe(RECIPES / "quantize_tiny.toml").methods == ["quantize"]
    recipe = load_recipe(RECIPES / "sft_quantize_tiny.toml")
    assert recipe.methods == ["sft", "quantize"] and recipe.sections["quantize"].variants == ["int8", "nf4"]



KEEP_RELOAD = """
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
from transformers import AutoModelForCausalLM

result = {}
for variant in sys.argv[2:]:
    model = AutoModelForCausalLM.from_pretrained(f"{sys.argv[1]}/{variant}")
    result[variant] = {
        name: f"{type(module).__name__}/{type(module.weight).__name__}"
        for name, module in model.named_modules() if name.endswith(("down_proj", "up_proj", "q_proj", "lm_head"))
    }
print(json.dumps(result))
"""


@pytest.mark.slow
def test_keep_modules_stay_unquantized_in_the_compute_dtype_and_reload_so(run_recipe):
    """``keep_modules`` (SmolLM2's recommended 4-bit: attention and down_proj kept in bfloat16): the named
    layers stay plain Linear in the 4-bit export, every other one is 4-bit, the output head stays
    unquantized; an 8-bit variant of the same recipe quantizes every layer."""
    variants = ["nf4", "int8"]
    recipe = quantize_recipe("builtin:tiny-llama", variants=variants, keep_modules=["down_proj", "q_proj"], compute_dtype="bfloat16")
    recipe["data"].update(num_examples=200, eval_size=20)
    recipe["eval"].update(max_samples=4)
    run = run_recipe(recipe)
    table = run.metrics["quantize"]
    assert table["keep_modules"] == ["down_proj", "q_proj"] and table["compute_dtype"] == "bfloat16"
    out = subprocess.run([sys.executable, "-c", KEEP_RELOAD, str(run.dir / "quantized"), *variants], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    reloaded = json.loads(out.stdout.strip().splitlines()[-1])
    nf4, int8 = reloaded["nf4"], reloaded["int8"]
    assert nf4["lm_head"] == int8["lm_head"] == "Linear/Parameter"
    kept = [name for name in nf4 if name.endswith(("down_proj", "q_proj"))]
    assert len(kept) == 8 and all(nf4[name] == "Linear/Parameter" for name in kept), nf4
    assert {nf4[name] for name in nf4 if name.endswith("up_proj")} == {"Linear4bit/Params4bit"}, nf4
    assert {int8[name] for name in int8 if name != "lm_head"} == {"Linear8bitLt/Int8Params"}, int8
    # two of seven projections kept in bfloat16: still smaller than the unquantized model
    assert table["models"]["nf4"]["footprint_ratio"] < 1
    assert "Kept unquantized by the recipe (`keep_modules`): down_proj, q_proj." in (run.dir / "quantized" / "nf4" / "README.md").read_text()
    assert "Kept unquantized by the recipe" not in (run.dir / "quantized" / "int8" / "README.md").read_text()
