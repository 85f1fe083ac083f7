"""The plugin-author kit (ptrain.testing) and the ``ptrain new-plugin`` scaffold."""

import importlib.util
import json
import os
import subprocess
import sys
import types
from dataclasses import dataclass

import pytest

from ptrain import hookimpl
from ptrain._errors import RecipeError
from ptrain.testing import tiny_recipe


def test_kit_fixtures_are_loaded_as_a_pytest_plugin(request):
    for name in ("ptrain_run", "ptrain_validate", "ptrain_cli", "ptrain_recipe"):
        assert request.getfixturevalue(name) is not None


@dataclass
class ProbeSection:
    level: int = 1


def test_in_process_plugin_is_scoped_to_the_call(ptrain_validate):
    probe = types.ModuleType("probe", "probe: a throwaway method")
    probe.recipe_sections = hookimpl(lambda: {"probe": ProbeSection})
    recipe = ptrain_validate(tiny_recipe(["sft", "probe"]), plugins={"probe": probe})
    assert recipe.methods == ["sft", "probe"] and recipe.plugin_sections["probe"] == "probe"
    with pytest.raises(RecipeError, match="unknown method 'probe'"):
        ptrain_validate(tiny_recipe(["sft", "probe"]))


def test_overrides_apply_to_recipe_dicts(ptrain_validate):
    recipe = ptrain_validate(tiny_recipe(["sft"]), "train.max_steps=7", "sft.packing=true")
    assert recipe.train.max_steps == 7 and recipe.sections["sft"].packing is True


@pytest.mark.slow
def test_contributing_example_runs(ptrain_run):
    probe = types.ModuleType("probe")
    probe.evaluate = hookimpl(lambda run, stage: {"rows_seen": len(run.eval_dataset)})
    run = ptrain_run(tiny_recipe(["sft", "probe"], train={"max_steps": 2}, output={"save_model": False}), plugins={"probe": probe})
    assert run.metrics["final"]["rows_seen"] == 20
    assert run.metrics["train"]["steps"] == 2


def test_new_plugin_rejects_bad_names_and_existing_dirs(ptrain_cli, tmp_path):
    assert ptrain_cli("new-plugin", "My-Method", "--dir", str(tmp_path / "x")).exit_code == 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    result = ptrain_cli("new-plugin", "ok", "--dir", str(tmp_path / "full"))
    assert result.exit_code == 2 and "already exists" in result.output


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="building the scaffold needs setuptools")
def test_new_plugin_scaffold_installs_lists_and_validates(ptrain_cli, tmp_path):
    package = tmp_path / "ptrain-my-method"
    result = ptrain_cli("new-plugin", "my_method", "--dir", str(package))
    assert result.exit_code == 0, result.output
    # its own tests pass with the kit (registered in-process, before installation)
    env = {**os.environ, "PYTHONPATH": str(package)}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", str(package / "tests")],
                           capture_output=True, text=True, env=env, cwd=package)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    # installed (into a private target), it is listed under its distribution and validates
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                              "--target", str(site), str(package)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    listed = subprocess.run([sys.executable, "-m", "ptrain", "list", "--json"], capture_output=True, text=True, env=env)
    entry = next(m for m in json.loads(listed.stdout) if m["name"] == "my_method")
    assert (entry["distribution"], entry["version"], entry["status"]) == ("ptrain-my-method", "0.1.0", "ok")
    assert entry["description"] == "The my_method method: say in one line what it does (``ptrain list`` shows this line)."
    valid = subprocess.run([sys.executable, "-m", "ptrain", "validate", "recipes/my_method_tiny.toml"],
                           capture_output=True, text=True, env=env, cwd=package)
    assert valid.returncode == 0, valid.stderr
