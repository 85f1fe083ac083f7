"""The plugin contract: one public API with a boundary, the hooks third parties need, and a core without cycles."""

import ast
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import ptrain
from ptrain import DataError, DataFormat, DataSource, RecipeError, TrainingSetup, hookimpl
from ptrain.testing import tiny_recipe

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "core" / "ptrain"


def _plugin_files():
    for folder in ("plugins", "examples"):
        for path in (REPO / folder).rglob("*.py"):
            if "tests" not in path.parts:
                yield path


def test_plugins_and_examples_use_only_the_public_api():
    """Every ``ptrain`` name a built-in or an example imports is in ``ptrain.__all__``: the built-ins are true examples."""
    public = set(ptrain.__all__)
    outside = []
    for path in _plugin_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ptrain":
                if node.module != "ptrain":
                    outside.append(f"{path.relative_to(REPO)}: from {node.module} import …")
                outside += [f"{path.relative_to(REPO)}: {a.name}" for a in node.names if a.name not in public]
            elif isinstance(node, ast.Import):
                outside += [f"{path.relative_to(REPO)}: import {a.name}" for a in node.names if a.name.startswith("ptrain.")]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ptrain":
                if node.attr not in public:
                    outside.append(f"{path.relative_to(REPO)}: ptrain.{node.attr}")
    assert outside == []
    assert all(getattr(ptrain, name, None) is not None for name in public)


def test_internal_modules_look_internal():
    public_modules = {"__init__.py", "__main__.py", "hookspecs.py", "testing.py"}
    assert {p.name for p in CORE.glob("*.py") if not p.name.startswith("_")} | {"__init__.py", "__main__.py"} == public_modules


def _imports(path: Path) -> set[str]:
    """ptrain modules ``path`` imports, module level and inside functions, leaving out ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ptrain"):
            if node.module == "ptrain":
                found |= {f"ptrain.{a.name}" for a in node.names if (CORE / f"{a.name}.py").is_file()} or {"ptrain"}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ptrain.")}
    return found


def test_no_import_cycle_among_core_modules():
    graph = {f"ptrain.{p.stem}": _imports(p) - {f"ptrain.{p.stem}"} for p in CORE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    graph = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(module, path):
        if state.get(module) == 1:
            pytest.fail("import cycle: " + " -> ".join([*path, module]))
        if state.get(module) == 2:
            return
        state[module] = 1
        for dep in sorted(graph[module]):
            visit(dep, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        visit(module, [])
    assert all("ptrain" not in graph[m] for m in graph), "an internal module imports the package face"


def _cli(*args, cwd=REPO):
    code = (
        "import sys, json; from ptrain._cli import cli\n"
        "try:\n    cli(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules)\n"
        "print('HEAVY=' + json.dumps(heavy), file=sys.stderr)\nsys.exit(code)\n"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("methods = ['sft', 'qlora']\n[model]\nname = 'builtin:tiny-llama'\n[data]\nsource = 'builtin:tasks'\n",
         "methods: qlora only quantizes the base; the adapters that train come from 'lora'"),
        ("methods = ['dpo']\n[model]\nname = 'builtin:tiny-llama'\n[data]\nsource = 'builtin:tasks'\n",
         "data.source: dpo trains on preference pairs, and 'builtin:tasks' gives 'alpaca' rows"),
        ("methods = ['lora']\n[model]\nname = 'builtin:tiny-llama'\n[data]\nsource = 'builtin:tasks'\n",
         "methods: lora adds adapters for a trainer to train, and no method in methods builds one"),
    ],
)
def test_whole_recipe_checks_exit_2_in_one_line_without_torch(tmp_path, recipe, message):
    (tmp_path / "r.toml").write_text(recipe)
    result = _cli("validate", str(tmp_path / "r.toml"))
    lines = [line for line in result.stderr.splitlines() if not line.startswith("HEAVY=")]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and message in lines[0] and str(tmp_path / "r.toml") in lines[0], lines
    assert "HEAVY=[]" in result.stderr


def _module(name, **hooks):
    module = types.ModuleType(name, f"{name}: a test plugin")
    for hook, fn in hooks.items():
        setattr(module, hook, fn)
    return module


def _probe_callback(seen):
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(state.global_step)

    return Probe()


@pytest.mark.slow
def test_a_modifier_shapes_the_owners_trainer_before_it_is_built(ptrain_run):
    seen = []
    shaper = _module(
        "shaper",
        training_setup=hookimpl(lambda run: TrainingSetup(arguments={"weight_decay": 0.25}, callbacks=[_probe_callback(seen)])),
    )
    run = ptrain_run(tiny_recipe(["sft", "shaper"], train={"max_steps": 3}, output={"save_model": False}), plugins={"shaper": shaper})
    assert run.trainer.args.weight_decay == 0.25  # the recipe said 0.0: the modifier's argument reached sft's trainer
    assert seen == [1, 2, 3]


def test_contributed_arguments_conflict_or_unknown_are_recipe_errors(tmp_path):
    from ptrain._run import Run
    from ptrain._training import training_arguments
    from ptrain.testing import validate

    one = _module("one", training_setup=hookimpl(lambda run: TrainingSetup(arguments={"weight_decay": 0.1})))
    two = _module("two", training_setup=hookimpl(lambda run: TrainingSetup(arguments={"weight_decay": 0.2})))
    odd = _module("odd", training_setup=hookimpl(lambda run: TrainingSetup(arguments={"no_such_argument": 1})))
    for plugins, message in (
        ({"one": one, "two": two}, r"methods 'one' and 'two' set training argument 'weight_decay' to 0\.1 and 0\.2"),
        ({"odd": odd}, r"method 'odd' sets training argument 'no_such_argument', which TrainingArguments .* does not have"),
    ):
        recipe = validate(tiny_recipe(["sft", *plugins]), plugins=plugins)
        run = Run(recipe=recipe, dir=tmp_path)
        run._core.setup = recipe.plugins.call_each("training_setup", run=run)
        with pytest.raises(RecipeError, match=message):
            training_arguments(run)


def test_plugin_data_sources_and_formats(ptrain_validate, tmp_path):
    rows = {"good": [{"q": f"say {i}", "a": str(i)} for i in range(12)], "bad": [{"q": "x", "a": "1"}, {"q": "y", "a": 2.5j}]}

    def read(request):
        return [(f"{request.location}: item {i}", row) for i, row in enumerate(rows[request.location.removeprefix("memory:")], 1)]

    def normalize(row, where):
        if not isinstance(row["a"], str):
            raise DataError(f"{where}: 'a' must be text")
        return {"instruction": row["q"], "output": row["a"]}

    qa = _module(
        "qa",
        data_sources=hookimpl(lambda: [DataSource("memory", lambda name: name.startswith("memory:"), read, local=True)]),
        data_formats=hookimpl(lambda: [DataFormat("qa", ("q", "a"), normalize)]),
    )
    recipe = ptrain_validate(tiny_recipe(["sft", "qa"], data={"source": "memory:good", "eval_size": 2}), plugins={"qa": qa})
    assert recipe.data_format == "qa" and recipe.data_fields == {"instruction", "output"}  # told from the columns ("auto")
    assert [r["output"] for r in recipe.data_plan.train.rows][:3] == ["0", "1", "2"]
    with pytest.raises(DataError, match=r"memory:bad: item 2: 'a' must be text"):
        ptrain_validate(tiny_recipe(["sft", "qa"], data={"source": "memory:bad"}), plugins={"qa": qa})
    with pytest.raises(RecipeError, match=r"data\.format: unknown data format 'qaa'; did you mean 'qa'\?"):
        ptrain_validate(tiny_recipe(["sft", "qa"], data={"source": "memory:good", "format": "qaa"}), plugins={"qa": qa})
    # a method's format replaces the core's of the same name; two methods' formats of one name clash
    twice = _module("twice", data_formats=hookimpl(lambda: [DataFormat("alpaca", ("q", "a"), normalize)]))
    again = _module("again", data_formats=hookimpl(lambda: [DataFormat("alpaca", ("q", "a"), normalize)]))
    both = tiny_recipe(["sft", "qa", "twice"], data={"source": "memory:good", "format": "alpaca", "eval_size": 2})
    recipe = ptrain_validate(both, plugins={"twice": twice, "qa": qa})
    assert recipe.data_format == "alpaca" and recipe.data_plan.train.rows[0]["output"] == "0"
    with pytest.raises(RecipeError, match=r"data format 'alpaca' is registered by both 'twice' and 'again'"):
        ptrain_validate(tiny_recipe(["sft", "twice", "again"]), plugins={"twice": twice, "again": again})


def test_list_shows_each_plugins_kind():
    result = _cli("list", "--json")
    assert result.returncode == 0 and "HEAVY=[]" in result.stderr
    kinds = {p["name"]: p["kind"] for p in json.loads(result.stdout)}
    assert kinds["sft"] == "trainer" and kinds["lora"] == "modifier" and kinds["qlora"] == "modifier"
    assert kinds.get("dpo", "trainer") == "trainer" and kinds.get("sharegpt", "data") == "data"
    assert kinds.get("neftune", "modifier") == "modifier"


@pytest.mark.slow
def test_a_third_party_methods_rows_reach_the_table_and_compare(tmp_path):
    """No change to the core: a method installed as a distribution declares its rows, and its metrics appear in both reports."""
    from click.testing import CliRunner

    from ptrain._cli import cli

    site = tmp_path / "site"
    site.mkdir()
    (site / "shout_plugin.py").write_text(
        "from dataclasses import dataclass\nfrom ptrain import ReportRow, hookimpl\n"
        "@dataclass\nclass Shout:\n    volume: int = 3\n"
        "@hookimpl\ndef recipe_sections():\n    return {'shout': Shout}\n"
        "@hookimpl\ndef evaluate(run, stage):\n    return {'shout_score': 0.25 if stage == 'base' else 0.75, 'shout_debug': 3}\n"
        "@hookimpl\ndef report_rows():\n    return [ReportRow('shout score', 'final.shout_score', base=True, chart='quality'),"
        " ReportRow('shout volume', 'shout.volume')]\n"
        "@hookimpl\ndef export(run):\n    run.metrics['shout'] = {'volume': run.section('shout').volume}\n"
    )
    (site / "shout_plugin-0.1.dist-info").mkdir()
    (site / "shout_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-plugin\nVersion: 0.1\n")
    (site / "shout_plugin-0.1.dist-info" / "entry_points.txt").write_text("[ptrain]\nshout = shout_plugin\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        "methods = ['sft', 'shout']\n[model]\nname = 'builtin:tiny-llama'\n[data]\nsource = 'builtin:tasks'\nnum_examples = 40\n"
        "eval_size = 4\n[train]\nmax_steps = 1\nbatch_size = 2\nmax_length = 64\n[eval]\nmax_samples = 2\nmax_new_tokens = 2\n"
        "[output]\nsave_model = false\nplots = false\n[shout]\nvolume = 7\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    outputs = []
    for name in ("a", "b"):
        done = subprocess.run([sys.executable, "-m", "ptrain", "run", str(recipe), "--output-dir", str(tmp_path / name)],
                              capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout)
    # the end-of-run tables show declared rows by their labels; an undeclared metric stays in metrics.json only
    assert "shout score" in outputs[0] and "shout volume" in outputs[0]
    assert "shout_score" not in outputs[0] and "shout_debug" not in outputs[0] and "eval_rows" not in outputs[0]
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["final"]["shout_debug"] == 3
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| shout score (base → final) | 0.25 → 0.75 | 0.25 → 0.75 |" in markdown
    assert "| shout volume | 7 | 7 |" in markdown


def test_load_pretrained_names_the_key_and_reads_run_directories(tmp_path):
    from ptrain import UsageError, load_pretrained, model_location
    from ptrain._models import builtin_checkpoint

    with pytest.raises(UsageError, match=r"distill\.teacher = 'nobody/no-such-model': cannot load"):
        load_pretrained("nobody/no-such-model", key="distill.teacher")
    source = builtin_checkpoint("tiny-gpt2", 0)
    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)
    for file in source.iterdir():
        (run_dir / "model" / file.name).write_bytes(file.read_bytes())
    assert model_location(str(run_dir)) == str(run_dir / "model")
    model, tokenizer = load_pretrained(str(run_dir))
    assert type(model).__name__ == "GPT2LMHeadModel" and tokenizer.pad_token is not None


def test_run_generate_shares_answers_within_a_stage_and_never_across_training(tmp_path, monkeypatch):
    """The core's evaluation and a method scoring the same prompts share one generation pass; answers
    are generated again after training or for another model object."""
    from ptrain import _evaluation
    from ptrain._run import Run
    from ptrain.testing import validate

    calls = []

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size):
        calls.append((model, tuple(prompts), max_new_tokens, batch_size))
        return _evaluation.Generations(texts=[f"{model}:{p}" for p in prompts], new_tokens=1, seconds=1.0)

    monkeypatch.setattr(_evaluation, "generate", fake_generate)
    run = Run(recipe=validate(tiny_recipe(["sft"], eval={"batch_size": 4})), dir=tmp_path)
    run.model = "base"
    first = run.generate(["a", "b"], 8)
    again = run.generate(["a", "b"], 8)
    assert (again.texts, again.reused, first.reused, len(calls)) == (first.texts, 2, 0, 1)
    some = run.generate(["b", "c"], 8)  # per prompt: only the new one is generated
    assert (some.texts, some.reused, calls[-1][1]) == (["base:b", "base:c"], 1, ("c",))
    calls.pop()
    assert run.generate(["a", "b"], 16).texts == ["base:a", "base:b"] and len(calls) == 2  # another length
    run._core.trained_steps += 1  # what the core does when training ends
    run.generate(["a", "b"], 16)
    assert len(calls) == 3
    run.model = "other"
    assert run.generate(["a", "b"], 16).texts == ["other:a", "other:b"] and len(calls) == 4
    assert calls[0][3] == 4  # batches of [eval] batch_size
