"""Several processes: the torchrun launch, the [distributed] section, rank 0 alone writing the run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ptrain._cli import cli, launch_command

HERE = Path(__file__).parent
MINIMAL = """
methods = ["sft"]
[model]
name = "builtin:tiny-llama"
[data]
source = "builtin:tasks"
"""


def test_nproc_relaunches_the_same_command_under_torchrun(write_recipe, monkeypatch):
    seen = {}
    monkeypatch.setattr("ptrain._cli.launch", lambda nproc, args: seen.update(nproc=nproc, args=args) or 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    path = write_recipe(MINIMAL)
    result = CliRunner().invoke(cli, ["run", str(path), "--nproc", "2", "--set", "train.max_steps=3", "--resume"])
    assert result.exit_code == 0, result.output
    assert seen == {"nproc": 2, "args": ["run", str(path), "--set", "train.max_steps=3", "--resume"]}
    command = launch_command(2, seen["args"])
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert command[6:] == ["ptrain", *seen["args"]]


def test_nproc_validates_the_recipe_before_launching(write_recipe, monkeypatch):
    monkeypatch.setattr("ptrain._cli.launch", lambda nproc, args: pytest.fail("launched a broken recipe"))
    result = CliRunner().invoke(cli, ["run", str(write_recipe(MINIMAL + "[distributed]\nbackend = 'zero'\n")), "--nproc", "2"])
    assert result.exit_code == 2 and "distributed.backend" in result.output


@pytest.mark.parametrize(
    "section, message",
    [
        ("backend = 'deepspeed'", "distributed.deepspeed"),
        ("backend = 'deepspeed'\ndeepspeed = 'missing.json'", "missing.json' is not found"),
        ("fsdp = ['full_shard', 'autowrap']", "did you mean 'auto_wrap'"),
        ("[distributed.fsdp_config]\nmin_num_param = 10", "distributed.fsdp_config.min_num_param"),
        ("deepspeed = 'ds.json'", 'only with backend = "deepspeed"'),
    ],
)
def test_distributed_section_is_validated(write_recipe, section, message):
    text = MINIMAL + ("[distributed]\n" if not section.startswith("[") else "") + section + "\n"
    result = CliRunner().invoke(cli, ["validate", str(write_recipe(text))])
    assert result.exit_code == 2 and message in result.output, result.output


def test_distributed_section_maps_onto_training_arguments(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    from ptrain import Run
    from ptrain._recipe import load_recipe_dict
    from ptrain._training import training_arguments

    recipe = load_recipe_dict({
        "methods": ["sft"], "model": {"name": "builtin:tiny-llama"}, "data": {"source": "builtin:tasks"},
        "distributed": {"find_unused_parameters": True, "backend": "fsdp", "fsdp": ["shard_grad_op"],
                        "fsdp_config": {"min_num_params": 1000}},
    })
    run = Run(recipe=recipe, dir=tmp_path)
    single = training_arguments(run, TrainingArguments)
    assert not single.fsdp and single.ddp_backend is None  # one process: [distributed] is not read
    monkeypatch.setenv("WORLD_SIZE", "2")
    from ptrain._training import distributed_arguments

    kwargs = distributed_arguments(run)
    assert kwargs == {"ddp_backend": "gloo", "ddp_find_unused_parameters": True, "fsdp": "shard_grad_op",
                      "fsdp_config": {"min_num_params": 1000}}


@pytest.mark.slow
def test_two_processes_train_on_different_shards_and_rank0_saves_the_shared_model(tmp_path):
    rows = [{"prompt": f"item {i}: repeat {w}", "completion": w} for i, w in enumerate(["alpha", "beta", "gamma", "delta"] * 40)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "ddp.toml"
    recipe.write_text(f"""
name = "ddp"
methods = ["recorder", "sft"]
[model]
name = "builtin:tiny-llama"
[data]
source = "{data}"
eval_size = 8
[train]
max_steps = 6
batch_size = 4
learning_rate = 3e-3
max_length = 32
logging_steps = 2
[eval]
base = false
max_samples = 4
max_new_tokens = 4
[output]
plots = false
""")
    record, out = tmp_path / "record", tmp_path / "run"
    record.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(HERE / "ddp_driver.py"), str(record), "run", str(recipe), "--output-dir", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    seen = [(record / f"seen-rank{r}.txt").read_text().split() for r in (0, 1)]
    for hashes in seen:  # each rank a batch of its own every step (accelerate collates one batch ahead)
        assert 6 * 4 <= len(hashes) <= 7 * 4
    assert not set(seen[0]) & set(seen[1])  # different shards
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2 and metrics["train"]["steps"] == 6

    from ddp_driver import parameter_checksum
    from transformers import AutoModelForCausalLM

    rank0, rank1 = (float((record / f"checksum-rank{r}.txt").read_text()) for r in (0, 1))
    saved = parameter_checksum(AutoModelForCausalLM.from_pretrained(out / "model"))
    assert rank0 == rank1 == saved
    # rank 0 alone speaks: one results table, one run-directory line
    assert done.stdout.count("run directory:") == 1 and done.stdout.count("results") == 1
    written = {p.name for p in out.iterdir()}
    assert {"env.json", "metrics.json", "model", "recipe.resolved.toml", "run.log", "samples.jsonl"} <= written
    assert written <= {"checkpoints", "env.json", "log_history.json", "metrics.json", "model", "recipe.resolved.toml",
                       "run.log", "samples.jsonl"}
