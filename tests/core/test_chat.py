"""``ptrain chat``: the trained model answers as the run evaluated it, next to its base; loading errors are one line."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ptrain import generate_tasks, json_match
from ptrain._cli import cli


def chat(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, ["chat", *args], input=input)


def avro_rows(count: int, seed: int) -> list[dict[str, str]]:
    return [{"prompt": r["input"], "completion": r["output"]} for r in generate_tasks(["avro"], count, seed)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def memorising_recipe(data, methods, **train):
    return {
        "name": "chat_test",
        "methods": methods,
        "seed": 0,
        "model": {"name": "builtin:tiny-llama"},
        "data": {"source": str(data), "eval_source": str(data)},
        "train": {"max_steps": 100, "batch_size": 6, "learning_rate": 3e-3, "max_length": 128, "logging_steps": 25, **train},
        "eval": {"max_samples": 6, "max_new_tokens": 70},
        "output": {"plots": False, "report": False},
    }


@pytest.mark.slow
def test_chat_prints_the_trained_models_schema_and_the_base_models_answer(run_recipe, tmp_path):
    """The README's example on a tiny model: SFT memorises six AVRO schemas (task metric 0 -> 1.0 at 100 steps,
    measured with seed 0), and `ptrain chat RUN --prompt ... --json --base` gives the schema and the base's gibberish."""
    rows = avro_rows(6, 3)
    run = run_recipe(memorising_recipe(write_jsonl(tmp_path / "avro.jsonl", rows), ["sft"]), output_dir=tmp_path / "run")
    assert run.metrics["final"]["task_metric"] >= 0.8  # measured 1.0
    asked = rows[0]
    result = chat(str(run.dir), "--prompt", asked["prompt"], "--json", "--base", "--max-new-tokens", "70")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output.strip().splitlines()[-1])
    assert answer["prompt"] == asked["prompt"]
    assert json_match(answer["response"], asked["completion"]) == 1.0, answer
    assert json_match(answer["base_response"], asked["completion"]) == 0.0
    assert answer["model"].endswith("/model") and answer["base_model"] == "builtin:tiny-llama"
    # the answer is the run's own held-out generation for that prompt: same model, same rendering
    samples = {s["prompt"]: s for s in map(json.loads, (run.dir / "samples.jsonl").read_text().splitlines())}
    assert answer["response"] == samples[asked["prompt"]]["generation"]
    assert answer["base_response"] == samples[asked["prompt"]]["base_generation"]


@pytest.mark.slow
def test_a_run_with_an_adapter_loads_base_plus_adapter_unmerged(run_recipe, tmp_path):
    from ptrain._chat import load_models

    rows = avro_rows(8, 5)
    recipe = memorising_recipe(write_jsonl(tmp_path / "avro.jsonl", rows), ["sft", "lora"], max_steps=5, learning_rate=1e-2)
    recipe["lora"] = {"r": 8, "merge": False}
    recipe["eval"]["max_new_tokens"] = 24
    run = run_recipe(recipe, output_dir=tmp_path / "run")
    assert not (run.dir / "model").exists()
    models = load_models(str(run.dir), base=True)
    assert [m.label for m in models] == ["trained", "base"]
    assert type(models[0].model).__name__.startswith("PeftModel") and models[1].model is models[0].model
    assert models[0].rendering.prompt(None, [], "Order with id") == "Order with id"  # prompt/completion rows: as in training

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(r["prompt"] for r in rows[:2]) + "\n")
    result = chat(str(run.dir), "--prompts", str(prompts), "--json", "--base", "--max-new-tokens", "24")
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.output.strip().splitlines()]
    samples = {s["prompt"]: s for s in map(json.loads, (run.dir / "samples.jsonl").read_text().splitlines())}
    assert len(answers) == 2
    for answer in answers:  # the adapter on and off reproduce the run's trained and base generations
        assert answer["response"] == samples[answer["prompt"]]["generation"]
        assert answer["base_response"] == samples[answer["prompt"]]["base_generation"]
        assert "adapter" in answer["model"] and "(adapter off)" in answer["base_model"]

    # the terminal conversation: /reset, an answer from each model, /exit
    talk = chat(str(run.dir), "--base", "--max-new-tokens", "24", input=f"/reset\n{rows[0]['prompt']}\n/exit\n")
    assert talk.exit_code == 0, talk.output
    assert "(conversation reset)" in talk.output and "one turn at a time" in talk.output
    assert f"trained> {samples[rows[0]['prompt']]['generation']}" in talk.output
    assert f"base   > {samples[rows[0]['prompt']]['base_generation']}" in talk.output


def test_loading_errors_are_one_line(tmp_path):
    from ptrain._models import model_location

    (tmp_path / "empty").mkdir()
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    source = model_location("builtin:tiny-llama")
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (no_tokenizer / name).write_bytes((Path(source) / name).read_bytes())
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "custom", "auto_map": {"AutoModelForCausalLM": "modeling.Custom"}}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.resolved.toml").write_text('name = "r"\nmethods = ["sft"]\n[model]\nname = "builtin:tiny-llama"\n')
    (run_dir / "model").mkdir()
    cases = [
        ((str(tmp_path / "missing"), "--prompt", "hi"), "no such directory"),
        ((str(tmp_path / "empty"), "--prompt", "hi"), "no model here"),
        ((str(no_tokenizer), "--prompt", "hi"), "cannot load"),
        ((str(remote), "--prompt", "hi"), "needs code of its own"),
        ((str(run_dir), "--prompt", "hi"), "the run exported no model"),
        ((str(run_dir), "--variant", "nf4", "--prompt", "hi"), "has no quantized/nf4; it has no quantized/ exports"),
        ((str(tmp_path / "empty"), "--variant", "nf4"), "--variant picks a quantized export of a run directory"),
        (("builtin:tiny-llama", "--base", "--prompt", "hi"), "--base needs a run directory"),
        (("builtin:tiny-llama", "--json"), "--json answers --prompt/--prompts"),
    ]
    for args, message in cases:
        result = chat(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, result.output)


def test_hostile_chat_inputs_are_bounded_or_refused_in_one_line(tmp_path):
    """A truncated weights file, prompts past the model's positions (1024 here), --max-new-tokens past them,
    a non-finite temperature and a closed standard input: each one line, exit 2, nothing generated."""
    from ptrain._models import model_location

    source = Path(model_location("builtin:tiny-llama"))
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for path in source.iterdir():
        (truncated / path.name).write_bytes(path.read_bytes())
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cases = [
        ((str(truncated), "--prompt", "hi"), "a weights file is damaged"),
        (("builtin:tiny-llama", "--prompt", "hi", "--max-new-tokens", "1000000000"), "reads at most 1,024 positions, prompt included"),
        (("builtin:tiny-llama", "--prompt", "x" * 5_000_000), "prompt 1: the prompt holds 5,000,0"),
        (("builtin:tiny-llama", "--prompt", "word " * 1500), "the model reads at most 1,024 positions"),
    ]
    for args, message in cases:
        result = chat(*args)
        assert result.exit_code == 2, (args[:2], result.output[-300:])
        last = result.output.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last and len(last) < 700, (args[:2], last)
    nan = chat("builtin:tiny-llama", "--prompt", "hi", "--temperature", "nan")
    assert nan.exit_code == 2 and "'--temperature': nan is not a finite number" in nan.output
    import subprocess
    import sys

    closed = subprocess.run([sys.executable, "-m", "ptrain", "chat", "builtin:tiny-llama"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=120, preexec_fn=lambda: __import__("os").close(0))
    assert closed.returncode == 2 and "standard input is closed" in closed.stderr and "Traceback" not in closed.stderr, closed.stderr
