"""Third-party methods as installed distributions: listing, and isolation of a broken one."""

import json
import os
import subprocess
import sys

import pytest

RECIPE = """
methods = ["sft"]
[model]
name = "builtin:tiny-llama"
[data]
source = "builtin:tasks"
tasks = ["uppercase"]
num_examples = 16
eval_size = 2
[train]
max_steps = 1
batch_size = 2
max_length = 64
[eval]
base = false
max_samples = 1
max_new_tokens = 2
[output]
save_model = false
plots = false
"""


@pytest.fixture
def broken_dist(tmp_path):
    """A distribution ``broken-pkg`` whose ``ptrain`` entry point raises on import, on PYTHONPATH."""
    site = tmp_path / "site"
    (site / "broken_pkg-0.1.dist-info").mkdir(parents=True)
    (site / "broken_pkg.py").write_text('raise RuntimeError("broken on purpose")\n')
    (site / "broken_pkg-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-pkg\nVersion: 0.1\n")
    (site / "broken_pkg-0.1.dist-info" / "entry_points.txt").write_text("[ptrain]\nbroken = broken_pkg\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}

    def ptrain(*args):
        return subprocess.run([sys.executable, "-m", "ptrain", *args], capture_output=True, text=True, env=env, cwd=tmp_path)

    return ptrain


def test_broken_distribution_is_listed_as_failed(broken_dist):
    result = broken_dist("list", "--json")
    assert result.returncode == 0, result.stderr
    listed = {m["name"]: m for m in json.loads(result.stdout)}
    broken = listed["broken"]
    assert (broken["distribution"], broken["version"], broken["status"]) == ("broken-pkg", "0.1", "failed")
    assert "RuntimeError: broken on purpose" in broken["error"]
    assert listed["sft"]["status"] == "ok"


def test_broken_distribution_does_not_stop_validate(broken_dist, tmp_path):
    (tmp_path / "r.toml").write_text(RECIPE)
    result = broken_dist("validate", "r.toml")
    assert result.returncode == 0, result.stderr
    (tmp_path / "b.toml").write_text(RECIPE.replace('["sft"]', '["sft", "broken"]'))
    result = broken_dist("validate", "b.toml")
    assert result.returncode == 2
    assert "plugin 'broken' (distribution broken-pkg 0.1) failed to import: RuntimeError: broken on purpose" in result.stderr


@pytest.mark.slow
def test_broken_distribution_does_not_stop_run(broken_dist, tmp_path):
    (tmp_path / "r.toml").write_text(RECIPE)
    result = broken_dist("run", "r.toml", "--output-dir", "out")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["train"]["steps"] == 1
