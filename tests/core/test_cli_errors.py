"""Exit codes and one-line messages of the CLI for user errors (no training involved)."""

from click.testing import CliRunner

from ptrain._cli import cli

MINIMAL = """
methods = ["sft"]
[model]
name = "builtin:tiny-llama"
[data]
source = "builtin:tasks"
"""


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_misspelled_key_exits_2(write_recipe):
    result = invoke("run", str(write_recipe(MINIMAL + "[train]\nlearnig_rate = 1e-4\n")))
    assert result.exit_code == 2
    assert "train.learnig_rate" in result.output and "did you mean 'learning_rate'" in result.output
    assert "Traceback" not in result.output


def test_unknown_method_exits_2(write_recipe):
    result = invoke("validate", str(write_recipe(MINIMAL.replace('"sft"', '"dpo-nope"'))))
    assert result.exit_code == 2
    assert "unknown method 'dpo-nope'" in result.output and "sft" in result.output


def test_missing_data_file_exits_2(write_recipe):
    result = invoke("run", str(write_recipe(MINIMAL.replace("builtin:tasks", "data/missing.jsonl"))))
    assert result.exit_code == 2
    assert "data/missing.jsonl" in result.output


def test_missing_recipe_file_exits_2(tmp_path):
    result = invoke("validate", str(tmp_path / "nope.toml"))
    assert result.exit_code == 2
    assert "nope.toml" in result.output


def test_validate_ok(write_recipe):
    result = invoke("validate", str(write_recipe(MINIMAL)), "--show")
    assert result.exit_code == 0
    assert "ok" in result.output and "learning_rate" in result.output


def test_existing_run_dir_is_not_overwritten(write_recipe, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = invoke("run", str(write_recipe(MINIMAL)), "--output-dir", str(out))
    assert result.exit_code == 2
    assert "already exists" in result.output and "--overwrite" in result.output
    assert (out / "keep.txt").read_text() == "precious"
