"""Several recipes in one ``ptrain run``: a pipeline whose later stages use earlier runs' outputs."""

import json

import pytest
from click.testing import CliRunner

from ptrain._cli import cli

TINY = """
name = "{name}"
methods = [{methods}]
seed = 1
[model]
name = "{model}"
{extra}
[data]
source = "builtin:tasks"
tasks = ["uppercase"]
num_examples = 64
eval_size = 8
[train]
max_steps = 2
batch_size = 8
[eval]
max_samples = 4
max_new_tokens = 4
"""


def write(folder, file, name, model="builtin:tiny-llama", methods='"sft"', extra=""):
    path = folder / file
    path.write_text(TINY.format(name=name, model=model, methods=methods, extra=extra))
    return str(path)


@pytest.mark.slow
def test_later_stage_uses_an_earlier_run_then_compare_then_skip_done(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = write(tmp_path, "1.toml", "stage_one")
    # runs/stage_one/model does not exist yet: checked when this stage's turn comes
    second = write(tmp_path, "2.toml", "stage_two", model="runs/stage_one/model", extra="keep_layers = 2")
    result = CliRunner().invoke(cli, ["run", first, second, "--compare", "report"])
    assert result.exit_code == 0, result.output
    assert "(1/2)" in result.output and "(2/2)" in result.output
    second_recipe = (tmp_path / "runs" / "stage_two" / "recipe.resolved.toml").read_text()
    assert 'name = "runs/stage_one/model"' in second_recipe
    config = json.loads((tmp_path / "runs" / "stage_two" / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2  # the stage-one model cut to 2 of its 4 layers, saved and reloadable
    md = (tmp_path / "report" / "compare.md").read_text()
    assert "| stage_one | stage_two |" in md and "Machine:" in md
    assert (tmp_path / "report" / "compare.png").read_bytes()[:4] == b"\x89PNG"

    again = CliRunner().invoke(cli, ["run", first, second, "--skip-done"])
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped:") == 2 and "loading model" not in again.output

    changed = CliRunner().invoke(cli, ["run", first, "--skip-done", "--set", "train.max_steps=3"])
    assert changed.exit_code == 2 and "already exists" in changed.output  # a different recipe is not "done"


def test_a_bad_later_recipe_fails_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = write(tmp_path, "1.toml", "stage_one")
    bad = write(tmp_path, "2.toml", "stage_two", extra="dtyp = 'float32'")
    result = CliRunner().invoke(cli, ["run", first, bad])
    assert result.exit_code == 2
    assert "2.toml: model.dtyp: unknown key; did you mean 'dtype'" in result.output
    assert not (tmp_path / "runs").exists()


def test_two_recipes_writing_one_directory_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["run", write(tmp_path, "1.toml", "same"), write(tmp_path, "2.toml", "same")])
    assert result.exit_code == 2 and "two recipes write to runs/same" in result.output
    result = CliRunner().invoke(cli, ["run", write(tmp_path, "3.toml", "a"), write(tmp_path, "4.toml", "b"), "--output-dir", "x"])
    assert result.exit_code == 2 and "--output-dir names one run directory" in result.output


def test_keep_layers_keeps_first_last_and_evenly_spaced():
    from ptrain._models import kept_layer_indices

    assert kept_layer_indices(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert kept_layer_indices(4, 2) == [0, 3] and kept_layer_indices(4, 1) == [0] and kept_layer_indices(4, 4) == [0, 1, 2, 3]


def test_keep_layers_generates_with_a_consistent_cache_and_rejects_too_many():
    import torch

    from ptrain import load_pretrained
    from ptrain._errors import UsageError
    from ptrain._sections import ModelSection

    model, tokenizer = load_pretrained(ModelSection(name="builtin:tiny-llama", keep_layers=2), seed=0)
    assert len(model.model.layers) == model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    ids = tokenizer("hello world", return_tensors="pt").input_ids
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        uncached = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=False, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(cached, uncached)
    with pytest.raises(UsageError, match=r"model.keep_layers = 9: builtin:tiny-llama has only 4 layers; use at most 4"):
        load_pretrained(ModelSection(name="builtin:tiny-llama", keep_layers=9), seed=0)


def test_generate_times_a_warm_model_and_answers_as_before():
    """``ptrain.generate`` runs the first batch untimed for a few tokens before the clock starts; the
    answers are those of the timed passes alone (one per prompt, in order, the same on every call)."""
    from ptrain import generate, load_pretrained
    from ptrain._evaluation import WARMUP_TOKENS
    from ptrain._sections import ModelSection

    model, tokenizer = load_pretrained(ModelSection(name="builtin:tiny-llama"), seed=0)
    calls = []
    plain = model.generate

    def counted(**kwargs):
        calls.append((kwargs["input_ids"].shape[0], kwargs["max_new_tokens"]))
        return plain(**kwargs)

    model.generate = counted
    prompts = [f"{i} + {i} =" for i in range(5)]
    result = generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=2)
    assert calls == [(2, WARMUP_TOKENS), (2, 12), (2, 12), (1, 12)]  # the warm-up, then 3 batches
    assert len(result.texts) == 5 and result.new_tokens > 0 and result.seconds > 0
    assert generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=2).texts == result.texts
    assert generate(model, tokenizer, [], max_new_tokens=12).texts == [] and len(calls) == 8  # nothing to warm up
    assert generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=2, warm_up=False).texts == result.texts
    assert calls[8:] == [(2, 12), (2, 12), (1, 12)]  # texts only: no warm-up pass
