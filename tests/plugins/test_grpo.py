"""grpo: online RL with verifiable rewards. Validate-time checks, and GRPO after an SFT warm start
(the session's ``trained_tiny_llama``) raising its training reward without harming the held-out task metric."""

import json

import pytest

from conftest import RECIPES
from ptrain import RecipeError, hookimpl
from ptrain.testing import tiny_recipe


def test_tiny_recipe_validates_and_resolves(ptrain_validate):
    recipe = ptrain_validate(RECIPES / "grpo_tiny.toml", "model.name=builtin:tiny-llama")
    section = recipe.section("grpo")
    assert (section.rewards, section.num_generations, section.beta) == ({"task_match": 1.0}, 8, 0.0)
    assert recipe.trainer_owner == "grpo"


def test_grpo_with_lora_validates(ptrain_validate):
    recipe = ptrain_validate(tiny_recipe(["grpo", "lora"], train={"batch_size": 8}, eval={"batch_size": 8}))
    assert recipe.trainer_owner == "grpo" and "lora" in recipe.methods


def test_eval_batch_must_hold_whole_groups_when_evaluating_during_training(ptrain_validate):
    with pytest.raises(RecipeError, match=r"eval\.batch_size: evaluating during training samples 4 completions"):
        ptrain_validate(tiny_recipe(["grpo"], train={"batch_size": 8, "eval_steps": 5}, eval={"batch_size": 6}))


def test_importance_sampling_level_is_one_of_two(ptrain_validate):
    with pytest.raises(RecipeError, match=r"grpo\.importance_sampling_level: expected one of 'token', 'sequence', got 'seq'") as error:
        ptrain_validate(tiny_recipe(["grpo"], grpo={"importance_sampling_level": "seq"}, train={"batch_size": 8}))
    assert "\n" not in str(error.value)


class TrainerBuilt(Exception):
    """Raised by :func:`trainer_probe` once the trainer exists: a test of its arguments needs no training."""


def trainer_probe(seen):
    """A modifier plugin that hands the run and the trainer GRPO built to the test, then stops the run."""

    class Probe:
        """probe: records the built trainer for a test"""

        @hookimpl(wrapper=True)
        def build_trainer(self, run):
            trainer = yield
            seen.append((run, trainer))
            raise TrainerBuilt

    return Probe()


@pytest.mark.parametrize(
    "level, loss_type, warned",
    [("sequence", "grpo", False), ("sequence", "dapo", True), ("token", "dapo", False)],
)
def test_importance_sampling_level_reaches_the_trainer(ptrain_run, caplog, level, loss_type, warned):
    """GSPO (``sequence``) is TRL's GRPOConfig.importance_sampling_level; TRL's default is ``token``, so the
    ``sequence`` cases fail if the option is dropped on the way. No training: the probe stops the run."""
    seen = []
    recipe = tiny_recipe(
        ["grpo", "probe"], grpo={"importance_sampling_level": level, "loss_type": loss_type, "max_completion_length": 8},
        train={"batch_size": 8}, eval={"base": False},
    )
    with caplog.at_level("INFO", logger="ptrain"), pytest.raises(TrainerBuilt):
        ptrain_run(recipe, plugins={"probe": trainer_probe(seen)})
    (run, trainer), = seen
    assert type(trainer).__name__ == "GRPOTrainer"
    assert trainer.args.importance_sampling_level == level and trainer.importance_sampling_level == level
    assert trainer.args.loss_type == loss_type
    assert run.metrics["grpo"]["importance_sampling_level"] == level
    assert f"loss {loss_type}, importance sampling per {level}" in caplog.text
    # sequence-level ratios under a loss that sums tokens is not GSPO as published: ptrain says so on its own line
    assert ("not GSPO's objective" in caplog.text) is warned, caplog.text


@pytest.mark.slow
def test_grpo_after_sft_raises_its_training_reward_and_keeps_the_held_out_metric(trained_tiny_llama, run_recipe, tmp_path, ptrain_cli):
    """recipes/grpo_tiny.toml on the SFT model of recipes/sft_tiny.toml (the pipeline the recipe documents)."""
    run = run_recipe(RECIPES / "grpo_tiny.toml", f"model.name={trained_tiny_llama.dir / 'model'}", "output.save_model=false",
                     output_dir=tmp_path / "grpo")
    base, final = run.metrics["base"], run.metrics["final"]
    assert run.metrics["grpo"]["rewards"] == {"task_match": 1.0}
    # the same 150 held-out rows, never trained on by either stage; greedy answers (pass@1)
    assert final["reward_prompts"] == base["reward_prompts"] == 150
    # the reward on held-out prompts is the task metric (task_match scores with the task's own metric)
    assert base["rewards"]["task_match"] == pytest.approx(base["task_metric"], abs=0.01)
    # measured again 2026-12-06 (stop 33) after this stop's merges changed the warm start (160 steps, reverse, 150
    # held-out prompts; GRPO seed, the warm start at seed 42): held-out exact match 0.2733 -> 0.2933 (seed 42),
    # 0.32 -> 0.3467 (7), 0.3133 -> 0.34 (0), 0.3667 -> 0.3533 (1); the training reward's mean over the last quarter
    # of the steps against the first: +0.077, +0.045, +0.038, -0.002. The GRPO code from before the merges gives the
    # same numbers on this warm start (checked at seed 1) (the earlier +0.06..+0.16 came from a weaker one, 0.2467 at seed 42). So the
    # claim this size supports: the rewarded behaviour rises in training, and the held-out metric is not harmed.
    logged = json.loads((tmp_path / "grpo" / "log_history.json").read_text())
    rewards = [e["reward"] for e in logged if "reward" in e]
    quarter = len(rewards) // 4
    early, late = sum(rewards[:quarter]) / quarter, sum(rewards[-quarter:]) / quarter
    assert late > early + 0.02, (early, late, rewards)
    assert final["task_metric"] >= base["task_metric"] - 0.02, (base, final)
    assert final["rewards"]["task_match"] == pytest.approx(final["task_metric"], abs=0.01)
    assert 0 < final["completion_length"] <= 16
    # per step: reward mean and std, completion length, in log_history.json and the plot
    steps = [e for e in logged if "reward" in e]
    assert steps and all({"reward_std", "rewards/task_match/mean", "completions/mean_length"} <= set(e) for e in steps)
    assert (tmp_path / "grpo" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # compare shows the rewards at base and final
    result = ptrain_cli("compare", str(tmp_path / "grpo"), "--output", str(tmp_path / "cmp"))
    assert result.exit_code == 0, result.output
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "reward: task_match" in table and "completion length" in table, table


@pytest.mark.slow
def test_grpo_with_lora_trains_adapters_checkpoints_and_exports(ptrain_run, tmp_path):
    run = ptrain_run(
        tiny_recipe(
            ["grpo", "lora"],
            grpo={"max_completion_length": 8},
            train={"max_steps": 4, "batch_size": 8, "logging_steps": 1, "save_steps": 2},
            eval={"max_samples": 8, "batch_size": 8},
        ),
        output_dir=tmp_path / "run",
    )
    train = run.metrics["train"]
    assert 0 < train["trainable_parameters"] < train["parameters"] / 5
    assert run.metrics["grpo"]["reference"] == "none (beta = 0)"
    assert [e["step"] for e in run.trainer.state.log_history if "reward" in e] == [1, 2, 3, 4]
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-2").is_dir()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    # the adapters merged into a plain model: the base's parameters, no adapter ones
    assert sum(p.numel() for p in model.parameters()) == train["parameters"] - train["trainable_parameters"]


GRPO_LORA = (
    'name = "grpo-lora"\nmethods = ["grpo", "lora"]\nseed = 5\n'
    '[model]\nname = "builtin:tiny-llama"\n'
    '[data]\nsource = "builtin:tasks"\ntasks = ["reverse"]\nnum_examples = 200\neval_size = 8\n'
    "[grpo]\nmax_completion_length = 8\n"
    "[train]\nmax_steps = {steps}\nbatch_size = 8\nlearning_rate = 1e-3\nlogging_steps = 1\nsave_steps = 2\n"
    "[eval]\nmax_samples = 8\nmax_new_tokens = 8\nbatch_size = 8\n[output]\nplots = false\n"
)


@pytest.mark.slow
def test_grpo_with_lora_runs_on_two_processes(tmp_path):
    """--nproc 2: each process samples its share of the groups; one adapter and one set of metrics come out."""
    import os
    import subprocess
    import sys

    recipe = tmp_path / "grpo.toml"
    recipe.write_text(GRPO_LORA.format(steps=4))
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "ptrain", "run", str(recipe), "--output-dir", str(out), "--nproc", "2"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2 and metrics["train"]["steps"] == 4
    assert [e["step"] for e in json.loads((out / "log_history.json").read_text()) if "reward" in e] == [1, 2, 3, 4]
    assert (out / "checkpoints" / "checkpoint-4").is_dir() and (out / "adapter" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_grpo_with_lora_stops_on_ctrl_c_and_resumes_from_its_checkpoint(tmp_path):
    """Ctrl-C during GRPO: a checkpoint and exit 130; --resume continues from it to the last step."""
    import os
    import signal
    import subprocess
    import sys
    import time

    recipe = tmp_path / "grpo.toml"
    recipe.write_text(GRPO_LORA.format(steps=12))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ptrain", "run", str(recipe), "--output-dir", str(out)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file():
        assert first.poll() is None, first.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 130, output[-3000:]
    assert "--resume" in output and "Traceback" not in output
    assert "final" not in json.loads((out / "metrics.json").read_text())  # the base evaluation only

    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 12
    start = int(metrics["train"]["resumed_from"].rsplit("-", 1)[1])
    assert 2 <= start < 12
    logged = [e["step"] for e in json.loads((out / "log_history.json").read_text()) if "reward" in e]
    assert logged == list(range(1, 13))  # the checkpoint's history, then the resumed steps
    assert (out / "adapter" / "adapter_config.json").is_file()
