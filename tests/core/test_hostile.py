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
