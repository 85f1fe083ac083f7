"""``ptrain new-plugin NAME [--kind trainer|modifier]``: the skeleton of a third-party method package.

A distribution ``ptrain-NAME`` with a module ``ptrain_NAME`` registered under the ``ptrain``
entry-point group, a recipe section, the hooks of its kind, a report row, a recipe and tests
using ``ptrain.testing``; it imports only names in ``ptrain.__all__``. The generated package
installs, lists, validates and runs as it is (CONTRIBUTING.md walks through the same shape).
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
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if logs is not None:
                logs["{name}_weight"] = section.weight

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
'''

README = '''# ptrain-{dist}

The `{name}` method for ptrain, as its own distribution ({kind}).

```
pip install -e ".[test]"
ptrain list                          # shows {name} from ptrain-{dist}
ptrain validate recipes/{name}_tiny.toml
ptrain run recipes/{name}_tiny.toml
python -m pytest -q tests
```

Edit `{module}/__init__.py`: the recipe section dataclass, then the hooks you need. ptrain's
CONTRIBUTING.md has the lifecycle, the result rule of every hook and three worked examples; use
only the names in `ptrain.__all__`.
'''


MAX_NAME = 64
"""Characters of a method name: it becomes ``ptrain-NAME/``, ``ptrain_NAME/``, ``tests/test_NAME.py``, a recipe section."""


def create(name: str, directory: Path | None = None, kind: str = "modifier") -> Path:
    """Write the package for method ``name`` into ``directory`` (default ``./ptrain-NAME``)."""
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
    if kind not in ("trainer", "modifier"):
        raise UsageError(f"--kind {kind!r}: use 'trainer' or 'modifier'")
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
    methods = [name] if kind == "trainer" else ["sft", name]
    values = {"name": name, "dist": dist, "module": module, "kind": kind, "methods": repr(methods).replace("'", '"'),
              "cls": "".join(p.capitalize() for p in name.split("_"))}
    files = {
        "pyproject.toml": PYPROJECT,
        f"{module}/__init__.py": TRAINER if kind == "trainer" else MODIFIER,
        f"recipes/{name}_tiny.toml": RECIPE,
        f"tests/test_{name}.py": TESTS,
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
    return target
