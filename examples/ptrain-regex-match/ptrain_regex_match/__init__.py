"""Exact match of the answer a regular expression extracts from each held-out generation.

An evaluator: it measures and changes nothing (``methods = ["sft", "regex_match"]``, or
``methods = ["regex_match"]`` alone to measure a model as it is). It scores the core's held-out
prompts (``run.held_out``) through ``run.generate``, which generates each answer once per stage:
the core's own evaluation reuses the answers instead of generating them again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ptrain import RecipeError, ReportRow, Run, hookimpl


@dataclass
class RegexMatchSection:
    """``[regex_match]``: how the answer is taken out of a generation and compared."""

    pattern: str = r"(?s)^\s*(.*?)\s*$"
    """A regular expression searched in each generation; its ``group`` is the answer (the default: the whole
    generation, stripped). E.g. ``'answer is (\\S+)'`` or ``'<answer>(.*?)</answer>'``."""
    group: int = 1
    ignore_case: bool = False
    """Compare answer and reference case-insensitively."""

    def validate(self) -> None:
        try:
            compiled = re.compile(self.pattern)
        except re.error as err:
            raise RecipeError(f"not a valid regular expression ({err}); escape special characters with \\\\", key="pattern") from None
        if not 0 <= self.group <= compiled.groups:
            raise RecipeError(f"the pattern has {compiled.groups} group(s); use 0 (the whole match) to {compiled.groups}", key="group")


def extract(text: str, section: RegexMatchSection) -> str | None:
    """The answer ``section.pattern`` finds in ``text``, or None when it finds none."""
    found = re.search(section.pattern, text)
    return found.group(section.group).strip() if found else None


def scores(answers: list[str], references: list[str], section: RegexMatchSection) -> tuple[float, float]:
    """``(exact match of the extracted answers, share of answers the pattern found)``."""
    fold = str.casefold if section.ignore_case else (lambda text: text)
    extracted = [extract(text, section) for text in answers]
    hits = [value is not None and fold(value) == fold(ref.strip()) for value, ref in zip(extracted, references, strict=True)]
    return sum(hits) / len(hits), sum(value is not None for value in extracted) / len(extracted)


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"regex_match": RegexMatchSection}


@hookimpl
def method_traits() -> list[str]:
    return ["evaluates"]


@hookimpl
def report_rows() -> list[ReportRow]:
    return [
        ReportRow("regex exact match", "final.regex_match", base=True, chart="quality"),
        ReportRow("regex found an answer", "final.regex_found", base=True),
    ]


@hookimpl
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    held = run.held_out
    if not held.rows:
        return None
    answers = run.generate(held.prompts, held.max_new_tokens).texts
    match, found = scores(answers, [row["output"] for row in held.rows], run.section("regex_match"))
    return {"regex_match": round(match, 4), "regex_found": round(found, 4)}
