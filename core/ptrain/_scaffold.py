"""``ptrain new-plugin NAME [--kind trainer|modifier|data|reward|evaluator]``: the skeleton of a plugin package.

A distribution ``ptrain-NAME`` with a module ``ptrain_NAME`` registered under the ``ptrain``
entry-point group, the hooks of its kind (a recipe section and a report row where the kind has
them), a recipe and tests using ``ptrain.testing``; it imports only names in ``ptrain.__all__``.
The generated package installs, lists, validates and runs as it is, and its own tests pass before
and after ``pip install -e`` (CONTRIBUTING.md walks through the same shapes).
"""

from __future__ import annotations

import re
from pathlib import Path

from ptrain._errors import UsageError

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*\Z")

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "ptrain-{dist}"
version = "0.1.0"
description = "The {name} method for ptrain."
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["ptrain>=0.2"]

[project.optional-dependencies]
test = ["ptrain[testing]"]

[project.entry-points.ptrain]
{name} = "{module}"

[tool.setuptools]
packages = ["{module}"]
'''

SECTION = '''

@dataclass
class {cls}Section:
    """``[{name}]``: this method's recipe keys (field = key, type hint = type, default = default)."""

    weight: float = 1.0
    """An example option; replace with yours."""

    def validate(self) -> None:
        if self.weight <= 0:
            raise RecipeError("must be > 0", key="weight")


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {{"{name}": {cls}Section}}


@hookimpl
def report_rows() -> list[ReportRow]:
    """Rows for the end-of-run table and `ptrain compare`: dotted paths into metrics.json."""
    return [ReportRow("{name}: eval rows", "final.{name}_eval_rows")]


@hookimpl
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    """Metrics merged into metrics.json under the stage ("base" or "final")."""
    return {{"{name}_eval_rows": len(run.eval_dataset)}}
'''

MODIFIER = '''"""The {name} method: say in one line what it does (``ptrain list`` shows this line).

A modifier: it shapes the trainer another method builds (``methods = ["sft", "{name}"]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptrain import RecipeError, ReportRow, Run, TrainingSetup, hookimpl
''' + SECTION + '''

@hookimpl
def training_setup(run: Run) -> TrainingSetup:
    """Training arguments and callbacks for the trainer the owner builds, before it is built."""
    from transformers import TrainerCallback  # heavy imports inside the hook

    section: {cls}Section = run.section("{name}")

    class Log{cls}(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # run.log_scalars: joins the trainer's next log entry (log_history.json, report curves, trackers)
            run.log_scalars({{"{name}/weight": section.weight}})

    return TrainingSetup(arguments={{}}, callbacks=[Log{cls}()])
'''

TRAINER = '''"""The {name} method: say in one line what it does (``ptrain list`` shows this line).

A trainer owner: it builds the run's trainer (``methods = ["{name}"]``, or with modifiers such as ``lora``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptrain import RecipeError, ReportRow, Run, hookimpl, training_arguments
''' + SECTION + '''

@hookimpl
def build_trainer(run: Run) -> Any:
    """The trainer; the core calls train() (progress, checkpoints, --resume)."""
    from trl import SFTConfig, SFTTrainer  # heavy imports inside the hook

    args = training_arguments(run, SFTConfig, max_length=run.recipe.train.max_length, dataset_num_proc=None)
    columns = ["prompt", "completion"]
    return SFTTrainer(model=run.model, args=args, train_dataset=run.train_dataset.select_columns(columns),
                      processing_class=run.tokenizer)
'''

INSTALLED = '''

def test_installed_and_listed(ptrain_cli):
    """After `pip install -e .`: listed under its distribution, with its kind (skipped before installing)."""
    if "{name}" not in {{ep.name for ep in importlib.metadata.entry_points(group="ptrain")}}:
        pytest.skip("not installed: pip install -e .")
    found = next(p for p in json.loads(ptrain_cli("list", "--json").output) if p["name"] == "{name}")
    assert (found["distribution"], found["status"], found["kind"]) == ("ptrain-{dist}", "ok", "{kind}")
'''

DATA = '''"""The {name} data plugin: say in one line what it reads (``ptrain list`` shows this line).

A data plugin: a source (``data.source = "{name}:FILE.jsonl"``) with its own options in the
recipe's ``[data.{name}]`` table, and a format (``data.format = "{name}"``) of question/answer rows.
``local=True``: ``ptrain validate`` reads every row and reports a bad one by file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ptrain import DataError, DataFormat, DataRequest, DataSource, RecipeError, hookimpl, text_field

SCHEME = "{name}:"


@dataclass
class {cls}Options:
    """``[data.{name}]``: the source's own settings (field = key, type hint = type, default = default)."""

    limit: int = 0
    """Read at most this many rows (0: every row)."""

    def validate(self) -> None:
        if self.limit < 0:
            raise RecipeError("must be >= 0 (0 reads every row)", key="limit")


def read(request: DataRequest) -> list[tuple[str, dict[str, Any]]]:
    """``[(where, row)]``: each raw row with the place errors name."""
    path = request.location.removeprefix(SCHEME)
    options: {cls}Options = request.settings
    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if options.limit and len(rows) >= options.limit:
                    break
                if not line.strip():
                    continue
                try:
                    rows.append((f"{{path}}: line {{number}}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise DataError(f"{{path}}: line {{number}}: not valid JSON ({{err.msg}}); fix or remove the line") from None
    except OSError as err:
        raise RecipeError(f"cannot read {{path!r}} ({{err.strerror}}); check the path", key=request.key) from None
    return rows


def normalize(row: dict[str, Any], where: str) -> dict[str, Any]:
    """One row as ptrain's normalised fields (ptrain.ROW_FIELDS): the question asked, the answer to learn."""
    return {{"instruction": text_field(row, "question", where), "output": text_field(row, "answer", where)}}


@hookimpl
def data_sources() -> list[DataSource]:
    return [DataSource("{name}", lambda location: location.startswith(SCHEME), read, local=True, options={cls}Options,
                       description="a .jsonl file of question/answer rows ({name}:FILE)")]


@hookimpl
def data_formats() -> list[DataFormat]:
    return [DataFormat("{name}", ("question", "answer"), normalize, description="question and answer")]
'''

DATA_RECIPE = '''# sft on {name} rows with the tiny built-in model: ptrain run recipes/{name}_tiny.toml
name = "{name}_tiny"
methods = {methods}

[model]
name = "builtin:tiny-llama"

[data]
source = "{name}:data/{name}_sample.jsonl"
format = "{name}"
eval_size = 10

[data.{name}]
limit = 0

[train]
max_steps = 20
batch_size = 16
learning_rate = 1e-3
max_length = 128
'''

DATA_TESTS = '''"""Tests of the {name} data plugin with ptrain's testing kit (fixtures ptrain_validate, ptrain_run, ptrain_cli)."""

import importlib.metadata
import json

import pytest
from ptrain import DataError, RecipeError
from ptrain.testing import tiny_recipe

# Registered in-process, so the tests also pass before `pip install -e .`.
PLUGINS = {{"{name}": "{module}"}}
METHODS = {methods}


def rows_file(path, count=40, bad_line=None):
    lines = [json.dumps({{"question": f"Reverse: w{{i}}", "answer": f"{{i}}w"}}) for i in range(count)]
    if bad_line:
        lines[bad_line - 1] = json.dumps({{"question": "no answer"}})
    path.write_text("\\n".join(lines) + "\\n", encoding="utf-8")
    return path


def recipe(path, **data):
    return tiny_recipe(METHODS, data={{"source": f"{name}:{{path}}", "format": "{name}", "eval_size": 5, **data}})


def test_rows_read_and_options_defaults(ptrain_validate, tmp_path):
    checked = ptrain_validate(recipe(rows_file(tmp_path / "rows.jsonl")), plugins=PLUGINS)
    assert checked.data_format == "{name}" and checked.data_options("{name}").limit == 0


def test_bad_option_names_the_key(ptrain_validate, tmp_path):
    with pytest.raises(RecipeError, match=r"data\\.{name}\\.limit: must be >= 0"):
        ptrain_validate(recipe(rows_file(tmp_path / "rows.jsonl"), {name}={{"limit": -1}}), plugins=PLUGINS)


def test_bad_row_names_the_line(ptrain_validate, tmp_path):
    with pytest.raises(DataError, match=r"rows\\.jsonl: line 3: .*'answer'"):
        ptrain_validate(recipe(rows_file(tmp_path / "rows.jsonl", bad_line=3)), plugins=PLUGINS)


@pytest.mark.slow
def test_sft_trains_on_its_rows(ptrain_run, tmp_path):
    run = ptrain_run(recipe(rows_file(tmp_path / "rows.jsonl"), {name}={{"limit": 30}}), "train.max_steps=2", plugins=PLUGINS)
    assert run.metrics["data"]["train_rows"] == 25 and run.metrics["train"]["steps"] == 2
''' + INSTALLED

REWARD = '''"""The {name} reward: say in one line what it scores (``ptrain list`` shows this line).

A reward plugin: a named function that online RL methods weigh by name
(``methods = ["grpo", "{name}"]``, ``[grpo] rewards = {{ {name} = 1.0 }}``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ptrain import RewardFunction, answer_text, hookimpl


def {name}(prompts: Sequence[str], completions: Sequence[str], output: Sequence[str] | None = None, **columns: object) -> list[float | None]:
    """1.0 when a completion's answer starts with the reference answer, else 0.0; None (abstain) without one."""
    references = list(output) if output is not None else [None] * len(completions)
    return [None if not ref else float(answer_text(text).startswith(ref.strip())) for text, ref in zip(completions, references, strict=True)]


@hookimpl
def reward_functions() -> list[RewardFunction]:
    return [RewardFunction("{name}", {name}, "1 when the answer starts with the reference")]
'''

REWARD_RECIPE = '''# grpo scored by {name} on the tiny built-in model: ptrain run recipes/{name}_tiny.toml
name = "{name}_tiny"
methods = {methods}

[model]
name = "builtin:tiny-llama"

[data]
source = "builtin:tasks"
tasks = ["reverse", "uppercase"]
num_examples = 200
eval_size = 8

[grpo]
rewards = {{ {name} = 1.0 }}
max_completion_length = 8

[train]
max_steps = 4
batch_size = 8
learning_rate = 1e-3
max_length = 128

[eval]
batch_size = 8
max_samples = 8
'''

REWARD_TESTS = '''"""Tests of the {name} reward with ptrain's testing kit (fixtures ptrain_validate, ptrain_run, ptrain_cli)."""

import importlib.metadata
import json

import pytest
from ptrain import RecipeError
from ptrain.testing import tiny_recipe
from {module} import {name}

# Registered in-process, so the tests also pass before `pip install -e .`.
PLUGINS = {{"{name}": "{module}"}}
METHODS = {methods}


def grpo_recipe(methods=METHODS, **sections):
    base = {{"train": {{"batch_size": 8}}, "eval": {{"batch_size": 8, "max_samples": 8}}, "grpo": {{"rewards": {{"{name}": 1.0}}}}}}
    return tiny_recipe(list(methods), **{{**base, **sections}})


def test_scores():
    assert {name}(["", "", ""], ["olleh", "<answer>x</answer>", "y"], output=["olleh", "olleh", ""]) == [1.0, 0.0, None]


def test_named_from_a_recipe(ptrain_validate):
    recipe = ptrain_validate(grpo_recipe(), plugins=PLUGINS)
    assert recipe.reward_function("{name}", key="grpo.rewards.{name}").function is {name}


def test_needs_the_plugin_in_methods(ptrain_validate):
    with pytest.raises(RecipeError, match=r"grpo\\.rewards\\.{name}: unknown reward"):
        ptrain_validate(grpo_recipe(methods=["grpo"]), plugins=PLUGINS)


@pytest.mark.slow
def test_grpo_trains_with_it(ptrain_run):
    run = ptrain_run(grpo_recipe(grpo={{"rewards": {{"{name}": 1.0}}, "max_completion_length": 8}}, train={{"max_steps": 2}}),
                     plugins=PLUGINS)
    assert 0.0 <= run.metrics["final"]["rewards"]["{name}"] <= 1.0
''' + INSTALLED

EVALUATOR = '''"""The {name} evaluator: say in one line what it measures (``ptrain list`` shows this line).

An evaluator: it measures the model and changes nothing (``methods = ["sft", "{name}"]``, or with
no trainer to measure a model as it is). It scores the core's held-out prompts (``run.held_out``)
through ``run.generate``, which generates each answer once per stage: the core reuses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptrain import RecipeError, ReportRow, Run, hookimpl


@dataclass
class {cls}Section:
    """``[{name}]``: this evaluator's recipe keys (field = key, type hint = type, default = default)."""

    case_sensitive: bool = False
    min_rows: int = 1
    """Fewer held-out rows than this: measure nothing."""

    def validate(self) -> None:
        if self.min_rows < 1:
            raise RecipeError("must be >= 1", key="min_rows")


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {{"{name}": {cls}Section}}


@hookimpl
def method_traits() -> list[str]:
    return ["evaluates"]


@hookimpl
def report_rows() -> list[ReportRow]:
    """Rows for the end-of-run table and `ptrain compare`, with their labels."""
    return [ReportRow("{name}: answer contains the reference", "final.{name}_contains", base=True, chart="quality")]


@hookimpl
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    """The share of held-out answers that contain their reference answer."""
    section: {cls}Section = run.section("{name}")
    held = run.held_out
    if len(held.rows) < section.min_rows:
        return None
    answers = run.generate(held.prompts, held.max_new_tokens).texts

    def fold(text: str) -> str:
        return text if section.case_sensitive else text.lower()

    hits = [fold(row["output"]) in fold(answer) for row, answer in zip(held.rows, answers, strict=True)]
    return {{"{name}_contains": round(sum(hits) / len(hits), 4)}}
'''

EVALUATOR_TESTS = '''"""Tests of the {name} evaluator with ptrain's testing kit (fixtures ptrain_validate, ptrain_run, ptrain_cli)."""

import importlib.metadata
import json

import pytest
from ptrain import RecipeError
from ptrain.testing import registry, tiny_recipe

# Registered in-process, so the tests also pass before `pip install -e .`.
PLUGINS = {{"{name}": "{module}"}}
METHODS = {methods}


def test_section_defaults_and_kind(ptrain_validate):
    recipe = ptrain_validate(tiny_recipe(METHODS), plugins=PLUGINS)
    assert recipe.section("{name}").case_sensitive is False and recipe.methods_with("evaluates") == ["{name}"]
    assert registry(PLUGINS).load(["{name}"]).kind("{name}") == "evaluator"


def test_bad_value_names_the_key(ptrain_validate):
    with pytest.raises(RecipeError, match=r"{name}\\.min_rows: must be >= 1"):
        ptrain_validate(tiny_recipe(METHODS, {name}={{"min_rows": 0}}), plugins=PLUGINS)


@pytest.mark.slow
def test_measures_and_the_core_reuses_its_answers(ptrain_run):
    run = ptrain_run(tiny_recipe(METHODS, train={{"max_steps": 2}}), plugins=PLUGINS)
    assert 0.0 <= run.metrics["final"]["{name}_contains"] <= 1.0
    assert run.metrics["generation"]["final"] == {{"generated": 10, "reused": 10}}
''' + INSTALLED

RECIPE = '''# {name} on the tiny built-in model: ptrain run recipes/{name}_tiny.toml
name = "{name}_tiny"
methods = {methods}

[model]
name = "builtin:tiny-llama"

[data]
source = "builtin:tasks"
tasks = ["reverse", "uppercase"]
num_examples = 500
eval_size = 20

[{name}]
weight = 1.0

[train]
max_steps = 20
batch_size = 16
learning_rate = 1e-3
max_length = 128
'''

TESTS = '''"""Tests of the {name} method with ptrain's testing kit (fixtures ptrain_validate, ptrain_run, ptrain_cli)."""

import importlib.metadata
import json

import pytest
from ptrain import RecipeError
from ptrain.testing import tiny_recipe

# Registered in-process, so the tests also pass before `pip install -e .`.
PLUGINS = {{"{name}": "{module}"}}
METHODS = {methods}


def test_section_defaults(ptrain_validate):
    recipe = ptrain_validate(tiny_recipe(METHODS), plugins=PLUGINS)
    assert recipe.section("{name}").weight == 1.0


def test_bad_value_names_the_key(ptrain_validate):
    with pytest.raises(RecipeError, match=r"{name}\\.weight: must be > 0"):
        ptrain_validate(tiny_recipe(METHODS, {name}={{"weight": 0}}), plugins=PLUGINS)


@pytest.mark.slow
def test_metric_is_reported(ptrain_run):
    run = ptrain_run(tiny_recipe(METHODS, train={{"max_steps": 2}}), plugins=PLUGINS)
    assert run.metrics["final"]["{name}_eval_rows"] == 20
    assert run.metrics["train"]["steps"] == 2
''' + INSTALLED

README = '''# ptrain-{dist}

The `{name}` plugin for ptrain, as its own distribution (kind: {kind}).

```
pip install -e ".[test]"
ptrain list                          # shows {name} from ptrain-{dist}
ptrain validate recipes/{name}_tiny.toml
ptrain run recipes/{name}_tiny.toml
python -m pytest -q tests
```

Edit `{module}/__init__.py`: the hooks of its kind. ptrain's CONTRIBUTING.md has the lifecycle,
the result rule of every hook and a tutorial for each kind; use only the names in `ptrain.__all__`.
'''


MAX_NAME = 64
"""Characters of a method name: it becomes ``ptrain-NAME/``, ``ptrain_NAME/``, ``tests/test_NAME.py``, a recipe section."""
KINDS = ("trainer", "modifier", "data", "reward", "evaluator")


def create(name: str, directory: Path | None = None, kind: str = "modifier") -> Path:
    """Write the package for plugin ``name`` of ``kind`` into ``directory`` (default ``./ptrain-NAME``)."""
    import keyword

    from ptrain._registry import PluginRegistry

    if len(name) > MAX_NAME:
        raise UsageError(f"method name {name[:40]!r}… is {len(name):,} characters long; use at most {MAX_NAME} (it names a "
                         "module, a recipe section and files)")
    if not NAME_PATTERN.match(name):
        raise UsageError(f"method name {name!r} must be lower-case letters, digits and '_', starting with a letter (e.g. 'dpo', 'my_method')")
    if not name.isidentifier() or keyword.iskeyword(name) or keyword.iskeyword(name.capitalize()):
        raise UsageError(f"method name {name!r} is a Python keyword, and the generated code names things after it; "
                         f"choose another, e.g. '{name}_method'")
    if kind not in KINDS:
        raise UsageError(f"--kind {kind!r}: use one of {', '.join(KINDS)}")
    installed = PluginRegistry.discover().names()
    if name in installed or name == "core":
        raise UsageError(f"a plugin named {name!r} is already installed (ptrain list); choose another name")
    dist = name.replace("_", "-")
    module = f"ptrain_{name}"
    target = Path(directory or f"ptrain-{dist}")
    try:
        taken = target.exists() and any(target.iterdir())
    except OSError as err:  # a --dir name too long for the file system, a file where a folder should be
        raise UsageError(f"--dir {str(target)[:120]!r}: cannot use it ({err.strerror or err}); choose another --dir") from None
    if taken:
        raise UsageError(f"{target} already exists and is not empty; choose another --dir")
    methods = {"trainer": [name], "reward": ["grpo", name]}.get(kind, ["sft", name])
    values = {"name": name, "dist": dist, "module": module, "kind": kind, "methods": repr(methods).replace("'", '"'),
              "cls": "".join(p.capitalize() for p in name.split("_"))}
    code, recipe, tests = {
        "trainer": (TRAINER, RECIPE, TESTS),
        "modifier": (MODIFIER, RECIPE, TESTS),
        "data": (DATA, DATA_RECIPE, DATA_TESTS),
        "reward": (REWARD, REWARD_RECIPE, REWARD_TESTS),
        "evaluator": (EVALUATOR, RECIPE.replace("weight = 1.0", "case_sensitive = false"), EVALUATOR_TESTS),
    }[kind]
    files = {
        "pyproject.toml": PYPROJECT,
        f"{module}/__init__.py": code,
        f"recipes/{name}_tiny.toml": recipe,
        f"tests/test_{name}.py": tests,
        "README.md": README,
    }
    try:
        for relative, template in files.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(template.format(**values), encoding="utf-8")
    except OSError as err:  # a --dir too long for the file system, not writable, a file in the way
        raise UsageError(f"--dir {str(target)[:120]!r}: cannot write the package there ({err.strerror or err}); "
                         "choose another --dir") from None
    if kind == "data":
        import json

        rows = [{"question": f"Reverse: {word}", "answer": word[::-1]} for word in ("alpha", "bravo", "delta", "kilo", "oscar", "sierra")]
        (target / "data").mkdir(exist_ok=True)
        (target / "data" / f"{name}_sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 10), encoding="utf-8")
    return target
