import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# builtin models are materialised once per test session, not in the user's cache
os.environ["PTRAIN_CACHE"] = tempfile.mkdtemp(prefix="ptrain-cache-")


@pytest.fixture
def write_recipe(tmp_path):
    """Write a TOML recipe into tmp_path and return its path."""

    def write(text: str, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def run_recipe(tmp_path):
    """Run a recipe (a path or a dict) in-process through the CLI's code path; return the finished Run.

    ``run_recipe(RECIPES / "sft_tiny.toml", "train.max_steps=50")`` or
    ``run_recipe({"methods": ["sft"], "model": {...}, "data": {...}})``.
    """
    from ptrain._lifecycle import execute
    from ptrain._recipe import load_recipe, load_recipe_dict
    from ptrain._registry import PluginRegistry

    def run(recipe, *overrides: str, output_dir=None, extra_plugins=None, **kwargs):
        registry = PluginRegistry.discover(extra=extra_plugins)
        if isinstance(recipe, dict):
            loaded = load_recipe_dict(recipe, registry=registry)
        else:
            loaded = load_recipe(recipe, overrides, registry=registry)
        return execute(loaded, output_dir=str(output_dir or tmp_path / "run"), **kwargs)

    return run


@pytest.fixture(scope="session")
def trained_tiny_llama(tmp_path_factory):
    """``recipes/sft_tiny.toml`` run once per test session (about 80 s on 2 cores).

    Returns the finished :class:`ptrain.Run`; ``run.dir / "model"`` is a real trained model that
    knows the reverse and uppercase tasks (about 50 % exact match), usable as a teacher or as a
    model to quantize.
    """
    from ptrain._lifecycle import execute
    from ptrain._recipe import load_recipe

    return execute(load_recipe(RECIPES / "sft_tiny.toml"), output_dir=str(tmp_path_factory.mktemp("sft_tiny") / "run"))


def assert_model_card(directory: Path, base: str, *, metric: str = "task metric") -> str:
    """``directory/README.md`` is a Hub-format model card naming ``base`` and holding the metrics table; returns it."""
    card = (Path(directory) / "README.md").read_text(encoding="utf-8")
    front, _, body = card.removeprefix("---\n").partition("\n---\n")
    assert "pipeline_tag: text-generation" in front and "- ptrain" in front, front
    assert f"`{base}`" in body and "## Results" in body and metric in body, body
    assert "## How to load" in body and "from_pretrained(" in body
    return card


@pytest.fixture(scope="session")
def tiny_lora_run(tmp_path_factory):
    """SFT + LoRA (r=4) on builtin:tiny-llama for 6 steps, once per test session: a finished run with an
    adapter, a merged model, model cards, a report and a logged loss curve."""
    from ptrain.testing import execute, tiny_recipe

    recipe = tiny_recipe(["sft", "lora"], train={"max_steps": 6, "logging_steps": 1}, lora={"r": 4})
    return execute(recipe, output_dir=tmp_path_factory.mktemp("tiny_lora") / "run")
