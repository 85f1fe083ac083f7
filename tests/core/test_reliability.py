"""Nothing lost, nothing hung, one line: the run directory, secrets, failures and validation of what would fail later."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptrain._cli import cli

TINY = """
name = "{name}"
methods = ["sft"]
[model]
name = "builtin:tiny-llama"
[data]
source = "builtin:tasks"
tasks = ["reverse"]
num_examples = 40
eval_size = 4
[train]
max_steps = {steps}
batch_size = 2
max_length = 48
save_steps = 2
[eval]
max_samples = 2
max_new_tokens = 2
[output]
plots = false
"""


def recipe(folder: Path, name: str = "tiny", steps: int = 2, extra: str = "", file: str | None = None) -> Path:
    path = folder / (file or f"{name}.toml")
    path.write_text(TINY.format(name=name, steps=steps) + extra)
    return path


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def one_line(result) -> str:
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("INFO", "WARNING"))]
    assert len(lines) <= 2, result.stderr  # the message, and for exit 1 the path of the full log
    return lines[0]


def user_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "thesis.tex").write_text("years of work")
    return folder


# ---------------------------------------------------------------- --overwrite never loses what is not a run


def test_overwrite_refuses_directories_that_are_not_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = recipe(tmp_path)
    mine = user_files(tmp_path / "mine")
    for target in (str(mine), ".", "..", str(Path.home()), "/"):
        result = invoke("run", str(path), "--output-dir", target, "--overwrite")
        assert result.exit_code == 2, (target, result.output)
        message = one_line(result)
        assert "--overwrite will not replace" in message or "cannot be a run directory" in message, message
    for target in (".", ".."):  # without --overwrite too, and no lock file is left beside them
        assert "cannot be a run directory" in one_line(invoke("run", str(path), "--output-dir", target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "tiny.toml"]
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert path.is_file()


def test_a_name_from_the_file_gets_the_same_checks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "other").mkdir(parents=True)
    (tmp_path / "runs" / "other" / "metrics.json").write_text("{}")
    weird = tmp_path / "..toml"
    weird.write_text(TINY.replace('name = "{name}"\n', "").format(steps=1))
    result = invoke("run", str(weird), "--overwrite")
    assert result.exit_code == 2
    assert "'.' (from the file name) cannot name a run directory" in one_line(result) and 'set name = "..."' in one_line(result)
    assert (tmp_path / "runs" / "other" / "metrics.json").is_file()


@pytest.mark.slow
def test_overwrite_keeps_the_old_run_until_the_new_one_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = recipe(tmp_path, steps=1)
    out = tmp_path / "runs" / "tiny"
    assert invoke("run", str(path)).exit_code == 0
    before = sorted(p.name for p in out.iterdir())
    metrics = (out / "metrics.json").read_text()
    # a new run that fails before it starts (its model cannot be loaded) leaves the old one as it was
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    result = invoke("run", str(path), "--overwrite", "--set", f"model.name='{tmp_path / 'broken'}'")
    assert result.exit_code in (1, 2), result.output
    assert sorted(p.name for p in out.iterdir()) == before and (out / "metrics.json").read_text() == metrics
    assert not list(out.parent.glob(".tiny.previous-*"))
    # one that starts replaces it, and nothing of the old run is left beside it
    assert invoke("run", str(path), "--overwrite").exit_code == 0
    assert (out / "metrics.json").read_text() != metrics and not list(out.parent.glob(".tiny.*"))


def _start(path: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ptrain", "run", str(path), "--output-dir", str(out), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_runs_never_share_a_directory_and_a_dead_holder_frees_it(tmp_path):
    path = recipe(tmp_path, steps=400)
    out = tmp_path / "run"
    first = _start(path, out)
    lock = tmp_path / ".run.lock"
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text()):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    for extra in ((), ("--overwrite",), ("--resume",)):
        result = invoke("run", str(path), "--output-dir", str(out), *extra)
        assert result.exit_code == 2, result.output
        assert f"run directory {out} is in use by ptrain pid {first.pid}" in one_line(result)
    first.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel drops its lock
    first.communicate(timeout=60)
    result = invoke("run", str(path), "--output-dir", str(out), "--overwrite", "--set", "train.max_steps=1")
    assert result.exit_code == 0, result.output
    assert not lock.exists()


# ---------------------------------------------------------------- resume, partial artifacts, compare


@pytest.mark.slow
def test_resuming_a_finished_run_changes_nothing_and_leftovers_go(tmp_path):
    path = recipe(tmp_path, steps=2)
    out = tmp_path / "run"
    assert invoke("run", str(path), "--output-dir", str(out)).exit_code == 0
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = invoke("run", str(path), "--output-dir", str(out), "--resume")
    assert result.exit_code == 0 and "nothing to resume" in result.output and "finished run" in result.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot

    # an interrupted run: its export left a half-written directory; --resume finishes it and cleans up
    (out / "metrics.json").unlink()
    (out / ".model.partial-abc").mkdir()
    (out / ".model.partial-abc" / "model.safetensors").write_bytes(b"half")
    listed = invoke("compare", str(out), "-o", str(tmp_path / "cmp"))
    assert listed.exit_code == 0 and "(unfinished)" in (tmp_path / "cmp" / "compare.md").read_text()
    result = invoke("run", str(path), "--output-dir", str(out), "--resume")
    assert result.exit_code == 0, result.output
    assert not list(out.glob(".*.partial-*")) and json.loads((out / "metrics.json").read_text())["artifacts"]


def test_a_truncated_checkpoint_is_passed_over(tmp_path):
    import torch
    from safetensors.torch import save_file

    from ptrain._lifecycle import _latest_checkpoint

    for step in (2, 4):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        save_file({"w": torch.zeros(64, 64)}, str(folder / "model.safetensors"))
    weights = tmp_path / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a full disk, a copy cut short
    assert _latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


def test_compare_names_an_unreadable_run(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.json").write_text("[1, 2]")
    result = invoke("compare", str(tmp_path / "a"))
    assert result.exit_code == 2 and f"{tmp_path / 'a' / 'metrics.json'}: not a JSON object" in one_line(result)


# ---------------------------------------------------------------- secrets, and a resolved recipe that reproduces


@pytest.mark.slow
def test_the_resolved_recipe_validates_again_and_keeps_no_secret(tmp_path):
    from ptrain._recipe import load_recipe

    path = recipe(tmp_path, steps=1)
    out = tmp_path / "run"
    token = "hf_" + "Zq9" * 10
    result = invoke("run", str(path), "--output-dir", str(out), "--set", "eval.max_new_tokens=3",
                    "--set", "model.tokenizer='builtin:tiny-llama'", "--set", f"description='token {token}'")
    assert result.exit_code == 0, result.output
    resolved = (out / "recipe.resolved.toml").read_text()
    assert "max_new_tokens = 3" in resolved and 'tokenizer = "builtin:tiny-llama"' in resolved and token not in resolved
    again = load_recipe(out / "recipe.resolved.toml")
    original = load_recipe(path, ["eval.max_new_tokens=3", "model.tokenizer='builtin:tiny-llama'"])
    assert again.to_table() | {"description": ""} == original.to_table() | {"description": ""}
    assert again.to_table()["description"] == "token ***"


# ---------------------------------------------------------------- one line, never a traceback


FAILING_PLUGIN = """
import errno
from ptrain import hookimpl

@hookimpl
def {hook}(run{args}):
    {body}
"""


def _with_plugin(tmp_path: Path, hook: str, body: str, args: str = "") -> dict:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "failing.py").write_text(FAILING_PLUGIN.format(hook=hook, body=body, args=args))
    (site / "failing-0.1.dist-info").mkdir(exist_ok=True)
    (site / "failing-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: failing\nVersion: 0.1\n")
    (site / "failing-0.1.dist-info" / "entry_points.txt").write_text("[ptrain]\nfailing = failing\n")
    return {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("hook", "args", "body", "expected", "code"),
    [
        ("export", "", "raise OSError(errno.ENOSPC, 'No space left on device', 'run/model/model.safetensors')",
         "run failed: no space left on device while writing run/model/model.safetensors; free space or set output.dir", 1),
        ("export", "", "raise OSError(errno.EROFS, 'Read-only file system', 'run/metrics.json')",
         "run failed: cannot write run/metrics.json: Read-only file system; make it writable", 1),
        ("evaluate", ", stage", "raise KeyboardInterrupt", "interrupted", 130),
    ],
)
def test_failures_are_one_line_and_the_log_keeps_the_traceback(tmp_path, hook, args, body, expected, code):
    env = _with_plugin(tmp_path, hook, body, args)
    path = recipe(tmp_path, steps=1, extra="")
    path.write_text(path.read_text().replace('methods = ["sft"]', 'methods = ["sft", "failing"]'))
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "ptrain", "run", str(path), "--output-dir", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == code, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    # ptrain's own log records (INFO/WARNING, their wrapped continuation lines indented) are not the message
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith((" ", "INFO", "WARNING"))]
    assert lines[0].startswith(expected), lines
    if code == 1:
        assert lines[1] == f"full log: {out}/run.log" and "Traceback" in (out / "run.log").read_text()
    else:  # stopped during the base evaluation: the run had not started, nothing is left
        assert not out.exists()


# ---------------------------------------------------------------- every number has a range, every name a set


BAD_VALUES = [
    ("eval.batch_size", 0), ("eval.batch_size", -3), ("eval.max_new_tokens", 0), ("eval.max_new_tokens", -1),
    ("eval.max_new_tokens", 10**9), ("eval.max_samples", -1), ("train.epochs", 0), ("train.epochs", -2),
    ("train.learning_rate", 1e308), ("train.learning_rate", 0), ("data.max_train", 0), ("data.num_examples", 10**12),
    ("data.eval_size", 10**12), ("train.save_total_limit", 0), ("train.weight_decay", -1), ("train.max_length", 0),
]


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_numbers_out_of_range_fail_at_validate(tmp_path, key, value):
    path = recipe(tmp_path, extra="")
    overrides = ["--set", f"{key}={value}"] + (["--set", "train.max_steps=-1"] if key == "train.epochs" else [])
    for command in ("validate", "run"):
        result = invoke(command, str(path), *overrides, *(("--output-dir", str(tmp_path / "x")) if command == "run" else ()))
        assert result.exit_code == 2, result.output
        assert key in one_line(result) and "must be" in one_line(result)
    assert not (tmp_path / "x").exists()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.sampled_from(["eval.max_new_tokens", "eval.batch_size", "train.batch_size", "data.eval_size", "train.max_length"]),
       st.integers(min_value=-(2**40), max_value=2**40))
def test_every_integer_is_accepted_in_range_or_named(key, value):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = recipe(Path(folder))
        result = invoke("validate", str(path), "--set", f"{key}={value}")
    assert result.exit_code in (0, 2) and "Traceback" not in result.output
    if result.exit_code == 2:
        assert key in one_line(result)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr_scheduler='cosin'", "train.lr_scheduler: unknown learning-rate scheduler 'cosin'; did you mean 'cosine'?"),
        ("train.optim='adamw_torh'", "train.optim: unknown optimizer 'adamw_torh'; did you mean 'adamw_torch'?"),
        ("train.report_to=['tensorbord']", "train.report_to[0]: unknown logger 'tensorbord'; did you mean 'tensorboard'?"),
        ("data.tasks=[]", "data.tasks: is empty"),
        ("methods=[]", "methods: is empty: a run needs at least one method"),
    ],
)
def test_names_have_known_sets(tmp_path, override, message):
    result = invoke("validate", str(recipe(tmp_path)), "--set", override)
    assert result.exit_code == 2 and message in one_line(result), result.output


def test_a_huge_row_is_refused_by_line_before_tokenization(tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": "hi", "completion": "ok"}] * 3 + [{"prompt": "x" * 300_000, "completion": "y"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = recipe(tmp_path)
    result = invoke("validate", str(path), "--set", f"data.source='{data}'", "--set", "data.eval_size=1")
    assert result.exit_code == 2
    assert f"{data}: line 4: the row holds 300,001 characters of text, above data.max_row_chars = 200,000" in one_line(result)


def test_echoed_input_is_clipped(tmp_path):
    path = recipe(tmp_path)
    result = invoke("validate", str(path), "--set", f"train.{'k' * 100_000}=1")
    line = one_line(result)  # the value clips, never the reason
    assert result.exit_code == 2 and len(line) < 800 and "(99907 characters)" in line and "unknown key" in line, line
