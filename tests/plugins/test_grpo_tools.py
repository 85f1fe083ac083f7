"""Tools as plugins, and GRPO over several turns: the ``tools`` hook, ``ptrain list``, validation by name (one line,
before torch), the built-in calculator's safety, and a GRPO rollout in which a warm-started tiny model calls the
calculator (the call parsed from its own generated text, run by the rollout) and the result lands in the log."""

import json
import subprocess
import sys
import types

import pytest

from conftest import RECIPES
from ptrain import RecipeError, Tool, hookimpl, run_tool
from ptrain._tools import CORE_TOOLS, avro_type, calculator
from ptrain.testing import tiny_recipe

TEMPLATE = str(RECIPES / "tools" / "chatml_tools_tiny.jinja")


def tool_recipe(methods=("grpo",), grpo=None):
    return tiny_recipe(
        list(methods),
        data={"tasks": ["arithmetic"], "chat_template": TEMPLATE},
        grpo={"tools": ["calculator"], **(grpo or {})},
        train={"batch_size": 8},
        eval={"batch_size": 8},
    )


def word_count(text: str) -> int:
    """Count the words of a text.

    Args:
        text: The text whose words are counted.
    """
    return len(text.split())


def undescribed(text: str) -> int:
    """Count something."""
    return 0


def tools_plugin(*tools):
    return types.SimpleNamespace(__doc__="Counting tools.", tools=hookimpl(lambda: list(tools)))


def _cli(*args):
    code = (
        "import sys, json; from ptrain._cli import cli\n"
        "try:\n    cli(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules)\n"
        "print('HEAVY=' + json.dumps(heavy), file=sys.stderr)\nsys.exit(code)\n"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------ the built-ins


def test_calculator_evaluates_arithmetic_and_runs_no_code():
    assert [calculator(e) for e in ("12 + 7", "71 - 57", "(3 - 1) * 4", "7 / 2", "6 / 3", "-2 * -3")] == ["19", "14", "8", "3.5", "2", "6"]
    for hostile in ("__import__('os').system('true')", "2 ** 999999", "x + 1", "[1] * 9", "open('f')", "1; 2"):
        with pytest.raises(ValueError):
            calculator(hostile)
    with pytest.raises(ValueError, match="division by zero"):
        calculator("1 / (2 - 2)")
    with pytest.raises(ValueError, match="longer than"):
        calculator("1 + " * 100 + "1")
    assert avro_type("long integer") == "long" and avro_type("(true/false flag)") == "boolean"


def test_a_failing_tool_is_fed_back_as_an_error_never_raised():
    tools = {t.name: t.callable() for t in CORE_TOOLS}
    assert run_tool(tools, "calculator", {"expression": "2 + 3"}) == ("5", True)
    assert run_tool(tools, "calculator", {"expression": "1 / 0"}) == ("{'error': 'division by zero'}", False)
    assert run_tool(tools, "calculator", {"expr": "1"})[1] is False  # wrong argument name
    assert run_tool(tools, "search", {})[0] == "{'error': 'Tool search not found.'}"


def test_a_tools_schema_comes_from_its_signature_and_docstring():
    schema = next(t for t in CORE_TOOLS if t.name == "calculator").schema()["function"]
    assert schema["name"] == "calculator" and "+ - * /" in schema["description"]
    assert schema["parameters"]["properties"]["expression"]["type"] == "string"
    assert schema["parameters"]["required"] == ["expression"]
    renamed = Tool("count_words", word_count).callable()
    assert renamed.__name__ == "count_words" and renamed(text="a b c") == 3


# ------------------------------------------------------------------ listed and validated by name, nothing heavy


def test_list_shows_the_tools_without_importing_torch():
    result = _cli("list", "--json")
    assert result.returncode == 0 and "HEAVY=[]" in result.stderr, result.stderr
    core = next(p for p in json.loads(result.stdout) if p["name"] == "core")
    assert core["tools"] == ["calculator", "avro_type"] and "tools" in core["kind"]


def test_a_third_party_tool_is_listed_as_a_tools_plugin_and_named_in_a_recipe(ptrain_validate):
    from ptrain.testing import registry

    plugins = {"counting": tools_plugin(Tool("word_count", word_count, "words in a text"))}
    info = next(i for i in registry(plugins).inspect_all() if i.name == "counting")
    assert (info.kind, info.tools, info.status) == ("tools", ["word_count"], "ok")
    recipe = ptrain_validate(tool_recipe(methods=["grpo", "counting"], grpo={"tools": ["calculator", "word_count"]}), plugins=plugins)
    assert recipe.tool("word_count", key="grpo.tools[1]").function is word_count
    assert set(recipe.tools) == {"calculator", "avro_type", "word_count"}
    # without the plugin in methods, the message names the plugin that has it
    with pytest.raises(RecipeError, match=r"grpo\.tools\[0\]: unknown tool 'word_count'.*plugin 'counting' provides 'word_count': add it"):
        ptrain_validate(tool_recipe(grpo={"tools": ["word_count"]}), plugins=plugins)


def test_unknown_tool_is_one_line_naming_the_key_and_the_tools_before_torch(tmp_path):
    recipe = tmp_path / "tools.toml"
    recipe.write_text(
        "methods = ['grpo']\n[model]\nname = 'builtin:tiny-llama'\n"
        f"[data]\nsource = 'builtin:tasks'\ntasks = ['arithmetic']\nchat_template = '{TEMPLATE}'\n"
        "[grpo]\ntools = ['calculater']\n[train]\nbatch_size = 8\n"
    )
    result = _cli("validate", str(recipe))
    assert result.returncode == 2 and "HEAVY=[]" in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("HEAVY=")]
    assert lines == [
        f"error: {recipe}: grpo.tools[0]: unknown tool 'calculater'; did you mean 'calculator'? (tools: avro_type, calculator); "
        "a plugin that adds tools takes part only when the recipe's methods name it (ptrain list -v shows them)"
    ], lines


@pytest.mark.parametrize(
    ("grpo", "data", "message"),
    [
        ({"tools": ["calculator"]}, {"chat_template": None},
         r"grpo\.tools: model builtin:tiny-llama's chat template does not render the tools, the assistant's tool calls"),
        ({"tools": ["calculator", "calculator"]}, {}, r"grpo\.tools: names a tool twice"),
        ({"max_tool_turns": 0}, {}, r"grpo\.max_tool_turns: must be >= 1"),
    ],
)
def test_tool_settings_are_checked_at_validate(ptrain_validate, grpo, data, message):
    recipe = tool_recipe(grpo=grpo)
    recipe["data"] = {k: v for k, v in {**recipe["data"], **data}.items() if v is not None}
    with pytest.raises(RecipeError, match=message):
        ptrain_validate(recipe)


def test_a_tool_transformers_cannot_describe_is_refused_naming_its_plugin(ptrain_validate):
    plugins = {"counting": tools_plugin(Tool("vague", undescribed))}
    with pytest.raises(RecipeError, match=r"plugin 'counting' declares tool 'vague', and argument 'text' is not described under 'Args:'"):
        ptrain_validate(tool_recipe(methods=["grpo", "counting"]), plugins=plugins)
    twice = {"counting": tools_plugin(Tool("calculator", word_count))}
    with pytest.raises(RecipeError, match=r"tool 'calculator' is registered by both 'counting' and 'core'"):
        ptrain_validate(tool_recipe(methods=["grpo", "counting"]), plugins=twice)


def test_the_tool_recipes_validate(ptrain_validate):
    sft = ptrain_validate(RECIPES / "sft_tools_tiny.toml")
    assert sft.data.chat_template == "recipes/tools/chatml_tools_tiny.jinja"
    grpo = ptrain_validate(RECIPES / "grpo_tools_tiny.toml", "model.name=builtin:tiny-llama")
    assert grpo.section("grpo").tools == ["calculator"] and grpo.section("grpo").max_tool_turns == 1
    smollm2 = ptrain_validate(RECIPES / "grpo_tools_smollm2.toml")
    assert smollm2.section("grpo").tools == ["calculator"] and smollm2.methods == ["grpo", "lora"]


# ------------------------------------------------------------------ called during a rollout, logged


def used_tool(prompts, completions, trajectory=None, **columns):
    """A reward that reads the whole exchange: 1 when a tool ran (a ``tool`` turn without an error) before the answer."""
    return [float(any(m["role"] == "tool" and not str(m["content"]).startswith("{'error'") for m in t)) for t in trajectory]


@pytest.mark.slow
def test_grpo_rollouts_call_the_tool_and_log_its_results(run_recipe, tmp_path):
    """recipes/sft_tools_tiny.toml then recipes/grpo_tools_tiny.toml (the documented pipeline, shortened): the tiny llama
    learns the calling convention from conversations, then GRPO samples answers whose calls are parsed from the
    generated text by the rollout, run by the real calculator, and fed back before the final answer."""
    from ptrain import RewardFunction

    warm = run_recipe(RECIPES / "sft_tools_tiny.toml", "train.max_steps=200", "eval.max_samples=4", "output.save_model=true",
                      "output.plots=false", output_dir=tmp_path / "sft")
    reward = types.SimpleNamespace(reward_functions=hookimpl(lambda: [RewardFunction("used_tool", used_tool)]))
    run = run_recipe(RECIPES / "grpo_tools_tiny.toml", f"model.name={warm.dir / 'model'}", "train.max_steps=2",
                     "eval.max_samples=8", "output.save_model=false", "output.plots=false", "methods=['grpo', 'tool_reward']",
                     "grpo.rewards={task_match = 1.0, used_tool = 0.1}", output_dir=tmp_path / "grpo",
                     extra_plugins={"tool_reward": reward})
    assert run.metrics["grpo"]["tools"] == ["calculator"]
    rollouts = [json.loads(line) for line in (run.dir / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 2 * 8 and {r["step"] for r in rollouts} == {0, 1}  # 2 steps of 8 sampled completions
    called = [r for r in rollouts if r["tool_calls"]]
    assert called, rollouts[0]
    for row in called:
        # the assistant's call (parsed from its own text), then the calculator's result on exactly those arguments
        call, result = row["trajectory"][0], row["trajectory"][1]
        arguments = call["tool_calls"][0]["function"]["arguments"]
        assert call["tool_calls"][0]["function"]["name"] == "calculator" and result["role"] == "tool"
        assert result["content"] == run_tool({"calculator": calculator}, "calculator", arguments)[0]
        # the reward that reads the trajectory saw the tool's turn
        assert row["rewards"]["used_tool"] == float(not result["content"].startswith("{'error'"))
        assert set(row["rewards"]) == {"task_match", "used_tool"}
    # per step: TRL's tool metrics and the trajectory reward, in log_history.json
    steps = [e for e in json.loads((run.dir / "log_history.json").read_text()) if "tools/call_frequency" in e]
    assert len(steps) == 2 and max(e["tools/call_frequency"] for e in steps) > 0
    assert max(e["rewards/used_tool/mean"] for e in steps) > 0
    # held out: greedy rollouts with the tool at base and final, and the share of answers that called it
    for stage in ("base", "final"):
        held = [json.loads(line) for line in (run.dir / f"rollouts_{stage}.jsonl").read_text().splitlines()]
        assert len(held) == 8 and all(h["prompt"].startswith("Compute the result.") for h in held)
        assert run.metrics[stage]["tool_call_rate"] == sum(bool(h["tool_calls"]) for h in held) / 8
        assert 0 <= run.metrics[stage]["tool_use_correct"] <= run.metrics[stage]["tool_call_rate"]
