"""Tests of the edit_similarity reward plugin, written with ptrain's plugin-author kit (the ``ptrain_*`` fixtures)."""

import json
import subprocess
import sys

import pytest

from ptrain import RecipeError
from ptrain.testing import tiny_recipe

pytest.importorskip("ptrain_edit_reward", reason="the example plugin is not installed: pip install -e examples/ptrain-edit-reward")

from ptrain_edit_reward import edit_similarity, levenshtein  # noqa: E402


def grpo_recipe(methods=("grpo", "edit_reward"), **sections):
    base = {"train": {"batch_size": 8}, "eval": {"batch_size": 8}, "grpo": {"rewards": {"edit_similarity": 1.0}}}
    return tiny_recipe(list(methods), **{**base, **sections})


def test_levenshtein_and_similarity():
    assert [levenshtein(a, b) for a, b in [("", "abc"), ("kitten", "sitting"), ("olleh", "olleh")]] == [3, 3, 0]
    scores = edit_similarity(["", "", "", ""], ["olleh", "<answer>ollex</answer>", "xyz", "x"], output=["olleh"] * 3 + [""])
    assert scores == [1.0, 0.8, 0.0, None]


def test_listed_as_a_reward_plugin(ptrain_cli):
    found = next(p for p in json.loads(ptrain_cli("list", "--json").output) if p["name"] == "edit_reward")
    assert (found["distribution"], found["status"], found["rewards"]) == ("ptrain-edit-reward", "ok", ["edit_similarity"])
    assert found["hooks"] == ["reward_functions"]


def test_imports_no_heavy_library():
    code = "import sys, ptrain_edit_reward; print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_named_from_a_recipe(ptrain_validate):
    recipe = ptrain_validate(grpo_recipe())
    assert recipe.reward_function("edit_similarity", key="grpo.rewards.edit_similarity").function is edit_similarity


def test_needs_the_plugin_in_methods(ptrain_validate):
    with pytest.raises(RecipeError, match=r"grpo\.rewards\.edit_similarity: unknown reward.*plugin 'edit_reward' provides"):
        ptrain_validate(grpo_recipe(methods=["grpo"]))


@pytest.mark.slow
def test_grpo_trains_with_the_reward_by_name(ptrain_run):
    """A few GRPO steps of the tiny llama scored by edit_similarity: the reward is called, logged and evaluated."""
    run = ptrain_run(
        grpo_recipe(
            grpo={"rewards": {"task_match": 1.0, "edit_similarity": 0.5}, "max_completion_length": 8},
            train={"max_steps": 3, "batch_size": 8, "logging_steps": 1},
            eval={"max_samples": 8, "batch_size": 8},
            output={"save_model": False, "plots": False},
        )
    )
    assert run.metrics["grpo"]["rewards"] == {"task_match": 1.0, "edit_similarity": 0.5}
    for stage in ("base", "final"):
        score = run.metrics[stage]["rewards"]["edit_similarity"]
        assert 0.0 <= score <= 1.0, run.metrics[stage]
    logged = [e for e in run.trainer.state.log_history if "rewards/edit_similarity/mean" in e]
    assert len(logged) == 3 and all(0.0 <= e["rewards/edit_similarity/mean"] <= 1.0 for e in logged)
