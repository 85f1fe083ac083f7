"""Reward functions: the core's built-ins, the ``reward_functions`` hook, validate-time checks and ``ptrain list``."""

import json
import subprocess
import sys

import pytest

from ptrain import RecipeError, RewardFunction, hookimpl
from ptrain._rewards import CORE_REWARDS, answer_format, length_penalty, task_match, valid_json_reward
from ptrain.testing import tiny_recipe


def grpo_recipe(**sections):
    return tiny_recipe(["grpo"], train={"batch_size": 8}, eval={"batch_size": 8}, **sections)


def test_task_match_uses_each_tasks_metric():
    completions = ["olleh", "The answer is 42.", '{"b": 2, "a": 1}', "HELLO", "<answer>olleh</answer>"]
    references = ["olleh", "42", '{"a": 1, "b": 2}', "hello", "olleh"]
    tasks = ["reverse", "arithmetic", "avro", "uppercase", "reverse"]
    # exact match, numeric match (the last number), JSON equality (key order free), exact (case counts), tags stripped
    assert task_match([""] * 5, completions, output=references, task=tasks) == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert task_match(["", ""], ["41", "olleh!"], output=["42", "olleh"], task=["arithmetic", "reverse"]) == [0.0, 0.0]
    # no reference: nothing to say (TRL ignores None for that completion)
    assert task_match([""], ["x"], output=[""], task=["reverse"]) == [None]


def test_valid_json_format_and_length_rewards():
    assert valid_json_reward(["", "", ""], ['{"a": 1}', "<answer>[1, 2]</answer>", "{a: 1}"]) == [1.0, 1.0, 0.0]
    assert answer_format(["", "", ""], ["<answer>x</answer>", "<think>hm</think> <answer>x</answer>", "x <answer>x</answer>"]) == [
        1.0, 1.0, 0.0,
    ]
    # 0 up to the reference's length, -1 at twice it and beyond
    assert length_penalty([""] * 4, ["abcd", "abcdef", "abcdefgh", "a" * 20], output=["abcd"] * 4) == [0.0, -0.5, -1.0, -1.0]


def test_core_declares_the_built_ins():
    assert {r.name for r in CORE_REWARDS} == {"task_match", "valid_json", "answer_format", "length_penalty"}
    assert all(isinstance(r, RewardFunction) and r.description for r in CORE_REWARDS)


def test_recipe_resolves_rewards_by_name(ptrain_validate):
    recipe = ptrain_validate(grpo_recipe(grpo={"rewards": {"task_match": 1.0, "length_penalty": 0.1}}))
    assert {"task_match", "valid_json", "answer_format", "length_penalty"} <= set(recipe.reward_functions)
    assert recipe.reward_function("task_match", key="grpo.rewards.task_match").function is task_match
    section = recipe.section("grpo")
    assert section.rewards == {"task_match": 1.0, "length_penalty": 0.1} and section.num_generations == 4


def test_unknown_reward_is_a_validate_error_with_suggestions(ptrain_validate):
    with pytest.raises(RecipeError, match=r"grpo\.rewards\.task_mach: unknown reward function 'task_mach'; did you mean 'task_match'"):
        ptrain_validate(grpo_recipe(grpo={"rewards": {"task_mach": 1.0}}))


def test_unknown_reward_on_the_command_line_is_one_line(ptrain_cli, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(
        'name = "r"\nmethods = ["grpo"]\n[model]\nname = "builtin:tiny-llama"\n[data]\nsource = "builtin:tasks"\n'
        "[train]\nbatch_size = 8\n[grpo]\nrewards = { valid_jsn = 1.0 }\n"
    )
    result = ptrain_cli("validate", str(path))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "grpo.rewards.valid_jsn" in lines[0] and "did you mean 'valid_json'" in lines[0], lines


def test_reward_of_a_plugin_not_in_methods_names_the_plugin(ptrain_validate):
    def bonus(prompts, completions, **columns):
        return [1.0] * len(completions)

    class Bonus:
        """bonus: a reward plugin for tests"""

        @hookimpl
        def reward_functions(self):
            return [RewardFunction("bonus", bonus, "always 1")]

    with pytest.raises(RecipeError, match=r"unknown reward function 'bonus'.*plugin 'bonus' provides 'bonus': add it to methods"):
        ptrain_validate(grpo_recipe(grpo={"rewards": {"bonus": 1.0}}), plugins={"bonus": Bonus()})
    recipe = ptrain_validate(tiny_recipe(["grpo", "bonus"], train={"batch_size": 8}, eval={"batch_size": 8},
                                         grpo={"rewards": {"bonus": 1.0}}), plugins={"bonus": Bonus()})
    assert recipe.reward_function("bonus", key="grpo.rewards.bonus").function is bonus


def test_two_plugins_registering_one_name_is_an_error(ptrain_validate):
    class Again:
        """again: registers a built-in's name"""

        @hookimpl
        def reward_functions(self):
            return [RewardFunction("task_match", task_match, "a copy")]

    with pytest.raises(RecipeError, match=r"methods: reward function 'task_match' is registered by both '(core|again)' and '(core|again)'"):
        ptrain_validate(tiny_recipe(["grpo", "again"], train={"batch_size": 8}, eval={"batch_size": 8}), plugins={"again": Again()})


def test_grpo_on_data_without_prompts_fails_at_validate(ptrain_cli, tmp_path):
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": f"plain text number {i}"}) + "\n" for i in range(40)))
    path = tmp_path / "r.toml"
    path.write_text(
        f'name = "r"\nmethods = ["grpo"]\n[model]\nname = "builtin:tiny-llama"\n[data]\nsource = "{data}"\n'
        "[train]\nbatch_size = 8\n"
    )
    result = ptrain_cli("validate", str(path))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "grpo samples answers to prompts" in lines[0] and "'text' rows" in lines[0], lines


@pytest.mark.parametrize(
    "grpo, train, message",
    [
        ({"num_generations": 1}, {}, r"grpo\.num_generations: must be >= 2"),
        ({"rewards": {}}, {}, r"grpo\.rewards: names no reward"),
        ({"num_generations": 3}, {"batch_size": 8}, r"grpo\.num_generations: 3 completions per prompt do not divide the 8"),
        ({"temperature": 0}, {}, r"grpo\.temperature: must be > 0"),
    ],
)
def test_grpo_section_errors(ptrain_validate, grpo, train, message):
    with pytest.raises(RecipeError, match=message):
        ptrain_validate(tiny_recipe(["grpo"], train={"batch_size": 8, **train}, eval={"batch_size": 8}, grpo=grpo))


def test_list_shows_reward_functions_without_importing_torch():
    code = (
        "import sys, json; from click.testing import CliRunner; from ptrain._cli import cli; "
        "out = CliRunner().invoke(cli, ['list', '--json']).output; "
        "print(json.dumps({'list': json.loads(out), 'torch': 'torch' in sys.modules}))"
    )
    result = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert result["torch"] is False
    core = next(p for p in result["list"] if p["name"] == "core")
    assert set(core["rewards"]) == {"task_match", "valid_json", "answer_format", "length_penalty"}
    verbose = subprocess.run([sys.executable, "-m", "ptrain", "list", "-v"], capture_output=True, text=True)
    if verbose.returncode == 0:  # the module entry point exists
        assert "task_match" in verbose.stdout
