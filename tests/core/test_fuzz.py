"""Bad input, tried systematically: generated recipes, ``--set`` overrides and data files.

Every case must end in exit code 0 (a valid recipe) or 2 with a one-line message naming the
file, key or row: never a traceback, never a run directory left behind.
"""

import json
import os
import string
import tempfile
from pathlib import Path

import tomli_w
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptrain._cli import cli

BASE = {
    "name": "fuzz",
    "methods": ["sft"],
    "model": {"name": "builtin:tiny-llama"},
    "data": {"source": "builtin:tasks", "tasks": ["reverse"]},
    "train": {"max_steps": 3, "learning_rate": 1e-3},
}
EXAMPLES = int(os.environ.get("PTRAIN_FUZZ_EXAMPLES", "100"))  # raise it for a deeper search
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)

keys = st.text(alphabet=string.ascii_letters + "_-.éß中🙂 ", min_size=1, max_size=12)
scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**62, max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["../../etc/passwd", "../x.jsonl", "~nobody-here/x.jsonl", "a\x00b.jsonl", "/", "", ".", "[/]"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=6)
KNOWN_PATHS = [
    "name", "seed", "methods", "description", "model.name", "model.dtype", "model.trust_remote_code", "data.source",
    "data.format", "data.columns", "data.eval_size", "data.template", "data.tasks", "train.max_steps",
    "train.learning_rate", "train.batch_size", "train.warmup_ratio", "train.precision", "train.report_to",
    "eval.metric", "output.dir", "output.plots", "distributed.backend", "distributed.fsdp", "distributed.fsdp_config",
    "distributed.deepspeed", "sft.packing",
]
paths = st.one_of(st.sampled_from(KNOWN_PATHS), st.builds(lambda a, b: f"{a}.{b}", st.sampled_from(list(BASE) + ["sft"]), keys))


def check_outcome(result, *, allow_ok: bool = True, progress: bool = False) -> str:
    """Exit 0 (if allowed) or 2 with one line on stderr (after progress lines, if allowed); return that line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 0 and allow_ok:
        return ""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if progress:  # "INFO loading model" and the like came first
        lines = [line for line in lines if not line.startswith("INFO ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def set_path(table: dict, dotted: str, value) -> dict:
    node = table
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return table


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_random_text_is_rejected_cleanly(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        line = check_outcome(invoke("validate", str(path)), allow_ok=False)
        assert "recipe.toml" in line


@FUZZ
@given(data=st.binary(max_size=100))
def test_random_bytes_are_rejected_cleanly(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.toml"
        path.write_bytes(data)
        line = check_outcome(invoke("validate", str(path)), allow_ok=False)
        assert "recipe.toml" in line


@FUZZ
@given(mutations=st.lists(st.tuples(paths, values), min_size=1, max_size=3))
def test_mutated_recipes_validate_or_name_the_key(mutations):
    table = json.loads(json.dumps(BASE))
    for dotted, value in mutations:
        set_path(table, dotted, value)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.toml"
        try:
            path.write_text(tomli_w.dumps(table), encoding="utf-8", errors="surrogatepass")
        except (TypeError, ValueError):  # not representable as TOML (e.g. NaN in a key): nothing to test
            return
        line = check_outcome(invoke("validate", str(path)))
        if line:
            assert "recipe.toml" in line  # every key here came from this file


@FUZZ
@given(overrides=st.lists(st.one_of(
    st.text(max_size=40),
    st.builds(lambda p, v: f"{p}={v}", paths, st.text(max_size=20)),
    st.builds(lambda p, v: f"{p}={v}", paths, values.map(lambda v: json.dumps(v, ensure_ascii=False))),
), min_size=1, max_size=3))
def test_set_overrides_apply_or_name_the_problem(overrides):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.toml"
        path.write_text(tomli_w.dumps(BASE))
        args = ["validate", str(path)]
        for text in overrides:
            args += ["--set", text]
        line = check_outcome(invoke(*args))
        if line:
            assert "--set" in line or "recipe.toml" in line


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    key=st.sampled_from(["data.source", "data.eval_source", "model.name", "output.dir", "name"]),
    trick=st.builds(
        lambda ups, name, ext: "../" * ups + name + ext,
        st.integers(1, 6),
        st.text(alphabet=string.ascii_letters + "/\x00~.", min_size=1, max_size=10),
        st.sampled_from([".jsonl", ".csv", ".json", ".parquet", "", "/"]),
    ),
)
def test_path_tricks_never_escape_into_a_traceback(key, trick):
    table = set_path(json.loads(json.dumps(BASE)), key, trick)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.toml"
        path.write_text(tomli_w.dumps(table))
        line = check_outcome(invoke("validate", str(path)))
        if key != "output.dir":  # a relative output directory outside the cwd is the user's right
            assert line and key in line


# ---------------------------------------------------------------- broken data rows in `ptrain run`

GOOD_ROW = {"prompt": "say hi", "completion": "hi"}
BROKEN_JSONL = st.sampled_from([
    "{not json", '{"prompt": "x", "completion": ', "[1, 2, 3]", '"just a string"', "42", "null",
    '{"prompt": ' + "9" * 5000 + "}", "\ud800", "{'single': 'quotes'}", "[" * 3000 + "]" * 3000,
])


def run_on_data(folder: Path, source: str, content: bytes, progress: bool = False) -> tuple[str, Path]:
    data = folder / source
    data.write_bytes(content)
    recipe = folder / "recipe.toml"
    recipe.write_text(tomli_w.dumps({**BASE, "data": {"source": str(data), "eval_size": 1}}))
    out = folder / "run"
    result = invoke("run", str(recipe), "--output-dir", str(out))
    line = check_outcome(result, allow_ok=False, progress=progress)
    if not progress:  # a broken file is found by `validate` too, with the same message
        assert check_outcome(invoke("validate", str(recipe)), allow_ok=False) == line
    return line, out


@FUZZ
@given(
    good=st.integers(0, 5),
    bad=st.lists(BROKEN_JSONL, min_size=1, max_size=2),
    position=st.integers(0, 10),
)
def test_broken_jsonl_rows_are_named_before_anything_loads(good, bad, position):
    lines = [json.dumps(GOOD_ROW)] * good
    first_bad = min(position, len(lines))
    for i, text in enumerate(bad):
        lines.insert(first_bad + i, text)
    with tempfile.TemporaryDirectory() as folder:
        content = "\n".join(lines).encode("utf-8", errors="surrogatepass")
        line, out = run_on_data(Path(folder), "train.jsonl", content)
        assert "train.jsonl" in line
        if b"\xed" not in content:  # undecodable bytes are named by byte offset, rows by line
            assert f"line {first_bad + 1}" in line, line
        assert not out.exists()


cells = st.text(alphabet=string.printable + "é", max_size=6)


@FUZZ
@given(
    rows=st.lists(st.tuples(cells, cells), max_size=5),
    extra=st.lists(cells, min_size=3, max_size=5),
    kind=st.sampled_from(["empty", "undecodable", "header_only", "too_many_fields", "nul_only"]),
)
def test_broken_csv_is_named_before_anything_loads(rows, extra, kind):
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if kind in ("header_only", "too_many_fields", "undecodable"):
        writer.writerow(["prompt", "completion"])
    if kind in ("too_many_fields", "undecodable"):
        writer.writerows(rows)
    if kind == "too_many_fields":
        writer.writerow(extra)
    content = buffer.getvalue().encode()
    content = {"undecodable": content + b"\xff\xfe,bad\n", "nul_only": b"\x00\x00"}.get(kind, content)
    with tempfile.TemporaryDirectory() as folder:
        line, out = run_on_data(Path(folder), "train.csv", content)
        assert "train.csv" in line
        if kind == "too_many_fields":
            assert "line" in line and "more fields" in line
        assert not out.exists()


def test_semantic_data_errors_after_loading_remove_the_new_run_directory(tmp_path):
    """A row that parses but lacks a column is found by prepare_data (after the model loads): still exit 2,
    the row named, and no half-made run directory."""
    rows = [GOOD_ROW] * 4 + [{"prompt": "no completion here"}]
    line, out = run_on_data(tmp_path, "train.jsonl", "\n".join(json.dumps(r) for r in rows).encode(), progress=True)
    assert "train.jsonl: line 5" in line and "completion" in line
    assert not out.exists()


def test_a_run_directory_that_cannot_be_created_exits_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(tomli_w.dumps(BASE))
    line = check_outcome(invoke("run", str(recipe), "--output-dir", str(blocker / "run")), allow_ok=False)
    assert "cannot create run directory" in line and "a-file" in line
