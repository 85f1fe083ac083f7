"""ShareGPT conversations (``{"conversations": [{"from": "human", "value": ...}, ...]}``) as a data format.

A third-party data plugin: one ``data_formats`` hook, nothing else, and only names from
``ptrain.__all__``. Listed in a recipe's methods next to the trainer, it lets ``data.format =
"sharegpt"`` (or ``"auto"``, which recognises the ``conversations`` column) read such files; the
core reads the file, checks every row at ``ptrain validate`` with file and line, renders each
conversation with the tokenizer's chat template and trains on its assistant turns.

The core now reads ShareGPT itself (its own ``sharegpt`` format, with LLaMA-Factory's preference,
KTO and tool variants); a recipe that names this plugin gets this simpler format instead (a method's
format replaces the core's of the same name). It stays as the smallest example of the hook.
"""

from __future__ import annotations

from typing import Any

from ptrain import DataError, DataFormat, clip, conversation, hookimpl

ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "tool": "tool"}
"""ShareGPT speaker names -> chat-template roles."""


def normalize(row: dict[str, Any], where: str) -> dict[str, Any]:
    """One ShareGPT row -> the conversation before the last answer, and that answer (``where`` names the row in errors)."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        raise DataError(f"{where}: 'conversations' must be a list of at least two {{from, value}} turns")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            raise DataError(f"{where}: conversations[{i}] must be {{from: {'|'.join(ROLES)}, value: text}}, got {clip(turn)}")
        messages.append({"role": ROLES[turn["from"]], "content": turn["value"]})
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise DataError(f"{where}: the last turn must be the assistant's (from 'gpt') non-empty answer to learn")
    return conversation(messages[:-1], messages[-1]["content"], where)


@hookimpl
def data_formats() -> list[DataFormat]:
    return [
        DataFormat(
            "sharegpt",
            columns=("conversations",),
            normalize=normalize,
            fields=frozenset({"instruction", "output", "context"}),
            description="ShareGPT conversations: turns of {from: human|gpt|system, value}",
        )
    ]
