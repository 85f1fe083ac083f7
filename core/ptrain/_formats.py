"""The core's data formats, registered through the ``data_formats`` hook like any plugin's.

Each turns one source row into the normalised fields of :data:`ptrain.ROW_FIELDS`, or raises a
:class:`DataError` that starts with the row's place (``data.jsonl: line 7``).
"""

from __future__ import annotations

from typing import Any

from ptrain._errors import DataError
from ptrain._types import DataFormat

ALPACA_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
ALPACA_TEMPLATE_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"
PLAIN_TEMPLATE, PLAIN_TEMPLATE_NO_INPUT = "{instruction}\n{input}", "{instruction}"
ROLES = ("system", "user", "assistant", "tool")


def text_field(row: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    """``row[key]`` as text: a DataError naming the row when it is missing (if required) or not text."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip() and required):
        if required:
            raise DataError(f"{where}: missing or empty {key!r}; every row needs it (or drop the row)")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: {key!r} must be text, got {type(value).__name__}")
    return str(value)


def chat_messages(value: Any, where: str, key: str) -> list[dict[str, str]]:
    """A list of ``{role, content}`` messages, checked; a DataError naming the row and the message otherwise."""
    if not isinstance(value, list):
        raise DataError(f"{where}: {key!r} must be a list of {{role, content}} messages, got {type(value).__name__}")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or message.get("role") not in ROLES:
            raise DataError(f"{where}: {key}[{i}] must be {{role: {'|'.join(ROLES)}, content: text}}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def conversation(messages: list[dict[str, str]], answer: str, where: str) -> dict[str, Any]:
    """A conversation ending before ``answer``: rendered with the chat template; ``instruction`` is its last user turn."""
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
    if user is None:
        raise DataError(f"{where}: the conversation has no user turn before the answer")
    return {"instruction": user, "input": "", "output": answer, "context": messages}


def _prompt_completion(row: dict[str, Any], where: str) -> dict[str, Any]:
    return {"instruction": text_field(row, "prompt", where), "output": text_field(row, "completion", where)}


def _alpaca(row: dict[str, Any], where: str) -> dict[str, Any]:
    return {
        "instruction": text_field(row, "instruction", where),
        "input": text_field(row, "input", where, required=False),
        "output": text_field(row, "output", where),
    }


def _dolly(row: dict[str, Any], where: str) -> dict[str, Any]:
    return {
        "instruction": text_field(row, "instruction", where),
        "input": text_field(row, "context", where, required=False),
        "output": text_field(row, "response", where),
    }


def _messages(row: dict[str, Any], where: str) -> dict[str, Any]:
    messages = chat_messages(row.get("messages"), where, "messages")
    if len(messages) < 2:
        raise DataError(f"{where}: 'messages' needs at least a user turn and the assistant's answer")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's answer to learn, got role {messages[-1]['role']!r}")
    return conversation(messages[:-1], messages[-1]["content"], where)


def _answer(row: dict[str, Any], key: str, where: str) -> tuple[str, list[dict[str, str]] | None]:
    """A preference answer as text, plus the conversation before it when given in chat form."""
    value = row.get(key)
    if isinstance(value, list):
        messages = chat_messages(value, where, key)
        if not messages or messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: {key!r} in chat form must end with the assistant's answer")
        return messages[-1]["content"], messages[:-1]
    return text_field(row, key, where), None


def _prompt(row: dict[str, Any], where: str, context: list[dict[str, str]] | None, answer: str) -> dict[str, Any]:
    """The prompt of a preference or unpaired row: ``prompt`` (text or chat), or ``instruction`` (+ ``input``)."""
    prompt = row.get("prompt")
    if isinstance(prompt, list) or (prompt is None and context):
        return conversation(chat_messages(prompt, where, "prompt") if isinstance(prompt, list) else context, answer, where)
    if prompt is None and "instruction" in row:
        return {"instruction": text_field(row, "instruction", where), "input": text_field(row, "input", where, False), "output": answer}
    if prompt is None:
        raise DataError(f"{where}: no 'prompt' column (or chat-form answers that carry the conversation)")
    return {"instruction": text_field(row, "prompt", where), "output": answer}


def _preference(row: dict[str, Any], where: str) -> dict[str, Any]:
    """``prompt``/``chosen``/``rejected`` as text, or in TRL's chat forms (explicit or implicit prompt)."""
    chosen, context = _answer(row, "chosen", where)
    rejected, _ = _answer(row, "rejected", where)
    return _prompt(row, where, context, chosen) | {"chosen": chosen, "rejected": rejected}


def _unpaired(row: dict[str, Any], where: str) -> dict[str, Any]:
    """One answer judged good (``label = true``) or bad, as KTO trains on."""
    completion, context = _answer(row, "completion", where)
    label = row.get("label")
    if not isinstance(label, bool):
        raise DataError(f"{where}: 'label' must be true or false (is the completion a good answer?), got {label!r}")
    return _prompt(row, where, context, completion) | {"label": label}


def _text(row: dict[str, Any], where: str) -> dict[str, Any]:
    return {"instruction": "", "output": text_field(row, "text", where)}


CORE_FORMATS = [
    DataFormat("prompt_completion", ("prompt", "completion"), _prompt_completion, description="prompt and completion text"),
    DataFormat("alpaca", ("instruction", "output"), _alpaca, description="instruction, optional input, output",
               template=(ALPACA_TEMPLATE, ALPACA_TEMPLATE_NO_INPUT)),
    DataFormat("dolly", ("instruction", "response"), _dolly, description="instruction, optional context, response",
               template=(ALPACA_TEMPLATE, ALPACA_TEMPLATE_NO_INPUT)),
    DataFormat("messages", ("messages",), _messages, frozenset({"instruction", "output", "context"}),
               "chat messages, the last one the assistant's answer"),
    DataFormat("preference", ("chosen", "rejected"), _preference, frozenset({"instruction", "output", "chosen", "rejected"}),
               "prompt, chosen, rejected (text or chat messages)"),
    DataFormat("unpaired", ("prompt", "completion", "label"), _unpaired, frozenset({"instruction", "output", "label"}),
               "prompt, one completion and whether it is good (label)"),
    DataFormat("text", ("text",), _text, frozenset({"output"}), "plain text, learned whole (no prompt)"),
]
