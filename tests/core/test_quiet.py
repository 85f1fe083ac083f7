"""No library noise, by construction: what any library logs or warns during a command goes to run.log
(or nowhere), never to the terminal; the lock's identity is recorded with every run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

AVX512_BF16 = "avx512_bf16" in (Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else "")
REPO = Path(__file__).resolve().parents[2]


def stderr_of(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stderr


def test_loading_the_run_libraries_prints_nothing():
    # what a run imports, after the core's routing (every command that loads a model starts it first)
    noise = stderr_of("from ptrain._quiet import quiet_libraries; quiet_libraries(); import transformers, bitsandbytes")
    assert noise.strip() == "", noise
    if AVX512_BF16:  # the control: on such CPUs bitsandbytes logs its kernel line without the routing
        assert "Failed to load CPU gemm_4bit_forward" in stderr_of("import bitsandbytes")


def test_a_library_with_its_own_terminal_handler_is_routed_and_given_back():
    # transformers' shape: a named logger with a stderr handler of its own and propagate off
    code = """
import logging, sys, warnings
lib = logging.getLogger("acme.lib"); lib.addHandler(logging.StreamHandler()); lib.propagate = False
from ptrain._quiet import route_library_output, stop_routing
sink = logging.StreamHandler(sys.stdout); router = route_library_output(); router.sinks.append(sink)
lib.warning("routed-one"); logging.getLogger("zz.unknown").error("routed-two"); warnings.warn("routed-three")
logging.getLogger("ptrain").warning("ptrain-own")  # ptrain's lines are ptrain's handlers' business
print("count", router.warnings)
stop_routing(); lib.warning("given-back")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "routed-" not in out.stderr and "given-back" in out.stderr
    assert all(f"routed-{n}" in out.stdout for n in ("one", "two", "three")) and "ptrain-own" not in out.stdout
    assert "count 3" in out.stdout


NOISY_PLUGIN = '''
import logging, warnings
from ptrain import hookimpl

# a library unknown to ptrain that brings its own terminal handler at import, as transformers does
chatty = logging.getLogger("acme_telemetry")
chatty.addHandler(logging.StreamHandler())
chatty.propagate = False


@hookimpl
def evaluate(run, stage):
    chatty.warning("ACME-NOISE telemetry is offline (%s)", stage)
    logging.getLogger("brand_new_lib.core").warning("BRAND-NEW-NOISE")
    warnings.warn("ACME-DEPRECATED", UserWarning)
    return {}
'''

TINY = """
name = "quiet"
methods = [{methods}]
[model]
name = "builtin:tiny-llama"
[data]
source = "builtin:tasks"
tasks = ["reverse"]
num_examples = 16
eval_size = 2
[train]
max_steps = 1
batch_size = 2
max_length = 32
[eval]
max_samples = 2
max_new_tokens = 2
[output]
plots = false
report = false
"""


def _run(tmp_path: Path, name: str, methods: str, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "noisy.py").write_text(NOISY_PLUGIN)
    (site / "noisy-0.1.dist-info").mkdir(exist_ok=True)
    (site / "noisy-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: noisy\nVersion: 0.1\n")
    (site / "noisy-0.1.dist-info" / "entry_points.txt").write_text("[ptrain]\nnoisy = noisy\n")
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY.format(methods=methods))
    out = tmp_path / name
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "ptrain", "run", str(path), "--output-dir", str(out), *extra],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, out


@pytest.mark.slow
def test_an_unknown_library_warning_during_a_run_goes_to_run_log_not_the_terminal(tmp_path):
    quiet, _ = _run(tmp_path, "alone", '"sft"')
    noisy, out = _run(tmp_path, "noisy", '"sft", "noisy"')
    terminal = noisy.stdout + noisy.stderr
    for noise in ("ACME-NOISE", "BRAND-NEW-NOISE", "ACME-DEPRECATED"):
        assert noise not in terminal, terminal
    log = (out / "run.log").read_text()
    assert "acme_telemetry: ACME-NOISE telemetry is offline (base)" in log
    assert "brand_new_lib.core: BRAND-NEW-NOISE" in log and "ACME-DEPRECATED" in log

    def lines(done: subprocess.CompletedProcess) -> list[str]:
        return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]

    counted = [line for line in lines(noisy) if "library warning" in line]
    assert len(counted) == 1 and "run.log" in counted[0], counted
    # 2 evaluations x 3 warnings, at least (the libraries may add theirs), and nothing else added on the terminal
    assert int(counted[0].split()[0]) >= 6
    alone = [line for line in lines(quiet) if "library warning" not in line]
    assert len(lines(noisy)) - 1 == len(alone), (lines(noisy), alone)

    verbose, _ = _run(tmp_path, "verbose", '"sft", "noisy"', "--verbose")
    assert "ACME-NOISE" in verbose.stderr and "[brand_new_lib.core] WARNING: BRAND-NEW-NOISE" in verbose.stderr


@pytest.mark.slow
def test_env_json_records_the_lock_and_compare_names_different_libraries(tmp_path):
    from click.testing import CliRunner

    from ptrain._cli import cli

    _, first = _run(tmp_path, "first", '"sft"')
    env = json.loads((first / "env.json").read_text())
    assert env["lock"]["file"] == "requirements.lock" and len(env["lock"]["sha256"]) == 16
    assert isinstance(env["lock"]["matches"], bool)
    # a second run made with another transformers and another lock
    second = tmp_path / "second"
    second.mkdir()
    for name in ("metrics.json", "recipe.resolved.toml"):
        (second / name).write_text((first / name).read_text())
    env["versions"]["transformers"] = "9.9.9"
    env["lock"]["sha256"] = "0" * 16
    (second / "env.json").write_text(json.dumps(env))
    result = CliRunner().invoke(cli, ["compare", str(first), str(second), "-o", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "different libraries" in said and "transformers" in said and "9.9.9" in said
    written = (tmp_path / "cmp" / "compare.md").read_text()
    assert "different libraries" in written and "9.9.9" in written and "0000000000000000" in written


def test_the_lock_reads_pins_and_finds_differences(tmp_path):
    from ptrain._lock import differences, read_lock

    lock = tmp_path / "requirements.lock"
    lock.write_text("# comment\ntorch==2.13.0\nTransformers==5.23.0  # pinned\nselenium==4.51.0\n")
    pins = read_lock(lock)
    assert pins == {"torch": "2.13.0", "transformers": "5.23.0", "selenium": "4.51.0"}
    # the +cpu label is not part of a pin, an extra not installed is no difference
    assert differences(pins, {"torch": "2.13.0", "transformers": "5.25.0"}) == ["transformers 5.23.0 -> 5.25.0"]


def test_the_committed_lock_pins_every_direct_dependency():
    import tomllib

    from ptrain._lock import canonical, read_lock

    pins = read_lock(REPO / "requirements.lock")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    names = {canonical(d.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()) for d in wanted}
    names -= {"flash-attn", "llama-cpp-python"}  # compiled for the machine (CUDA; llama.cpp): not in a CPU lock
    assert not sorted(names - set(pins)), "refresh requirements.lock with the drift canary (CONTRIBUTING.md)"
