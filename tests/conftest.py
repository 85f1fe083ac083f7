import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def write_recipe(tmp_path):
    """Write a TOML recipe into tmp_path and return its path."""

    def write(text: str, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Builtin models are materialised once per test session, not in the user's cache."""
    monkeypatch.setenv("PTRAIN_CACHE", str(tmp_path_factory.getbasetemp() / "ptrain-cache"))
