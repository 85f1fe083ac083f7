"""Edit-similarity reward: partial credit for answers close to the reference, for ptrain's grpo.

A third-party ptrain plugin of the *reward* kind: one hook, ``reward_functions``, registering the
reward ``edit_similarity`` under the ``edit_reward`` entry point of the ``ptrain-edit-reward``
distribution. A recipe lists the plugin next to its trainer and names the reward with a weight::

    methods = ["grpo", "edit_reward"]
    [grpo]
    rewards = { task_match = 1.0, edit_similarity = 0.5 }

Exact match gives a completion 0 or 1; edit similarity gives ``1 - d / max(len(answer), len(reference))``
(``d`` the Levenshtein distance in characters), so an answer one letter off still scores 0.9: a
denser signal for GRPO when few sampled answers are exactly right. Pure Python: nothing heavy is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ptrain import RewardFunction, answer_text, hookimpl

__all__ = ["edit_similarity", "levenshtein"]


def levenshtein(a: str, b: str) -> int:
    """Insertions, deletions and substitutions (one each) that turn ``a`` into ``b``."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, left in enumerate(a, 1):
        current = [i]
        for j, right in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (left != right)))
        previous = current
    return previous[-1]


def edit_similarity(prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float | None]:
    """``1 - levenshtein / longer length`` between the answer (inside ``<answer>`` tags if any) and the
    reference ``output``; None where a row has no reference (the trainer then ignores this reward for it)."""
    references = columns.get("output") or [None] * len(completions)
    scores: list[float | None] = []
    for completion, reference in zip(completions, references, strict=True):
        if not reference:
            scores.append(None)
            continue
        answer = answer_text(completion)
        scores.append(1.0 - levenshtein(answer, reference) / max(len(answer), len(reference)))
    return scores


@hookimpl
def reward_functions() -> list[RewardFunction]:
    return [RewardFunction("edit_similarity", edit_similarity, "1 - edit distance / length, against the reference answer")]
