"""The plugin contract, second round (issue 30): what outside authors had to guess, closed in the contract.

Each test registers a throwaway plugin through the testing kit (``plugins=``) or runs a real subprocess.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from ptrain import (
    TRAITS,
    DataError,
    DataFormat,
    DataSource,
    RecipeError,
    ReportRow,
    TrainingSetup,
    hookimpl,
    text_field,
)
from ptrain.testing import registry, tiny_recipe

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ 1. typed options for sources and formats


@dataclass
class TableOptions:
    table: str
    limit: int = 0

    def validate(self) -> None:
        if self.limit < 0:
            raise RecipeError("must be >= 0", key="limit")


@dataclass
class PrefixOptions:
    prefix: str = ""


def table_plugin(reads: list | None = None, local: bool = True) -> types.ModuleType:
    """A source ``rows:NAME`` whose table and row limit come from ``[data.rows]``, and a format with a prefix option."""
    plugin = types.ModuleType("rows_plugin")

    def read(request):
        if reads is not None:
            reads.append(request.settings)
        rows = [{"q": f"{request.settings.table} {i}", "a": str(i)} for i in range(40)]
        if request.settings.table == "broken":
            rows[6] = {"q": "no answer"}
        rows = rows[: request.settings.limit or None]
        return [(f"{request.location}: row {i}", row) for i, row in enumerate(rows, 1)]

    def normalize(row, where, options):
        return {"instruction": options.prefix + text_field(row, "q", where), "output": text_field(row, "a", where)}

    plugin.data_sources = hookimpl(lambda: [DataSource("rows", lambda loc: loc.startswith("rows:"), read, local=local, options=TableOptions)])
    plugin.data_formats = hookimpl(lambda: [DataFormat("qa", ("q", "a"), normalize, options=PrefixOptions)])
    return plugin


def rows_recipe(**data):
    return tiny_recipe(["sft", "rows"], data={"source": "rows:db", "format": "qa", "eval_size": 5, **data})


def test_source_and_format_options_are_typed_validated_and_reach_read(ptrain_validate):
    reads: list = []
    recipe = ptrain_validate(rows_recipe(rows={"table": "people", "limit": 12}, qa={"prefix": "Q: "}), plugins={"rows": table_plugin(reads)})
    assert reads and reads[0] == TableOptions("people", 12)
    assert recipe.data_options("rows") == TableOptions("people", 12) and recipe.data_options("qa").prefix == "Q: "
    rows = recipe.data_plan.train.rows
    assert len(rows) == 12 and rows[0]["instruction"] == "Q: people 0"
    assert "[data.rows]" in recipe.to_toml() and 'table = "people"' in recipe.to_toml()  # the resolved recipe keeps them
    plugins = {"rows": table_plugin()}
    for table, message in [
        ({"rows": {"tabel": "x"}}, r"data\.rows\.tabel: unknown key; did you mean 'table'"),
        ({"rows": {"table": 3}}, r"data\.rows\.table: expected a string, got 3"),
        ({"rows": {"table": "x", "limit": -1}}, r"data\.rows\.limit: must be >= 0"),
        ({}, r"data\.rows\.table: required key is missing"),  # read from this source: its required option is asked for
        ({"rows": {"table": "x"}, "qa": {"prefix": 1}}, r"data\.qa\.prefix: expected a string"),
    ]:
        with pytest.raises(RecipeError, match=message):
            ptrain_validate(rows_recipe(**table), plugins=plugins)


def test_local_source_rows_are_checked_at_validate_and_remote_ones_are_not(ptrain_validate):
    with pytest.raises(DataError, match=r"rows:db: row 7: format 'qa' needs column\(s\) \['a'\]"):
        ptrain_validate(rows_recipe(rows={"table": "broken"}), plugins={"rows": table_plugin()})
    reads: list = []
    ptrain_validate(rows_recipe(rows={"table": "broken"}), plugins={"rows": table_plugin(reads, local=False)})
    assert reads == []  # local=False: nothing read before the run


# ------------------------------------------------------------------ 2. a scheme only an unlisted plugin reads


def test_source_read_only_by_an_unlisted_plugin_names_it(ptrain_validate):
    recipe = tiny_recipe(["sft"], data={"source": "rows:db", "format": "alpaca"})
    with pytest.raises(RecipeError, match=r"data\.source: 'rows:db' is read by a data source of plugin 'rows', which is installed "
                                          r"and not in methods; add 'rows' to methods"):
        ptrain_validate(recipe, plugins={"rows": table_plugin()})


# ------------------------------------------------------------------ 4. method traits


def freeze_plugin() -> types.ModuleType:
    plugin = types.ModuleType("freeze")

    def validate_recipe(recipe):
        adapters = recipe.methods_with("adds_adapters")
        if adapters:
            raise RecipeError(f"freeze does not combine with {adapters[0]}, which adds adapters", key="methods")

    plugin.validate_recipe = hookimpl(validate_recipe)
    plugin.method_traits = hookimpl(lambda: ["freezes_layers"])
    plugin.training_setup = hookimpl(lambda run: None)
    return plugin


def test_traits_are_declared_and_queryable_at_validate(ptrain_validate):
    plugins = {"freeze": freeze_plugin()}
    recipe = ptrain_validate(tiny_recipe(["sft", "freeze"]), plugins=plugins)
    assert recipe.traits("sft") == {"owns_trainer"} and recipe.traits("freeze") == {"freezes_layers"}
    assert recipe.methods_with("freezes_layers") == ["freeze"]
    for adapter in ("lora", "ia3", "prompt_tuning"):
        with pytest.raises(RecipeError, match=rf"methods: freeze does not combine with {adapter}, which adds adapters"):
            ptrain_validate(tiny_recipe(["sft", adapter, "freeze"]), plugins=plugins)
    recipe = ptrain_validate(tiny_recipe(["sft", "lora", "qlora"]))
    assert recipe.methods_with("adds_adapters") == ["lora"] and recipe.methods_with("quantizes_base") == ["qlora"]
    assert {"adds_adapters", "quantizes_base", "needs_pairs", "owns_trainer"} <= set(TRAITS)


def test_bad_trait_and_a_needs_pairs_method_on_plain_rows_are_recipe_errors(ptrain_validate):
    bad = types.ModuleType("bad")
    bad.method_traits = hookimpl(lambda: ["Adds Adapters"])
    with pytest.raises(RecipeError, match=r"methods: plugin 'bad' declares trait 'Adds Adapters'"):
        ptrain_validate(tiny_recipe(["sft", "bad"]), plugins={"bad": bad})
    pairs = types.ModuleType("pairs")
    pairs.method_traits = hookimpl(lambda: ["needs_pairs"])
    pairs.build_trainer = hookimpl(lambda run: None)
    with pytest.raises(RecipeError, match=r"data\.source: pairs trains on preference pairs \(trait needs_pairs\)"):
        ptrain_validate(tiny_recipe(["pairs"]), plugins={"pairs": pairs})
    ptrain_validate(tiny_recipe(["pairs"], data={"source": "builtin:preferences"}), plugins={"pairs": pairs})


def test_no_builtin_asks_for_another_method_by_name():
    """``"lora" in recipe.methods`` and lists of method names go stale: built-ins ask for traits."""
    found = []
    for path in sorted((ROOT / "plugins").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
                target = ast.unparse(node.comparators[0])
                if target.endswith(".methods"):
                    found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


# ------------------------------------------------------------------ 5. the results table: declared rows, labels


def test_results_table_shows_declared_rows_by_label_only():
    from ptrain._report import stage_rows

    metrics = {
        "base": {"task_metric": 0.1, "shout_raw": 9},
        "final": {"task_metric": 0.5, "shout_raw": 7, "eval_rows": 20, "task_metric_by_task": {"reverse": 0.4, "uppercase": 0.6}},
        "report": [{"label": "task metric", "key": "final.task_metric", "base": True},
                   {"label": "task metric by task", "key": "final.task_metric_by_task", "each": True}],
    }
    assert stage_rows(metrics) == [("task metric", "0.1", "0.5"), ("task metric by task: reverse", "", "0.4"),
                                   ("task metric by task: uppercase", "", "0.6")]


# ------------------------------------------------------------------ 6. tokens counted by the core


def test_batch_tokens_for_every_batch_layout():
    torch = pytest.importorskip("torch")
    from ptrain._training import batch_tokens

    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert batch_tokens({"input_ids": torch.zeros(2, 3), "attention_mask": mask, "completion_mask": mask}) == 3
    assert batch_tokens({"prompt_input_ids": torch.zeros(2, 3), "prompt_attention_mask": mask, "chosen_attention_mask": mask}) == 6
    assert batch_tokens({"input_ids": torch.zeros(1, 7), "position_ids": torch.zeros(1, 7)}) == 7  # padding-free packing
    assert batch_tokens({"prompt_ids": torch.zeros(2, 3), "prompt_mask": mask, "completion_mask": mask}) == 6  # GRPO
    assert batch_tokens([1, 2]) == 0


def test_training_arguments_documents_every_field_it_sets():
    from ptrain._training import training_arguments

    source = Path(importlib.util.find_spec("ptrain._training").origin).read_text(encoding="utf-8")
    body = source[source.index("def training_arguments"):source.index("def batch_tokens")]
    fields = set(re.findall(r'^        "(\w+)": ', body, flags=re.M))
    assert fields and "include_num_input_tokens_seen" not in fields
    doc = training_arguments.__doc__
    assert [f for f in sorted(fields) if f"``{f}``" not in doc] == []


@pytest.mark.slow
def test_tokens_per_s_for_a_trainer_whose_batches_have_no_input_ids(ptrain_run, caplog):
    run = ptrain_run(tiny_recipe(["orpo"], data={"source": "builtin:preferences"}, train={"max_steps": 2, "batch_size": 4},
                                 eval={"max_samples": 2}, output={"save_model": False}))
    assert run.metrics["train"]["tokens_seen"] > 0 and run.metrics["train"]["tokens_per_s"] > 0
    assert "number of tokens" not in caplog.text and "number of tokens" not in (run.dir / "run.log").read_text()


# ------------------------------------------------------------------ 7 and 10. held-out answers reused per prompt; scalars


def probe_plugin(seen: dict) -> types.ModuleType:
    """An evaluator that scores three held-out prompts only, and a callback that logs scalars every step."""
    plugin = types.ModuleType("probe")

    def evaluate(run, stage):
        held = run.held_out
        few = run.generate(held.prompts[:3], held.max_new_tokens)
        seen.setdefault("few", {})[stage] = (few.texts, few.reused)
        run.log_scalars({"probe/evaluated": 1.0 if stage == "final" else 0.0})
        return {"probe_rows": len(held.rows)}

    def export(run):
        seen["held_out"] = run.held_out
        return None

    def training_setup(run):
        from transformers import TrainerCallback

        class Probe(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                run.log_scalars({"probe/step_squared": float(state.global_step**2)})

            def on_log(self, args, state, control, logs=None, **kwargs):
                seen.setdefault("logs", []).append(dict(logs or {}))

        return TrainingSetup(callbacks=[Probe()])

    plugin.evaluate = hookimpl(evaluate)
    plugin.export = hookimpl(export)
    plugin.training_setup = hookimpl(training_setup)
    plugin.report_rows = hookimpl(lambda: [ReportRow("probe rows", "final.probe_rows")])
    return plugin


@pytest.mark.slow
def test_held_out_answers_are_reused_per_prompt_and_scalars_reach_the_history(ptrain_run):
    seen: dict = {}
    run = ptrain_run(tiny_recipe(["sft", "probe"], train={"max_steps": 3, "logging_steps": 1}, output={"save_model": False}),
                     plugins={"probe": probe_plugin(seen)})
    held = seen["held_out"]
    assert len(held.rows) == len(held.prompts) == 10 and held.max_new_tokens == 8
    # the probe asked first for three prompts; the core then generated only the other seven
    assert run.metrics["generation"] == {"base": {"generated": 10, "reused": 3}, "final": {"generated": 10, "reused": 3}}
    assert seen["few"]["final"] == (held.answers["final"][:3], 0)
    samples = [json.loads(line) for line in (run.dir / "samples.jsonl").read_text().splitlines()]
    assert [s["generation"] for s in samples] == held.answers["final"]
    history = json.loads((run.dir / "log_history.json").read_text())
    assert [e["probe/step_squared"] for e in history if "probe/step_squared" in e] == [1.0, 4.0, 9.0]
    assert [e["probe/evaluated"] for e in history if "probe/evaluated" in e] == [0.0, 1.0]
    assert any("probe/step_squared" in logs for logs in seen["logs"])  # what trackers' callbacks receive


# ------------------------------------------------------------------ 8. the evaluator kind and a scaffold per kind


def test_an_evaluate_only_plugin_is_an_evaluator():
    probe = types.ModuleType("probe")
    probe.evaluate = hookimpl(lambda run, stage: None)
    probe.report_rows = hookimpl(lambda: [])
    tweak = types.ModuleType("tweak")
    tweak.evaluate = hookimpl(lambda run, stage: None)
    tweak.export = hookimpl(lambda run: None)
    methods = registry({"probe": probe, "tweak": tweak}).load(["probe", "tweak"])
    assert (methods.kind("probe"), methods.kind("tweak")) == ("evaluator", "modifier")


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="building the scaffolds needs setuptools")
def test_new_plugin_scaffolds_of_every_kind_pass_their_own_tests_after_pip_install_e(ptrain_cli, tmp_path):
    kinds = ("trainer", "modifier", "data", "reward", "evaluator")
    for kind in kinds:
        result = ptrain_cli("new-plugin", f"my_{kind}", "--kind", kind, "--dir", str(tmp_path / kind))
        assert result.exit_code == 0, result.output
    prefix = tmp_path / "prefix"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--prefix", str(prefix),
         *(arg for kind in kinds for arg in ("-e", str(tmp_path / kind)))],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr
    site = next(prefix.glob("lib/python*/site-packages"))
    code = f"import site, sys, pytest; site.addsitedir({str(site)!r}); sys.exit(pytest.main(sys.argv[1:]))"
    tests = subprocess.run(
        [sys.executable, "-c", code, "-q", "-rs", "-m", "not slow", "-p", "no:cacheprovider", *(str(tmp_path / k / "tests") for k in kinds)],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert tests.returncode == 0 and "skipped" not in tests.stdout, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert re.search(r"\b17 passed\b", tests.stdout), tests.stdout[-1000:]  # each kind's own tests, installed-and-listed too


# ------------------------------------------------------------------ 9. data_fields per format, documented


def test_contributing_tables_the_fields_of_every_core_format():
    from ptrain._formats import CORE_FORMATS

    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    section = text[text.index("`recipe.data_fields` per core format"):]
    table = dict(re.findall(r"^ *\| `(\w+)` \| ([^|]+) \|", section, flags=re.M))
    assert {f.name: set(re.findall(r"`(\w+)`", table.get(f.name, "").split("(")[0])) for f in CORE_FORMATS} == {
        f.name: set(f.fields) for f in CORE_FORMATS
    }


# ------------------------------------------------------------------ 11. the kit takes any object


def test_kit_plugins_accept_unhashable_objects(ptrain_validate):
    plugin = types.SimpleNamespace(evaluate=hookimpl(lambda run, stage: None), method_traits=hookimpl(lambda: ["evaluates"]))
    recipe = ptrain_validate(tiny_recipe(["sft", "probe"]), plugins={"probe": plugin})
    assert recipe.traits("probe") == {"evaluates"}


def test_a_directory_named_ptrain_does_not_shadow_the_package_under_pytest(tmp_path):
    """A checkout named ``ptrain`` (no ``__init__.py``), tested from its parent: the kit restores the real package."""
    tests = tmp_path / "ptrain" / "tests"
    tests.mkdir(parents=True)
    (tests / "test_probe.py").write_text(
        "from ptrain import RecipeError, hookimpl\n\n\ndef test_imports(ptrain_validate, ptrain_recipe):\n"
        "    assert RecipeError and hookimpl and ptrain_validate(ptrain_recipe).methods == ['sft']\n"
    )
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "ptrain/tests"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-2000:]
