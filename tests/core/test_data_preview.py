"""``ptrain data RECIPE``: rendered training examples as the trainer sees them, boundaries and token counts."""

import json

from click.testing import CliRunner

from ptrain._cli import cli


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe_file(tmp_path, extra: str = "") -> str:
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(50)])
    notes = write_jsonl(tmp_path / "notes.jsonl", [{"text": f"note number {i} " * 3} for i in range(50)])
    path = tmp_path / "recipe.toml"
    path.write_text(f"""
name = "preview"
methods = ["sft"]
[model]
name = "builtin:tiny-llama"
[data]
eval_size = 5
[[data.sources]]
source = "{qa}"
columns = {{ prompt = "question", completion = "answer" }}
[[data.sources]]
source = "{notes}"
weight = 0.5
[train]
max_length = 12
{extra}
""")
    return str(path)


def test_preview_shows_boundaries_token_counts_and_truncation(tmp_path):
    from ptrain._models import load_tokenizer

    path = recipe_file(tmp_path)
    result = CliRunner().invoke(cli, ["data", path, "-n", "40", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    summary, examples = shown["summary"], shown["examples"]
    assert set(summary["sources"]) == {"qa", "notes"} and summary["sources"]["qa"]["eval_rows"] == 5
    assert len(examples) == 40 and {e["source"] for e in examples} == {"qa", "notes"}
    tokenizer = load_tokenizer("builtin:tiny-llama")
    for example in examples:
        full = tokenizer(example["prompt"] + example["completion"] + tokenizer.eos_token)["input_ids"]
        assert example["total_tokens"] == len(full) == example["prompt_tokens"] + example["completion_tokens"]
        assert example["truncated_tokens"] == max(len(full) - 12, 0)
        if example["source"] == "notes":  # plain text: no prompt, the whole text is learned, in chunks that fit
            assert example["prompt"] == "" and example["prompt_tokens"] == 0 and example["truncated_tokens"] == 0
        else:
            assert example["prompt"].startswith("What is") and full[: example["prompt_tokens"]] == tokenizer(example["prompt"])["input_ids"][: example["prompt_tokens"]]
    assert summary["tokens"]["over_max_length"] > 0 and summary["tokens"]["max_length"] == 12
    assert summary["text_rows_chunked"] == 45  # every training note (50, 5 held out) is longer than 12 tokens: chunked, none cut

    text = CliRunner().invoke(cli, ["data", path, "-n", "2"], terminal_width=120)
    assert text.exit_code == 0, text.output
    assert text.output.count("▶ PROMPT") == 2 and text.output.count("▶ COMPLETION (trained on)") == 2
    assert "source qa:" in text.output and "longer than train.max_length = 12" in text.output
    assert "the trainer cuts the last" in text.output
    assert "chunked, not truncated: no tail is lost" in text.output


def test_preview_names_methods_that_change_the_data_at_run_time(tmp_path):
    tasks = tmp_path / "tasks.toml"
    tasks.write_text('name = "t"\nmethods = ["sft", "instruct"]\n[model]\nname = "builtin:tiny-llama"\n'
                     '[data]\nsource = "builtin:tasks"\nnum_examples = 30\neval_size = 5\n')
    result = CliRunner().invoke(cli, ["data", str(tasks), "-n", "1"], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert "method 'instruct' changes the data at run time" in result.output
    assert "### Instruction:" in result.output
