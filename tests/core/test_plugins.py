import json
import subprocess
import sys
import types

import pytest

from ptrain import hookimpl
from ptrain._errors import PluginLoadError, RecipeError
from ptrain._recipe import load_recipe_dict
from ptrain._registry import PluginRegistry

BASE = {"model": {"name": "builtin:tiny-llama"}, "data": {"source": "builtin:tasks"}}


def plugin(name, **hooks):
    module = types.ModuleType(name, f"{name}: a test method")
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def test_recipe_order_is_call_order():
    calls = []

    def make(tag):
        def load_model(run):
            calls.append(tag)
            loaded = yield
            return loaded

        return load_model

    a = types.ModuleType("a")
    a.load_model = hookimpl(wrapper=True)(make("a"))
    b = types.ModuleType("b")
    b.load_model = hookimpl(wrapper=True)(make("b"))
    registry = PluginRegistry.discover(extra={"a": a, "b": b})
    methods = registry.load(["a", "b"])
    # replace the core loader so no model is loaded
    methods.pm.unregister(name="core")
    methods.pm.register(plugin("fake", load_model=lambda run: "loaded"), name="fake")
    assert methods.hook.load_model(run=None) == "loaded"
    assert calls == ["a", "b"]
    calls.clear()
    methods = registry.load(["b", "a"])
    methods.pm.unregister(name="core")
    methods.pm.register(plugin("fake", load_model=lambda run: "loaded"), name="fake")
    methods.hook.load_model(run=None)
    assert calls == ["b", "a"]


def test_two_trainer_builders_rejected():
    registry = PluginRegistry.discover(extra={"other": plugin("other", build_trainer=lambda run: object())})
    with pytest.raises(RecipeError, match="methods 'sft' and 'other' both build the trainer"):
        load_recipe_dict({**BASE, "methods": ["sft", "other"]}, registry=registry)


def test_broken_plugin_is_reported_and_isolated(tmp_path, monkeypatch):
    (tmp_path / "broken_method.py").write_text('"""A method whose dependency is missing."""\nimport missing_dependency\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = PluginRegistry.discover(extra={"broken": "broken_method"})
    infos = {i.name: i for i in registry.inspect_all()}
    assert infos["sft"].status == "ok"
    assert infos["broken"].status == "failed"
    assert "missing_dependency" in infos["broken"].error
    # a recipe that does not use it is unaffected
    assert load_recipe_dict({**BASE, "methods": ["sft"]}, registry=registry).methods == ["sft"]


def test_import_error_names_method_and_distribution(monkeypatch):
    registry = PluginRegistry.discover()
    info = registry.info("sft")
    monkeypatch.setattr(info, "target", "ptrain_methods.does_not_exist")
    with pytest.raises(PluginLoadError, match=r"plugin 'sft' \(distribution ptrain .*\) failed to import: ModuleNotFoundError"):
        registry.load(["sft"])


def test_unknown_hook_name_is_an_error():
    registry = PluginRegistry.discover(extra={"typo": plugin("typo", load_modle=lambda run: None)})
    with pytest.raises(PluginLoadError, match="'typo' implements a hook ptrain does not define"):
        registry.load(["typo"])


def test_disabled_plugins(monkeypatch):
    monkeypatch.setenv("PTRAIN_DISABLE_PLUGINS", "sft, other")
    registry = PluginRegistry.discover()
    assert registry.info("sft").status == "disabled"
    with pytest.raises(PluginLoadError, match="disabled by PTRAIN_DISABLE_PLUGINS"):
        load_recipe_dict({**BASE, "methods": ["sft"]}, registry=registry)


def test_section_claimed_twice():
    from dataclasses import dataclass

    @dataclass
    class Section:
        x: int = 1

    registry = PluginRegistry.discover(
        extra={
            "one": plugin("one", recipe_sections=lambda: {"shared": Section}),
            "two": plugin("two", recipe_sections=lambda: {"shared": Section}),
        }
    )
    with pytest.raises(RecipeError, match=r"'one' and 'two' both claim recipe section \[shared\]"):
        load_recipe_dict({**BASE, "methods": ["one", "two"]}, registry=registry)


def _run_cli(*args, env=None):
    code = (
        "import sys, json; from ptrain._cli import cli\n"
        "try:\n    cli(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules)\n"
        "print('HEAVY=' + json.dumps(heavy), file=sys.stderr)\nsys.exit(code)\n"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)


def test_list_json_without_heavy_imports():
    result = _run_cli("list", "--json")
    assert result.returncode == 0, result.stderr
    assert 'HEAVY=[]' in result.stderr
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    sft = listed["sft"]
    assert sft["distribution"] == "ptrain" and sft["status"] == "ok"
    assert "build_trainer" in sft["hooks"]
    assert {"name", "distribution", "version", "hooks", "status"} <= set(sft)


def test_validate_without_heavy_imports():
    from conftest import RECIPES

    result = _run_cli("validate", str(RECIPES / "sft_tiny.toml"))
    assert result.returncode == 0, result.stderr
    assert 'HEAVY=[]' in result.stderr


def test_plugin_modules_import_lightly():
    code = (
        "import importlib.metadata, importlib, sys\n"
        "for ep in importlib.metadata.entry_points(group='ptrain'):\n"
        "    if ep.value.startswith('ptrain_methods'): importlib.import_module(ep.value)\n"
        "print(sorted(m for m in ('torch','transformers','peft','trl','bitsandbytes','torchao') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
