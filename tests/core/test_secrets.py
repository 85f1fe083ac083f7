"""Nothing secret in anything a run writes or a user publishes: tokens planted in every place a recipe
holds text (description, a data path, a method section, ``--set``) appear in no file of finished runs,
binary TensorBoard event files included; card text from the recipe is inert Markdown."""

import json
import sys

import pytest

from ptrain._cards import code, text
from ptrain._redact import redact, redact_data, scrub_files

HF = "hf_" + "Zq9" * 8
OPENAI = "sk-proj-" + "Ab3_" * 6
ANTHROPIC = "sk-ant-" + "x7Y" * 8
PATH_TOKEN = "hf_" + "P4t" * 7
AWS = "AKIA" + "Q" * 16
BEARER = "Bearer " + "b3Ar" * 6


def test_redaction_by_value_shape_and_by_key(tmp_path):
    for secret in (HF, OPENAI, ANTHROPIC, AWS, "ghp_" + "g" * 36, "glpat-" + "q" * 20):
        assert redact(f"use {secret}.") == "use ***."
    assert redact(f"/data/{PATH_TOKEN}/train.jsonl") == "/data/***/train.jsonl"
    assert redact(f"Authorization: {BEARER}") == "Authorization: Bearer ***"
    assert redact("aws_secret_access_key = " + "wJalr/K7MDENG+bPxRfiCYEXAMPLEKEY12345678") == "aws_secret_access_key = ***"
    ordinary = "max_new_tokens tokenizer sk-learn task-specific mask_token 1e-3"
    assert redact(ordinary) == ordinary
    data = redact_data({"hub": {"token": "plain", "repo": "me/model"}, "max_new_tokens": 8, "rows": [f"x {HF}"], "pad_token": "<pad>"})
    assert data == {"hub": {"token": "***", "repo": "me/model"}, "max_new_tokens": 8, "rows": ["x ***"], "pad_token": "<pad>"}
    (tmp_path / "adapter_config.json").write_text(json.dumps({"prompt_tuning_init_text": OPENAI}))
    (tmp_path / "weights.bin").write_bytes(OPENAI.encode())
    assert scrub_files(tmp_path) == [tmp_path / "adapter_config.json"]
    assert OPENAI not in (tmp_path / "adapter_config.json").read_text()


def test_card_text_from_the_recipe_is_inert_markdown():
    hostile = "Nice model</p><script>alert(1)</script>\n```python\nunclosed fence *and* [link](javascript:x) | cell"
    escaped = text(hostile)
    assert "<" not in escaped and ">" not in escaped and "```" not in escaped and "[link]" not in escaped
    assert escaped.count("\n") == hostile.count("\n")  # paragraphs stay paragraphs
    assert code("a ``b`` | c\nd") == "```a ``b`` \\| c d```"


def _files(folder):
    return [p for p in sorted(folder.rglob("*")) if p.is_file()]


@pytest.mark.slow
def test_planted_secrets_reach_no_file_of_finished_runs(tmp_path, monkeypatch):
    """sft + lora + quantize (nf4) and sft + prompt_tuning, TensorBoard on (and MLflow's file store on the second);
    every file walked, bytes and all."""
    from ptrain.testing import execute, tiny_recipe

    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MY_SERVICE_API_KEY", "env-secret-value-9876")
    data = tmp_path / PATH_TOKEN / "train.jsonl"
    data.parent.mkdir()
    words = ["red blue", "one two three", "cat dog", "sun moon star", "left right", "up down"]
    data.write_text("".join(json.dumps({"prompt": f"Reverse: {w}", "completion": " ".join(reversed(w.split()))}) + "\n"
                            for w in words * 8))
    description = f"Key {HF} for {AWS}; {BEARER}; env env-secret-value-9876 </p><script>x()</script> ```"
    planted = [HF, OPENAI, ANTHROPIC, PATH_TOKEN, AWS, BEARER.split()[1], "env-secret-value-9876"]
    common = {"train": {"max_steps": 2, "batch_size": 4, "report_to": ["tensorboard"], "logging_steps": 1},
              "data": {"source": str(data), "eval_size": 4}, "eval": {"max_samples": 4, "max_new_tokens": 4},
              "description": description, "output": {"plots": False, "report": True}}
    monkeypatch.setattr(sys, "argv", ["ptrain", "run", "r.toml", "--set", f"name=ok-{OPENAI}"])
    runs = [
        execute(tiny_recipe(["sft", "lora", "quantize"], lora={"r": 2}, quantize={"variants": ["nf4"], "window": 16, "stride": 8},
                            **common), f"name=planted-{OPENAI}", output_dir=tmp_path / "one"),
        execute(tiny_recipe(["sft", "prompt_tuning"], prompt_tuning={"num_virtual_tokens": 4, "init": "text",
                                                                    "init_text": f"Reverse it {ANTHROPIC}"},
                            **{**common, "train": {**common["train"], "report_to": ["tensorboard", "mlflow"]}}),
                f"description=see {OPENAI} {description}", output_dir=tmp_path / "two"),
    ]
    one, two = (run.dir for run in runs)
    for folder in ("model", "adapter", "quantized/nf4"):
        assert (one / folder / "README.md").is_file(), folder
    assert (two / "adapter" / "README.md").is_file() and list((one / "logs").rglob("events.out.tfevents*"))
    assert list((two / "mlruns").rglob("params/recipe.description"))
    for name in ("metrics.json", "env.json", "run.log", "log_history.json", "report.html", "recipe.resolved.toml"):
        assert (one / name).is_file(), name
    bodies = [secret[-12:] for secret in planted]  # an escaped token (hf\_…) is still a leak
    leaks = [f"{p}: {secret}" for run in (one, two) for p in _files(run) for secret in planted + bodies
             if secret.encode() in p.read_bytes()]
    assert not leaks, leaks
    for published in (one / "model" / "README.md", one / "adapter" / "README.md", one / "report.html", two / "report.html"):
        assert "<script>x()" not in published.read_text(), published
    card = (one / "model" / "README.md").read_text()
    assert "&lt;script&gt;" in card and r"\*\*\* for \*\*\*" in card and card.count("```") % 2 == 0
