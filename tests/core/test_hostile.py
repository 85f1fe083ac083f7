"""The newer commands attacked (round three): compare, mixing, RL, distributed and new-plugin refuse what
would fail later or loop for ever, in one line naming the file, option, key or reward; never a traceback."""

import json
from pathlib import Path

from click.testing import CliRunner

from ptrain._cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def one_line(result) -> str:
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("INFO", "WARNING"))]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_compare_reads_metrics_defensively(tmp_path):
    cases = {
        "deep": '{"final": ' * 100_000 + "1" + "}" * 100_000,
        "key_is_a_number": json.dumps({"report": [{"label": "x", "key": 3}], "artifacts": []}),
        "row_is_a_number": json.dumps({"report": [7]}),
        "models_is_a_list": json.dumps({"models": [1, 2]}),
    }
    expected = {"deep": "nested", "key_is_a_number": "report[0].key is int, not str", "row_is_a_number": "report[0] is a int",
                "models_is_a_list": "'models' is a list, not a table"}
    for name, text in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(text)
        result = invoke("compare", str(tmp_path / name), "-o", str(tmp_path / "out"))
        line = one_line(result)
        assert result.exit_code == 2 and line.startswith(f"error: {tmp_path / name / 'metrics.json'}: ") and expected[name] in line, line


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mixture_weights_are_finite_and_dedup_that_empties_a_split_is_named(tmp_path):
    import pytest

    from ptrain._datamix import rendered_rows
    from ptrain._errors import DataError, RecipeError
    from ptrain._schema import build
    from ptrain._sections import DataSection

    def section(table):
        return build(DataSection, table, "data", lambda key: "recipe")

    for weight in (1e308, 1e10, -1.0):  # inf and nan: the schema already refuses non-finite numbers
        with pytest.raises(RecipeError, match=r"data.sources\[1\].weight: must be > 0 and a finite number"):
            section({"sources": [{"source": "a/x.jsonl"}, {"source": "b/y.jsonl", "weight": weight}]})
    rows = [{"prompt": "same", "completion": "row"}] * 6
    source = _jsonl(tmp_path / "dups.jsonl", rows)
    evaluation = _jsonl(tmp_path / "eval.jsonl", rows[:1])
    for streaming in (False, True):
        with pytest.raises(DataError, match=r"data.source = '.*dups.jsonl': data.dedup dropped (all 6 training rows|every training)"):
            rendered_rows(section({"source": str(source), "eval_source": str(evaluation), "dedup": True, "streaming": streaming}), seed=0)


def test_rewards_are_checked_for_length_and_finiteness_with_the_rewards_name(ptrain_run):
    import pytest

    from ptrain import PtrainError, RewardFunction, check_rewards, hookimpl
    from ptrain.testing import tiny_recipe

    assert check_rewards("ok", (1, None, 0.5), 3) == [1.0, None, 0.5]
    for scores, message in (([1.0], "returned 1 score for 3 completions"), ([1.0, float("nan"), 0.0], "returned nan for completion 1"),
                            (["a", 1, 1], "returned str 'a' for completion 0"), (None, "returned NoneType")):
        with pytest.raises(PtrainError, match=f"reward 'broken' {message}"):
            check_rewards("broken", scores, 3)

    class OneValue:
        @hookimpl
        def reward_functions(self):
            return [RewardFunction("one_value", lambda prompts, completions, **columns: [1.0], "one value per batch")]

    recipe = tiny_recipe(["grpo", "one_value"], train={"batch_size": 8, "max_steps": 1}, eval={"batch_size": 8, "max_samples": 4},
                         grpo={"rewards": {"one_value": 1.0}, "max_completion_length": 4})
    with pytest.raises(PtrainError, match="reward 'one_value' returned 1 score for 4 completions"):
        ptrain_run(recipe, plugins={"one_value": OneValue()})


def test_reward_models_need_a_trained_head_and_degenerate_preferences_are_refused_or_warned(ptrain_validate, tmp_path, caplog):
    import pytest

    from ptrain import DataError, RecipeError
    from ptrain.testing import tiny_recipe

    sft_run = tmp_path / "sft_run"
    sft_run.mkdir()
    (sft_run / "recipe.resolved.toml").write_text('name = "s"\nmethods = ["sft", "lora"]\n[model]\nname = "builtin:tiny-llama"\n')
    (sft_run / "model").mkdir()
    (sft_run / "model" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    causal = sft_run / "model"
    for location, message in ((str(sft_run), "is a run of \\['sft', 'lora'\\], not of the reward method"),
                              (str(causal), "is a LlamaForCausalLM, not a sequence-classification model"),
                              ("builtin:tiny-llama", "is a language model with no reward head")):
        recipe = tiny_recipe(["grpo"], train={"batch_size": 8}, eval={"batch_size": 8}, grpo={"reward_models": {location: 1.0}})
        with pytest.raises(RecipeError, match=f'grpo.reward_models\\["{location}"\\]: .*{message}'):
            ptrain_validate(recipe)
    same = _jsonl(tmp_path / "same.jsonl", [{"prompt": f"p{i}", "chosen": "a", "rejected": "a"} for i in range(12)])
    with pytest.raises(DataError, match=r"same.jsonl': chosen and rejected are the same answer in all 12 rows"):
        ptrain_validate(tiny_recipe(["orpo"], data={"source": str(same), "eval_size": 2}))
    labels = _jsonl(tmp_path / "labels.jsonl", [{"prompt": f"p{i}", "completion": "a", "label": True} for i in range(12)])
    ptrain_validate(tiny_recipe(["kto"], data={"source": str(labels), "eval_size": 2}))
    assert "labels.jsonl': all 12 labels are true" in caplog.text and "add rows labelled false" in caplog.text


def test_distributed_options_are_bounded_before_torchrun_starts(tmp_path, monkeypatch):
    import pytest

    monkeypatch.setattr("ptrain._cli.launch", lambda nproc, args, nodes=None: pytest.fail("launched"))
    recipe = _write_recipe(tmp_path)
    node = ["--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint"]
    cases = [
        (["--nproc", "1000"], "--nproc 1,000: this machine runs at most"),
        ([*node, "[::1"], "--rdzv-endpoint '[::1' is not HOST:PORT (host '[:' is not an IPv6 address in brackets)"),
        ([*node, "host:99999"], "(port '99999' is not a number from 1 to 65535)"),
        ([*node, "bad host!:29500"], "host 'bad host!' is not a host name or an IP address"),
        (["--nnodes", "100000", "--node-rank", "0", "--rdzv-endpoint", "h:1"], "--nnodes 100,000: at most 4,096 machines"),
    ]
    for options, message in cases:
        result = invoke("run", str(recipe), *options)
        assert result.exit_code == 2 and message in one_line(result), (options, result.output)


def _write_recipe(folder: Path) -> Path:
    path = folder / "d.toml"
    path.write_text('name = "d"\nmethods = ["sft"]\n[model]\nname = "builtin:tiny-llama"\n[data]\nsource = "builtin:tasks"\n'
                    'tasks = ["reverse"]\nnum_examples = 40\neval_size = 4\n[train]\nmax_steps = 1\nbatch_size = 2\n')
    return path


def test_a_recipe_error_under_nproc_2_is_one_line(tmp_path):
    """The run directory is taken: every process finds it, one says so, and torchrun adds nothing."""
    import subprocess
    import sys

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = subprocess.run([sys.executable, "-m", "ptrain", "run", str(_write_recipe(tmp_path)), "--nproc", "2", "--output-dir",
                             str(tmp_path / "taken")], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(errors) == 1 and "already exists; pass --overwrite" in errors[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "ChildFailedError" not in result.stderr


def test_new_plugin_names_are_python_identifiers_and_file_names(tmp_path):
    cases = [
        (["class", "--dir", str(tmp_path / "a")], "method name 'class' is a Python keyword"),
        (["none", "--dir", str(tmp_path / "b")], "method name 'none' is a Python keyword"),
        (["a" * 300], "is 300 characters long; use at most 64"),
        (["fine", "--dir", str(tmp_path / ("d" * 300))], "cannot use it (File name too long); choose another --dir"),
    ]
    for args, message in cases:
        result = invoke("new-plugin", *args)
        assert result.exit_code == 2 and message in one_line(result), (args[0][:10], result.output)
    assert not (tmp_path / "a").exists()
