"""``ptrain new-plugin NAME``: the skeleton of a third-party method package.

The files follow ``examples/ptrain-dpo`` (see CONTRIBUTING.md): a distribution ``ptrain-NAME``
with a module ``ptrain_NAME`` registered under the ``ptrain`` entry-point group, a recipe
section, an ``evaluate`` hook, a commented ``build_trainer``, a recipe and tests using
``ptrain.testing``. The generated package installs, lists and validates as it is.
"""

from __future__ import annotations

import re
from pathlib import Path

from ptrain.errors import UsageError

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
dependencies = ["ptrain>=0.1"]

[project.optional-dependencies]
test = ["pytest>=8"]

[project.entry-points.ptrain]
{name} = "{module}"

[tool.setuptools]
packages = ["{module}"]
'''

MODULE = '''"""The {name} method: say in one line what it does (``ptrain list`` shows this line)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ptrain import RecipeError, Run, hookimpl


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
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    """Metrics merged into metrics.json under the stage ("base" or "final")."""
    section: {cls}Section = run.section("{name}")
    return {{"{name}_weight": section.weight, "{name}_eval_rows": len(run.eval_dataset)}}


# To train, own the trainer (at most one method of a recipe may):
#
# @hookimpl
# def build_trainer(run: Run) -> Any:
#     from ptrain.training import training_arguments    # heavy imports inside the hook
#     from trl import SFTConfig, SFTTrainer
#
#     args = training_arguments(run, SFTConfig, max_length=run.recipe.train.max_length)
#     return SFTTrainer(model=run.model, args=args, train_dataset=run.train_dataset.select_columns(["prompt", "completion"]),
#                       processing_class=run.tokenizer)
'''

RECIPE = '''# {name} on the tiny built-in model: ptrain run recipes/{name}_tiny.toml
name = "{name}_tiny"
methods = ["sft", "{name}"]

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


def test_section_defaults(ptrain_validate):
    recipe = ptrain_validate(tiny_recipe(["sft", "{name}"]), plugins=PLUGINS)
    assert recipe.sections["{name}"].weight == 1.0


def test_bad_value_names_the_key(ptrain_validate):
    with pytest.raises(RecipeError, match=r"{name}\\.weight: must be > 0"):
        ptrain_validate(tiny_recipe(["sft", "{name}"], {name}={{"weight": 0}}), plugins=PLUGINS)


@pytest.mark.slow
def test_metric_is_reported(ptrain_run):
    run = ptrain_run(tiny_recipe(["sft", "{name}"], train={{"max_steps": 2}}), plugins=PLUGINS)
    assert run.metrics["final"]["{name}_eval_rows"] == 20
'''

README = '''# ptrain-{dist}

The `{name}` method for [ptrain](https://github.com/), as its own distribution.

```
pip install -e .
ptrain list                          # shows {name} from ptrain-{dist}
ptrain validate recipes/{name}_tiny.toml
ptrain run recipes/{name}_tiny.toml
python -m pytest -q tests
```

Edit `{module}/__init__.py`: the recipe section dataclass, then the hooks you need
(see ptrain's CONTRIBUTING.md for the lifecycle and the contract).
'''


def create(name: str, directory: Path | None = None) -> Path:
    """Write the package for method ``name`` into ``directory`` (default ``./ptrain-NAME``)."""
    if not NAME_PATTERN.match(name):
        raise UsageError(f"method name {name!r} must be lower-case letters, digits and '_', starting with a letter (e.g. 'dpo', 'my_method')")
    dist = name.replace("_", "-")
    module = f"ptrain_{name}"
    target = Path(directory or f"ptrain-{dist}")
    if target.exists() and any(target.iterdir()):
        raise UsageError(f"{target} already exists and is not empty; choose another --dir")
    values = {"name": name, "dist": dist, "module": module, "cls": "".join(p.capitalize() for p in name.split("_"))}
    files = {
        "pyproject.toml": PYPROJECT,
        f"{module}/__init__.py": MODULE,
        f"recipes/{name}_tiny.toml": RECIPE,
        f"tests/test_{name}.py": TESTS,
        "README.md": README,
    }
    for relative, template in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values), encoding="utf-8")
    return target
