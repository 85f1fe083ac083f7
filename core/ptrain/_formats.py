"""The core's data formats, registered through the ``data_formats`` hook like any plugin's.

Each turns one source row into the normalised fields of :data:`ptrain.ROW_FIELDS`, or raises a
:class:`DataError` that starts with the row's place (``data.jsonl: line 7``). The layouts are the
ones practitioners already have, read as they are: TRL's dataset types (standard and
conversational: language modeling, prompt-completion, preference with explicit or implicit
prompt, unpaired preference, tool calling), LLaMA-Factory's alpaca and sharegpt layouts (their
preference, KTO and tool variants) and OpenAI's chat format (``tool_calls``, ``tool`` messages).
"""

from __future__ import annotations

import json
from typing import Any

from ptrain._errors import DataError
from ptrain._types import DataFormat

ALPACA_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
ALPACA_TEMPLATE_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"
PLAIN_TEMPLATE, PLAIN_TEMPLATE_NO_INPUT = "{instruction}\n{input}", "{instruction}"
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "function_call": "assistant", "observation": "tool", "tool": "tool",
}
"""ShareGPT (LLaMA-Factory) speaker tags -> chat roles; ``function_call`` turns are tool calls."""
CLIP = 80


def clip(value: Any, limit: int = CLIP) -> str:
    """``value`` as short text for an error line: JSON (or str), cut at ``limit`` characters with "…"."""
    if not isinstance(value, str):
        try:
            value = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            value = str(value)
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def text_field(row: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    """``row[key]`` as text: a DataError naming the row when it is missing (if required) or not text."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip() and required):
        if required:
            raise DataError(f"{where}: missing or empty {key!r}; every row needs it (or drop the row)")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: {key!r} must be text, got {type(value).__name__} {clip(value)}")
    return str(value)


def _arguments(value: Any, where: str, place: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise DataError(f"{where}: {place} arguments must be a JSON object, got {clip(value)}") from None
    if not isinstance(value, dict):
        raise DataError(f"{where}: {place} arguments must be a JSON object, got {clip(value)}")
    return value


def tool_calls(value: Any, where: str, place: str) -> list[dict[str, Any]]:
    """Tool calls as chat templates take them: ``[{"type": "function", "function": {"name", "arguments": {...}}}]``.

    Accepts OpenAI's and TRL's shape (``function`` with ``arguments`` as a JSON string or an object),
    and LLaMA-Factory's bare ``{"name", "arguments"}`` (one call or a list)."""
    calls = value if isinstance(value, list) else [value]
    normalised = []
    for i, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"].strip():
            raise DataError(f"{where}: {place}[{i}] must be a tool call {{function: {{name, arguments}}}}, got {clip(call)}")
        entry: dict[str, Any] = {"type": "function", "function": {
            "name": function["name"], "arguments": _arguments(function.get("arguments", {}), where, f"{place}[{i}]")}}
        if isinstance(call, dict) and isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        normalised.append(entry)
    return normalised


def calls_text(calls: list[dict[str, Any]]) -> str:
    """Tool calls as JSON text (``[{"name", "arguments"}]``): the answer of a row whose answer is only tool calls."""
    return json.dumps([{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls], ensure_ascii=False)


def tools_field(row: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
    """The row's ``tools`` (JSON schemas, as a list or a JSON string), or None when it has none."""
    value = row.get("tools")
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise DataError(f"{where}: 'tools' must be a list of tool schemas (JSON), got {clip(value)}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) and _tool_name(t) for t in value):
        raise DataError(f"{where}: 'tools' must be a list of tool schemas, each with a name, got {clip(value)}")
    return [t if "function" in t else {"type": "function", "function": t} for t in value]


def _tool_name(tool: dict[str, Any]) -> str | None:
    function = tool.get("function", tool)
    return function.get("name") if isinstance(function, dict) and isinstance(function.get("name"), str) else None


def tool_names(tools: list[dict[str, Any]] | None) -> list[str]:
    return [name for name in (_tool_name(t) for t in tools or []) if name]


def chat_message(message: Any, where: str, place: str) -> dict[str, Any]:
    """One chat message, checked: ``{role, content}``, an assistant's ``tool_calls`` (content may then be
    empty), a ``tool`` message's ``tool_call_id`` and ``name``."""
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        role = message.get("role") if isinstance(message, dict) else None
        hint = f"; map your role names with data.roles, e.g. roles = {{ {role} = \"user\" }}" if isinstance(role, str) else ""
        raise DataError(f"{where}: {place} must be {{role: {'|'.join(ROLES)}, content: text}}, got {clip(message)}{hint}")
    content = message.get("content")
    calls = message.get("tool_calls")
    if calls not in (None, []) and message["role"] == "assistant":
        normalised: dict[str, Any] = {"role": "assistant", "content": content if isinstance(content, str) else "",
                                      "tool_calls": tool_calls(calls, where, f"{place}.tool_calls")}
        return normalised
    if not isinstance(content, str):
        extra = " (or tool_calls, for an assistant)" if message["role"] == "assistant" else ""
        raise DataError(f"{where}: {place} must have text content{extra}, got {clip(message)}")
    normalised = {"role": message["role"], "content": content}
    for key in ("tool_call_id", "name"):
        if message["role"] == "tool" and isinstance(message.get(key), str):
            normalised[key] = message[key]
    return normalised


def chat_messages(value: Any, where: str, key: str) -> list[dict[str, Any]]:
    """A list of chat messages, checked (see :func:`chat_message`); a DataError naming the row and the message otherwise."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise DataError(f"{where}: {key!r} must be a list of {{role, content}} messages, got {type(value).__name__} {clip(value)}")
    return [chat_message(message, where, f"{key}[{i}]") for i, message in enumerate(value)]


def _is_answer(message: dict[str, Any]) -> bool:
    return message["role"] == "assistant" and bool(message["content"].strip() or message.get("tool_calls"))


def conversation(messages: list[dict[str, Any]], answer: str | dict[str, Any], where: str) -> dict[str, Any]:
    """A conversation ending before ``answer`` (its text, or the assistant message, tool calls included):
    rendered with the chat template; ``instruction`` is its last user turn."""
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
    if user is None:
        raise DataError(f"{where}: the conversation has no user turn before the answer")
    row: dict[str, Any] = {"instruction": user, "input": "", "context": messages}
    if isinstance(answer, dict):
        row["output"] = answer["content"]
        if answer.get("tool_calls"):
            row["tool_calls"] = answer["tool_calls"]
            row["output"] = answer["content"] or calls_text(answer["tool_calls"])
    else:
        row["output"] = answer
    return row


def _with_tools(result: dict[str, Any], row: dict[str, Any], where: str) -> dict[str, Any]:
    tools = tools_field(row, where)
    if tools:
        result["tools"] = tools
    return result


def _dialogue(messages: list[dict[str, Any]], where: str, key: str) -> dict[str, Any]:
    """A whole conversation ending with the assistant's answer (content or tool calls)."""
    if len(messages) < 2:
        raise DataError(f"{where}: {key!r} needs at least a user turn and the assistant's answer")
    if not _is_answer(messages[-1]):
        raise DataError(f"{where}: the last message must be the assistant's answer (content or tool_calls) to learn, "
                        f"got {clip(messages[-1])}")
    return conversation(messages[:-1], messages[-1], where)


# ------------------------------------------------------------------ standard and conversational, TRL and OpenAI


def _prompt_completion(row: dict[str, Any], where: str) -> dict[str, Any]:
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list) or isinstance(completion, list):  # TRL's conversational prompt-completion
        answer = chat_messages(completion, where, "completion")
        history = chat_messages(prompt, where, "prompt") + answer[:-1]
        if not answer or not _is_answer(answer[-1]):
            raise DataError(f"{where}: 'completion' in chat form must end with the assistant's answer, got {clip(completion)}")
        return _with_tools(conversation(history, answer[-1], where), row, where)
    return {"instruction": text_field(row, "prompt", where), "output": text_field(row, "completion", where)}


def _alpaca(row: dict[str, Any], where: str) -> dict[str, Any]:
    result = {
        "instruction": text_field(row, "instruction", where),
        "input": text_field(row, "input", where, required=False),
        "output": text_field(row, "output", where),
    }
    history = row.get("history")
    system = text_field(row, "system", where, required=False)
    if history or system:  # LLaMA-Factory's alpaca: earlier [instruction, answer] turns and a system prompt
        messages = [{"role": "system", "content": system}] if system else []
        if not isinstance(history, (list, type(None))):
            raise DataError(f"{where}: 'history' must be a list of [instruction, answer] pairs, got {clip(history)}")
        for i, pair in enumerate(history or []):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise DataError(f"{where}: history[{i}] must be [instruction, answer], got {clip(pair)}")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        user = f"{result['instruction']}\n\n{result['input']}" if result["input"] else result["instruction"]
        return conversation([*messages, {"role": "user", "content": user}], result["output"], where)
    return result


def _dolly(row: dict[str, Any], where: str) -> dict[str, Any]:
    return {
        "instruction": text_field(row, "instruction", where),
        "input": text_field(row, "context", where, required=False),
        "output": text_field(row, "response", where),
    }


def _messages(row: dict[str, Any], where: str) -> dict[str, Any]:
    return _with_tools(_dialogue(chat_messages(row.get("messages"), where, "messages"), where, "messages"), row, where)


def _answer(row: dict[str, Any], key: str, where: str) -> tuple[str, list[dict[str, Any]] | None]:
    """A preference answer as text, plus the conversation before it when given in chat form."""
    value = row.get(key)
    if isinstance(value, (list, dict)):
        messages = chat_messages(value, where, key)
        if not messages or messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
            raise DataError(f"{where}: {key!r} in chat form must end with the assistant's answer, got {clip(value)}")
        return messages[-1]["content"], messages[:-1]
    return text_field(row, key, where), None


def _prompt(row: dict[str, Any], where: str, context: list[dict[str, Any]] | None, answer: str) -> dict[str, Any]:
    """The prompt of a preference or unpaired row: ``prompt`` (text or chat), or ``instruction`` (+ ``input``)."""
    prompt = row.get("prompt")
    if isinstance(prompt, list) or (prompt is None and context):
        history = chat_messages(prompt, where, "prompt") + (context or []) if isinstance(prompt, list) else context
        return conversation(history, answer, where)  # type: ignore[arg-type]
    if prompt is None and "instruction" in row:
        return {"instruction": text_field(row, "instruction", where), "input": text_field(row, "input", where, False), "output": answer}
    if prompt is None:
        raise DataError(f"{where}: no 'prompt' column (or chat-form answers that carry the conversation)")
    return {"instruction": text_field(row, "prompt", where), "output": answer}


def _same_history(chosen: list[dict[str, Any]], rejected: list[dict[str, Any]], where: str) -> None:
    """An implicit-prompt pair answers one conversation: refuse chosen and rejected that differ before their answers."""
    for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)):
        if a != b:
            raise DataError(
                f"{where}: 'chosen' and 'rejected' differ before their answers (message {i}: {clip(a.get('content'), 40)} "
                f"vs {clip(b.get('content'), 40)}); a pair must answer the same prompt: fix the row or give an explicit 'prompt'")
    if len(chosen) != len(rejected):
        raise DataError(f"{where}: 'chosen' has {len(chosen) + 1} messages and 'rejected' {len(rejected) + 1}; a pair must answer "
                        "the same conversation: fix the row or give an explicit 'prompt'")


def _split_common(chosen: str, rejected: str, where: str) -> tuple[str, str, str]:
    """TRL's implicit prompt in text: the common start of chosen and rejected (up to the last whole word)."""
    end = next((i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b), min(len(chosen), len(rejected)))
    cut = max(chosen.rfind(" ", 0, end), chosen.rfind("\n", 0, end)) + 1 if end < len(chosen) and end < len(rejected) else end
    prompt = chosen[:cut]
    if not prompt.strip() or not chosen[cut:].strip() or not rejected[cut:].strip():
        raise DataError(f"{where}: without a 'prompt', 'chosen' and 'rejected' must start with the same prompt and then differ "
                        f"({clip(chosen, 40)} vs {clip(rejected, 40)}); add a 'prompt' column")
    return prompt, chosen[cut:], rejected[cut:]


def _preference(row: dict[str, Any], where: str) -> dict[str, Any]:
    """``prompt``/``chosen``/``rejected`` as text, or in TRL's chat forms (explicit or implicit prompt), or
    LLaMA-Factory's alpaca preference (``instruction``, ``input``)."""
    chosen, context = _answer(row, "chosen", where)
    rejected, rejected_context = _answer(row, "rejected", where)
    if row.get("prompt") is None and "instruction" not in row:
        if context is not None and rejected_context is not None:
            _same_history(context, rejected_context, where)
        elif context is None and rejected_context is None:
            prompt, chosen, rejected = _split_common(chosen, rejected, where)
            return {"instruction": prompt, "output": chosen, "chosen": chosen, "rejected": rejected}
    return _prompt(row, where, context, chosen) | {"chosen": chosen, "rejected": rejected}


def _label(row: dict[str, Any], where: str) -> bool:
    label = row.get("label", row.get("kto_tag"))
    if not isinstance(label, bool):
        raise DataError(f"{where}: 'label' must be true or false (is the completion a good answer?), got {clip(label)}")
    return label


def _unpaired(row: dict[str, Any], where: str) -> dict[str, Any]:
    """One answer judged good (``label = true``) or bad, as KTO trains on."""
    completion, context = _answer(row, "completion", where)
    return _prompt(row, where, context, completion) | {"label": _label(row, where)}


def _unpaired_messages(row: dict[str, Any], where: str) -> dict[str, Any]:
    """LLaMA-Factory's KTO layout: a conversation whose last assistant turn is judged by ``label``."""
    return _messages(row, where) | {"label": _label(row, where)}


def _unpaired_alpaca(row: dict[str, Any], where: str) -> dict[str, Any]:
    return _alpaca(row, where) | {"label": _label(row, where)}


def _text(row: dict[str, Any], where: str) -> dict[str, Any]:
    return {"instruction": "", "output": text_field(row, "text", where)}


# ------------------------------------------------------------------ LLaMA-Factory's sharegpt


def sharegpt_messages(turns: Any, where: str, key: str = "conversations") -> list[dict[str, Any]]:
    """ShareGPT turns (``{from, value}``, LLaMA-Factory's tags) as chat messages; ``function_call`` turns
    become assistant tool calls, ``observation`` turns tool messages."""
    if isinstance(turns, dict):
        turns = [turns]
    if not isinstance(turns, list):
        raise DataError(f"{where}: {key!r} must be a list of {{from, value}} turns, got {clip(turns)}")
    messages: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        tag = turn.get("from", turn.get("role")) if isinstance(turn, dict) else None
        value = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
        if tag not in SHAREGPT_ROLES or not isinstance(value, str):
            hint = f"; map other tags with data.roles, e.g. roles = {{ {tag} = \"user\" }}" if isinstance(tag, str) else ""
            raise DataError(f"{where}: {key}[{i}] must be {{from: {'|'.join(SHAREGPT_ROLES)}, value: text}}, got {clip(turn)}{hint}")
        if tag == "function_call":
            try:
                call = json.loads(value)
            except ValueError:
                raise DataError(f"{where}: {key}[{i}] is a function_call whose value must be JSON {{name, arguments}}, got {clip(value)}") from None
            messages.append({"role": "assistant", "content": "", "tool_calls": tool_calls(call, where, f"{key}[{i}]")})
        else:
            messages.append({"role": SHAREGPT_ROLES[tag], "content": value})
    return messages


def _sharegpt_history(row: dict[str, Any], where: str) -> list[dict[str, Any]]:
    messages = sharegpt_messages(row.get("conversations"), where)
    system = text_field(row, "system", where, required=False)
    if system and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


def _sharegpt(row: dict[str, Any], where: str) -> dict[str, Any]:
    if "chosen" in row and "rejected" in row:
        raise DataError(f"{where}: the row has chosen and rejected answers; read it as preference pairs with "
                        'data.format = "sharegpt_preference" (or "auto")')
    return _with_tools(_dialogue(_sharegpt_history(row, where), where, "conversations"), row, where)


def _sharegpt_preference(row: dict[str, Any], where: str) -> dict[str, Any]:
    """LLaMA-Factory's preference layout: the conversation, then ``chosen`` and ``rejected`` as single turns."""
    history = _sharegpt_history(row, where)
    answers = []
    for key in ("chosen", "rejected"):
        message = sharegpt_messages(row.get(key), where, key)
        if len(message) != 1 or message[0]["role"] != "assistant" or not message[0]["content"].strip():
            raise DataError(f"{where}: {key!r} must be one assistant turn {{from: gpt, value: text}}, got {clip(row.get(key))}")
        answers.append(message[0]["content"])
    return _with_tools(conversation(history, answers[0], where), row, where) | {"chosen": answers[0], "rejected": answers[1]}


def _sharegpt_unpaired(row: dict[str, Any], where: str) -> dict[str, Any]:
    return _sharegpt(row, where) | {"label": _label(row, where)}


CHAT = frozenset({"instruction", "output", "context"})
CORE_FORMATS = [
    DataFormat("prompt_completion", ("prompt", "completion"), _prompt_completion,
               description="prompt and completion: text, or chat messages (TRL conversational)"),
    DataFormat("alpaca", ("instruction", "output"), _alpaca, description="instruction, optional input, output (LLaMA-Factory: system, history)",
               template=(ALPACA_TEMPLATE, ALPACA_TEMPLATE_NO_INPUT)),
    DataFormat("dolly", ("instruction", "response"), _dolly, description="instruction, optional context, response",
               template=(ALPACA_TEMPLATE, ALPACA_TEMPLATE_NO_INPUT)),
    DataFormat("messages", ("messages",), _messages, CHAT,
               "chat messages (OpenAI/TRL: tool_calls, tool role, tools column), the last one the assistant's answer"),
    DataFormat("sharegpt", ("conversations",), _sharegpt, CHAT,
               "ShareGPT turns {from: human|gpt|system|function_call|observation, value}, optional system and tools"),
    DataFormat("preference", ("chosen", "rejected"), _preference, frozenset({"instruction", "output", "chosen", "rejected"}),
               "prompt (or instruction, or implicit), chosen, rejected: text or chat messages"),
    DataFormat("sharegpt_preference", ("conversations", "chosen", "rejected"), _sharegpt_preference,
               frozenset({"instruction", "output", "context", "chosen", "rejected"}),
               "ShareGPT conversation, chosen and rejected {from: gpt, value} turns (LLaMA-Factory)"),
    DataFormat("unpaired", ("prompt", "completion", "label"), _unpaired, frozenset({"instruction", "output", "label"}),
               "prompt, one completion (text or chat) and whether it is good (label)"),
    DataFormat("messages_unpaired", ("messages", "label"), _unpaired_messages, CHAT | {"label"},
               "chat messages whose last answer is judged by label (LLaMA-Factory KTO)"),
    DataFormat("sharegpt_unpaired", ("conversations", "label"), _sharegpt_unpaired, CHAT | {"label"},
               "ShareGPT conversation whose last answer is judged by label"),
    DataFormat("alpaca_unpaired", ("instruction", "output", "label"), _unpaired_alpaca, frozenset({"instruction", "output", "label"}),
               "instruction, optional input, output judged by label", template=(ALPACA_TEMPLATE, ALPACA_TEMPLATE_NO_INPUT)),
    DataFormat("text", ("text",), _text, frozenset({"output"}), "plain text, learned whole (no prompt); long texts are chunked"),
]
