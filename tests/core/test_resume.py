"""Resume that provably works: real signals to a real `ptrain run`, then the same losses as a run left alone."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ptrain._cli import cli
from ptrain._lifecycle import _latest_checkpoint
from ptrain._recipe import load_recipe

TOKEN = "hf_" + "Q7x" * 10  # a fake token: must never reach a file of the run
TINY = """
name = "tiny-resume"
methods = ["sft"]
seed = 3
[model]
name = "builtin:tiny-llama"
[data]
source = "builtin:tasks"
tasks = ["reverse"]
num_examples = 120
eval_size = 8
[train]
max_steps = 15
batch_size = 4
learning_rate = 3e-3
max_length = 48
logging_steps = 1
save_steps = 3
save_total_limit = 5
[eval]
base = false
max_samples = 4
max_new_tokens = 4
[output]
plots = false
"""


def test_resume_refuses_a_recipe_that_changed_in_a_way_that_matters(write_recipe, tmp_path):
    path = write_recipe(TINY)
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.resolved.toml").write_text(load_recipe(path).to_toml())
    before = sorted(p.name for p in out.iterdir())
    result = CliRunner().invoke(cli, [
        "run", str(path), "--output-dir", str(out), "--resume",
        "--set", "train.learning_rate=0.5", "--set", "data.tasks=['uppercase']", "--set", "eval.max_samples=2",
    ])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.count("\n") == 0 and "recipe changed" in message
    assert "train.learning_rate (0.003 -> 0.5)" in message and "data.tasks" in message
    assert "eval.max_samples" not in message  # evaluation settings may change between sessions
    assert sorted(p.name for p in out.iterdir()) == before  # nothing touched
    # output.resume = true in the recipe behaves as --resume
    again = CliRunner().invoke(cli, ["run", str(path), "--output-dir", str(out), "--set", "output.resume=true",
                                     "--set", "train.learning_rate=0.5"])
    assert again.exit_code == 2 and "train.learning_rate (0.003 -> 0.5)" in again.stderr


def test_harmless_changes_are_allowed_on_resume():
    from ptrain._lifecycle import recipe_changes

    before = {"train": {"learning_rate": 1e-3, "logging_steps": 10, "save_steps": 5}, "eval": {"max_samples": 4}}
    after = {"train": {"learning_rate": 1e-3, "logging_steps": 1, "save_steps": 2}, "eval": {"max_samples": 9},
             "output": {"plots": False}}
    assert recipe_changes(before, after) == []
    assert recipe_changes(before, {**after, "seed": 7}) == ["seed"]


def test_latest_checkpoint_passes_over_one_killed_while_saving(tmp_path):
    for step, state in ((4, "{}"), (8, '{"global_st'), (12, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert _latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"


def test_a_distributed_checkpoint_counts_once_every_process_saved(tmp_path):
    """Each process writes its RNG state, rank 0 its trainer state, nobody waits: rank 1 killed while
    saving leaves a checkpoint that looks whole. Only one rank 0 marked after the others is used."""
    from ptrain._training import ALL_RANKS_SAVED

    for step in (2, 4):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        (folder / "rng_state_0.pth").write_bytes(b"")
    (tmp_path / "checkpoint-2" / "rng_state_1.pth").write_bytes(b"")
    (tmp_path / "checkpoint-2" / ALL_RANKS_SAVED).write_text('{"world_size": 2, "step": 2}')
    assert _latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    (tmp_path / "checkpoint-4" / ALL_RANKS_SAVED).write_text('{"world_size": 2, "step": 4}')
    assert _latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"


def _start(recipe: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ptrain", "run", str(recipe), "--output-dir", str(out), *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(process: subprocess.Popen, out: Path, step: int, timeout: float = 300) -> None:
    ready = out / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json"
    deadline = time.monotonic() + timeout
    while not ready.is_file():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.1)


def _losses(out: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in json.loads((out / "log_history.json").read_text()) if "loss" in e}


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_a_killed_run_resumes_to_the_same_losses(write_recipe, run_recipe, tmp_path):
    recipe = write_recipe(TINY)
    out = tmp_path / "interrupted"

    # 1. Ctrl-C (SIGINT) after the first checkpoint: a checkpoint of the current step, a clean exit 130
    first = _start(recipe, out, "--set", f"description=pasted {TOKEN} by mistake")
    _wait_for_checkpoint(first, out, 3)
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 130, output[-3000:]
    assert "interrupted: SIGINT: stopped at step" in output and "--resume" in output and "Traceback" not in output
    stopped = _latest_checkpoint(out / "checkpoints")
    assert stopped is not None and int(stopped.name.split("-")[1]) >= 3
    assert not (out / "model").exists() and not (out / "metrics.json").exists()

    # 2. Resume, then SIGKILL (no chance to clean up) after the next regular checkpoint (every 3 steps);
    # the signal above may have landed a few steps after checkpoint-3, so "next" is counted from where it stopped
    step = int(stopped.name.split("-")[1])
    following = (step // 3 + 1) * 3
    assert following < 15, f"the first run stopped too late ({step}) to test a kill before the end"
    second = _start(recipe, out, "--resume")
    _wait_for_checkpoint(second, out, following)
    second.send_signal(signal.SIGKILL)
    second.communicate(timeout=60)
    assert second.returncode == -signal.SIGKILL

    # 3. Resume again to the end, and compare with a run never interrupted
    resumed = run_recipe(recipe, output_dir=out, resume=True)
    resumed_from = int(resumed.metrics["train"]["resumed_from"].rsplit("-", 1)[1])
    assert resumed_from >= following  # the newest complete checkpoint (the kill may land after one more)
    alone = run_recipe(recipe, output_dir=tmp_path / "alone")
    losses, reference = _losses(out), _losses(tmp_path / "alone")
    assert sorted(losses) == sorted(reference) == list(range(1, 16))
    for step in reference:
        assert losses[step] == pytest.approx(reference[step], rel=1e-4), step
    assert reference[15] < reference[1]  # it did learn something
    assert resumed.metrics["final"]["eval_loss"] == pytest.approx(alone.metrics["final"]["eval_loss"], rel=1e-4)

    # no secret reached any file of the run (the env var, nor the one pasted into --set)
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".toml", ".log", ".jsonl", ".txt", ".md"):
            assert TOKEN not in path.read_text(errors="replace"), path
