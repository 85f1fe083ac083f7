"""Tests of the regex_match evaluator, written with ptrain's plugin-author kit (the ``ptrain_*`` fixtures)."""

import json
from pathlib import Path

import pytest

from ptrain import RecipeError
from ptrain.testing import registry, tiny_recipe

pytest.importorskip("ptrain_regex_match", reason="the example plugin is not installed: pip install -e examples/ptrain-regex-match")

from ptrain_regex_match import RegexMatchSection, scores  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "regex_match_tiny.toml"


def test_scores_extract_then_compare():
    section = RegexMatchSection(pattern=r"answer: (\w+)", ignore_case=True)
    assert scores(["the answer: OLLEH", "answer: x", "no idea"], ["olleh", "y", "z"], section) == (1 / 3, 2 / 3)
    assert scores(["  olleh \n"], ["olleh"], RegexMatchSection()) == (1.0, 1.0)


def test_bad_pattern_and_group_name_the_key(ptrain_validate):
    with pytest.raises(RecipeError, match=r"regex_match\.pattern: not a valid regular expression"):
        ptrain_validate(tiny_recipe(["sft", "regex_match"], regex_match={"pattern": "(unclosed"}))
    with pytest.raises(RecipeError, match=r"regex_match\.group: the pattern has 1 group\(s\)"):
        ptrain_validate(tiny_recipe(["sft", "regex_match"], regex_match={"group": 2}))


def test_listed_as_an_evaluator(ptrain_cli, ptrain_validate):
    found = next(p for p in json.loads(ptrain_cli("list", "--json").output) if p["name"] == "regex_match")
    assert (found["distribution"], found["kind"], found["traits"]) == ("ptrain-regex-match", "evaluator", ["evaluates"])
    assert registry().load(["sft", "regex_match"]).kind("regex_match") == "evaluator"
    assert ptrain_validate(RECIPE).section("regex_match").ignore_case is True


@pytest.mark.slow
def test_measures_alone_and_the_core_reuses_its_answers(ptrain_run):
    """No trainer: the base model is measured as it is, and the core generates nothing the evaluator already did."""
    run = ptrain_run(tiny_recipe(["regex_match"], output={"save_model": False}))
    for stage in ("base", "final"):
        assert 0.0 <= run.metrics[stage]["regex_match"] <= run.metrics[stage]["regex_found"] <= 1.0
    assert run.metrics["final"]["regex_match"] == run.metrics["base"]["regex_match"]  # nothing trained: the same model
    # base: the evaluator generated, the core reused; final: the same untrained model, every answer reused
    assert run.metrics["generation"] == {"base": {"generated": 10, "reused": 10}, "final": {"generated": 0, "reused": 20}}
    assert "train" not in run.metrics
