"""Reward functions: the core's built-ins, and the collection a recipe's plugins register.

A reward function follows TRL's signature ``function(prompts, completions, **columns)``: lists of
prompt and completion texts, and one keyword per dataset column, each a list aligned with the
completions (``output`` is the reference answer, ``task`` the bundled task's name). It returns one
float per completion, or None where it has nothing to say (TRL then ignores it for that completion).

The core registers the built-ins below through its own ``reward_functions`` hook, like any plugin:
they score the core's own tasks with the core's own metrics, so every online RL method (``grpo``
or a third party's) can name them, and a plugin adds more under names of its own. Nothing heavy
is imported here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from ptrain._errors import RecipeError
from ptrain._evaluation import METRICS, metric_for, valid_json
from ptrain._schema import suggest
from ptrain._types import RewardFunction

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
ANSWER_FORMAT = re.compile(r"^\s*(?:<think>.*?</think>\s*)?<answer>.*?</answer>\s*$", re.DOTALL)


def answer_text(completion: str) -> str:
    """The text inside the last ``<answer>…</answer>`` of a completion, or the whole completion when it has none."""
    found = ANSWER.findall(completion)
    return found[-1].strip() if found else completion.strip()


def _column(columns: dict[str, Any], name: str, count: int) -> list[Any]:
    values = columns.get(name)
    return list(values) if values is not None else [None] * count


def task_match(prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float | None]:
    """1.0 when the answer (inside ``<answer>`` tags if there are any) is right by its task's own metric:
    numeric match for ``arithmetic``, JSON equality for ``avro``, exact match otherwise; None without a reference."""
    references = _column(columns, "output", len(completions))
    tasks = _column(columns, "task", len(completions))
    scores: list[float | None] = []
    for completion, reference, task in zip(completions, references, tasks, strict=True):
        if not reference:
            scores.append(None)
            continue
        metric = METRICS[metric_for({"task": task}, "auto")]
        scores.append(metric(answer_text(completion), reference))
    return scores


def valid_json_reward(prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float | None]:
    """1.0 when the answer parses as JSON (a fenced code block counts), else 0.0."""
    return [valid_json(answer_text(completion)) for completion in completions]


def answer_format(prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float | None]:
    """1.0 when the completion is ``<answer>…</answer>``, optionally after ``<think>…</think>``, and nothing else."""
    return [float(bool(ANSWER_FORMAT.match(completion))) for completion in completions]


def length_penalty(prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float | None]:
    """0 for an answer no longer than the reference, falling linearly to -1 at twice its length (in
    characters) and beyond; None without a reference."""
    references = _column(columns, "output", len(completions))
    scores: list[float | None] = []
    for completion, reference in zip(completions, references, strict=True):
        if not reference:
            scores.append(None)
            continue
        excess = len(completion.strip()) - len(reference)
        scores.append(-min(1.0, max(0, excess) / len(reference)))
    return scores


CORE_REWARDS = [
    RewardFunction("task_match", task_match, "the answer is right by its task's metric (exact, numeric, JSON); needs output"),
    RewardFunction("valid_json", valid_json_reward, "the answer parses as JSON"),
    RewardFunction("answer_format", answer_format, "the completion is <answer>…</answer> (after an optional <think>…</think>)"),
    RewardFunction("length_penalty", length_penalty, "0 up to the reference's length, down to -1 at twice it; needs output"),
]


def check_rewards(name: str, scores: Any, count: int) -> list[float | None]:
    """``scores`` from reward ``name`` for ``count`` completions, as a list, after checking them: one per
    completion, each a finite number or None. A reward that breaks this raises :class:`PtrainError` naming
    the reward, the completion and the value (a runtime failure: exit 1 with one line and the log).
    Every online RL method calls it on what a reward function or reward model returned."""
    from ptrain._errors import PtrainError

    try:
        given = list(scores)
    except TypeError:
        raise PtrainError(f"reward {name!r} returned {type(scores).__name__}, not a list of scores; a reward function returns "
                          "one float (or None) per completion") from None
    if len(given) != count:
        raise PtrainError(f"reward {name!r} returned {len(given)} score{'s' if len(given) != 1 else ''} for {count} completions; "
                          "a reward function returns one float (or None) per completion")
    for i, score in enumerate(given):
        if score is None:
            continue
        if isinstance(score, bool) or not isinstance(score, (int, float)) and not hasattr(score, "__float__"):
            raise PtrainError(f"reward {name!r} returned {type(score).__name__} {str(score)[:40]!r} for completion {i}; "
                              "scores are numbers or None")
        if not math.isfinite(float(score)):
            raise PtrainError(f"reward {name!r} returned {float(score)} for completion {i}; scores must be finite numbers "
                              "(or None where the reward has nothing to say)")
        given[i] = float(score)
    return given


def collect_named(by_plugin: dict[str, list[Any]], cls: type, what: str, check: Any = None) -> dict[str, tuple[str, Any]]:
    """Name -> (plugin, item) for a kind of named callables (reward functions, tools); an item that is not a ``cls``,
    one ``check`` finds a problem with, or a name two plugins register is a RecipeError."""
    found: dict[str, tuple[str, Any]] = {}
    for plugin, items in by_plugin.items():
        for item in items or []:
            if not isinstance(item, cls) or not callable(item.function):
                raise RecipeError(f"plugin {plugin!r} declares a {what} that is not a ptrain.{cls.__name__}: {item!r}")
            problem = check(item) if check else None
            if problem:
                raise RecipeError(f"plugin {plugin!r} declares {what} {item.name!r}, and {problem}", key="methods")
            if item.name in found:
                raise RecipeError(
                    f"{what} {item.name!r} is registered by both {found[item.name][0]!r} and {plugin!r}; keep one of them",
                    key="methods",
                )
            found[item.name] = (plugin, item)
    return found


def unknown_name(what: str, plural: str, name: str, known: list[str], providers: list[str]) -> str:
    """The message for a ``what`` name no plugin of the recipe registers."""
    message = f"unknown {what} {name!r}{suggest(name, known)} ({plural}: {', '.join(sorted(known)) or 'none'})"
    if providers:
        message += f"; plugin {providers[0]!r} provides {name!r}: add it to methods"
    else:
        message += f"; a plugin that adds {plural} takes part only when the recipe's methods name it (ptrain list -v shows them)"
    return message


def collect(by_plugin: dict[str, list[RewardFunction]]) -> dict[str, tuple[str, RewardFunction]]:
    """Name -> (plugin, reward function); a name two plugins register is a RecipeError."""
    return collect_named(by_plugin, RewardFunction, "reward function")


def unknown(name: str, known: list[str], providers: list[str]) -> str:
    """The message for a reward name no plugin of the recipe registers."""
    return unknown_name("reward function", "rewards", name, known, providers)
