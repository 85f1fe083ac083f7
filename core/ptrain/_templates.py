"""Chat templates and tool calls: a recipe's ``data.chat_template``, and the check that a template renders
a row's tools and tool calls, made at ``ptrain validate`` without importing transformers.

The template is rendered with jinja2 directly, as transformers renders it (sandboxed, ``tojson``,
``raise_exception``, ``{% generation %}`` blocks kept): the recipe's, else the model's own
(``chat_template.jinja`` or ``tokenizer_config.json`` of a ``builtin:`` model, a local directory or a
hub model already in the cache). A model whose template cannot be read here (a hub model not yet
downloaded) is checked the same way at the start of the run, on the tokenizer's own rendering,
before training.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from ptrain._errors import DataError, RecipeError
from ptrain._formats import calls_text, clip, tool_names
from ptrain._sections import read_template

GENERATION_TAGS = re.compile(r"\{%-?\s*(end)?generation\s*-?%\}")
Render = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None, bool], str]
"""``render(messages, tools, add_generation_prompt)`` -> text."""
CHECKED_ROWS = 200
"""Rows with tools or tool calls checked per source at ``ptrain validate``."""


def jinja_renderer(template: str, bos: str = "", eos: str = "") -> Render:
    """A function rendering messages with ``template`` as ``apply_chat_template(..., tokenize=False)`` does."""
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    compiled = env.from_string(GENERATION_TAGS.sub("", template))

    def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, add_generation_prompt: bool) -> str:
        return compiled.render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                               bos_token=bos, eos_token=eos)

    return render


def tokenizer_renderer(tokenizer: Any) -> Render:
    """The same, through ``tokenizer.apply_chat_template`` (``tools`` passed only when the row has them)."""

    def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, add_generation_prompt: bool) -> str:
        extra = {"tools": tools} if tools else {}
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)

    return render


def model_template(name: str) -> tuple[str, str, str] | None:
    """``(template, bos, eos)`` of model ``name`` read from its files, or None where only loading it can tell."""
    from ptrain import _paths
    from ptrain._models import ASSETS, BUILTIN_MODELS

    folder: Path | None = None
    if name.startswith(_paths.BUILTIN):
        builtin = name.removeprefix(_paths.BUILTIN)
        spec = BUILTIN_MODELS.get(builtin)
        if spec is None:
            return _gguf_template(builtin)
        folder = ASSETS / spec.get("tokenizer", builtin)
    elif _paths.is_local(name):
        folder = _paths.model_dir(name)
    else:
        folder = _cached_hub_folder(name)
    if folder is None:
        return None
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    config = config if isinstance(config, dict) else {}
    template = None
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif isinstance(config.get("chat_template"), str):
        template = config["chat_template"]
    elif isinstance(config.get("chat_template"), list):  # named templates: the default one
        template = next((t.get("template") for t in config["chat_template"] if isinstance(t, dict) and t.get("name") == "default"), None)
    if not template:
        return None

    def token(key: str) -> str:
        value = config.get(key)
        return value if isinstance(value, str) else value.get("content", "") if isinstance(value, dict) else ""

    return template, token("bos_token"), token("eos_token")


def _gguf_template(builtin: str) -> tuple[str, str, str] | None:
    """The chat template in the metadata of a GGUF-backed ``builtin:`` model (read with ``gguf``, no torch)."""
    from ptrain._models import PRETRAINED_OFFLINE, gguf_file

    if builtin not in PRETRAINED_OFFLINE:
        return None
    try:
        import gguf

        fields = gguf.GGUFReader(gguf_file(builtin)).fields
        found = fields["tokenizer.chat_template"]
        return bytes(found.parts[found.data[0]]).decode("utf-8"), "", ""
    except Exception:  # not installed or unreadable here: checked on the tokenizer at the start of the run
        return None


def _cached_hub_folder(name: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for filename in ("tokenizer_config.json", "chat_template.jinja"):
        found = try_to_load_from_cache(name, filename)
        if isinstance(found, str):
            return Path(found).parent
    return None


def tool_problem(render: Render, row: dict[str, Any], prompt: str, answer: str) -> str | None:
    """What ``render`` lost of ``row``'s tools and tool calls (its rendering equals one without them), or None."""
    context, tools = row["context"], row.get("tools") or None
    missing = []
    if tools and render(context, None, True) == prompt:
        missing.append(f"the tools ({', '.join(tool_names(tools))})")
    if any(m.get("tool_calls") for m in context) and render([_no_calls(m) for m in context], tools, True) == prompt:
        missing.append("the conversation's tool calls")
    if row.get("tool_calls"):
        bare = render_turn(render, row | {"tool_calls": None, "output": answer_message(row)["content"]})[1]
        if bare == answer or not answer.strip():
            names = ", ".join(c["function"]["name"] for c in row["tool_calls"])
            missing.append(f"the answer's tool calls ({names}){' (an empty assistant turn)' if not bare.strip() else ''}")
    return "; ".join(missing) or None


def _no_calls(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "tool_calls"}


def has_tools(row: dict[str, Any]) -> bool:
    return bool(row.get("tools") or row.get("tool_calls") or any(m.get("tool_calls") for m in row.get("context") or []))


def tools_error(where: str, owner: str, problem: str) -> DataError:
    return DataError(
        f"{where}: {owner}'s chat template does not render {problem}: training would see an empty or tool-less turn; "
        "set data.chat_template to a Jinja template (file or text) that renders tools and tool_calls")


def answer_message(row: dict[str, Any]) -> dict[str, Any]:
    """The assistant message a conversation row's answer is (with its tool calls)."""
    calls = row.get("tool_calls")
    message: dict[str, Any] = {"role": "assistant", "content": "" if calls and row["output"] == calls_text(calls) else row["output"]}
    if row.get("tool_calls"):
        message["tool_calls"] = row["tool_calls"]
    return message


def render_turn(render: Render, row: dict[str, Any]) -> tuple[str, str]:
    """``(prompt, answer)`` of a conversation row whose answer has tool calls: the answer as the template renders it."""
    tools = row.get("tools") or None
    prompt = render(row["context"], tools, True)
    full = render([*row["context"], answer_message(row)], tools, False)
    if not full.startswith(prompt):
        common = next((i for i, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b), len(prompt))
        return prompt, full[common:]
    return prompt, full[len(prompt):]


def check_recipe(recipe: Any) -> None:
    """At ``ptrain validate``: ``data.chat_template`` renders a row, and the template in use renders every
    checked row's tools and tool calls (a DataError naming the model, or the key, and the row)."""
    section = recipe.data
    model = recipe.model.tokenizer or recipe.model.name
    parts = [p for s in (recipe.data_plan.sources if recipe.data_plan else []) for p in (s.train, s.eval) if p is not None]
    rows = [(where, row) for p in parts for where, row in zip(p.wheres or [], p.rows or p.sample or [], strict=False)]
    conversations = [(w, r) for w, r in rows if r.get("context")]
    with_tools = [(w, r) for w, r in conversations if has_tools(r)][:CHECKED_ROWS]
    custom = read_template(section.chat_template) if section.chat_template else None
    if custom is None and not with_tools:
        return
    owner = "data.chat_template" if custom else f"model {model}"
    try:
        if custom is not None:
            render = jinja_renderer(custom)
        else:
            found = model_template(model)
            if found is None:
                return  # checked on the tokenizer's own rendering at the start of the run
            render = jinja_renderer(*found)
    except Exception as err:  # a template that does not compile
        raise RecipeError(f"the chat template does not compile ({clip(str(err))}); fix the Jinja", key="data.chat_template") from None
    if custom is not None:
        where, row = conversations[0] if conversations else ("a sample row", {"context": [{"role": "user", "content": "Hi"}], "output": "Hello"})
        try:
            render(row["context"], row.get("tools") or None, True)
        except Exception as err:
            raise RecipeError(f"rendering {where} fails ({clip(str(err))}); fix the template", key="data.chat_template") from None
    for where, row in with_tools:
        try:
            prompt, answer = render_turn(render, row)
        except Exception as err:
            raise DataError(f"{where}: {owner}'s chat template fails on this row ({clip(str(err))})") from None
        problem = tool_problem(render, row, prompt, answer)
        if problem:
            raise tools_error(where, owner, problem)


PROBE_TOOL = {"type": "function", "function": {"name": "probe_tool_x7", "description": "probe",
              "parameters": {"type": "object", "properties": {"probe_arg_y8": {"type": "string"}}, "required": ["probe_arg_y8"]}}}
PROBE_CALL = {"type": "function", "function": {"name": "probe_tool_x7", "arguments": {"probe_arg_y8": "probe_value_z9"}}}


def tool_rendering_problem(render: Render) -> str | None:
    """What a template loses of a tool-calling exchange (tools in the prompt, the assistant's call, the tool's
    result), as TRL's ``supports_tool_calling`` checks it, or None when it renders all of it."""
    user = [{"role": "user", "content": "Hi"}]
    exchange = [*user, {"role": "assistant", "content": "", "tool_calls": [PROBE_CALL]},
                {"role": "tool", "name": "probe_tool_x7", "content": "probe_result_w6"}]
    try:
        missing = ["the tools"] if render(user, [PROBE_TOOL], True) == render(user, None, True) else []
        text = render(exchange, [PROBE_TOOL], True)
    except Exception as err:
        return f"a tool-calling conversation ({clip(str(err))})"
    if "probe_value_z9" not in text:
        missing.append("the assistant's tool calls")
    if "probe_result_w6" not in text:
        missing.append("the tool's results")
    return ", ".join(missing) or None


def check_tool_template(recipe: Any, key: str) -> None:
    """At ``ptrain validate``, for a method that lets the model call tools: the chat template the run will use
    (``data.chat_template``, else the model's own) renders the tools, the calls and their results; otherwise a
    RecipeError for ``key`` saying how to fix it. A template that cannot be read here (a hub model not yet
    downloaded) is checked at the start of the run, on the tokenizer."""
    custom = read_template(recipe.data.chat_template) if recipe.data.chat_template else None
    model = recipe.model.tokenizer or recipe.model.name
    found = (custom, "", "") if custom is not None else model_template(model)
    if found is None:
        return
    try:
        render = jinja_renderer(*found)
    except Exception as err:
        raise RecipeError(f"the chat template does not compile ({clip(str(err))}); fix the Jinja", key="data.chat_template") from None
    problem = tool_rendering_problem(render)
    if problem:
        owner = "data.chat_template" if custom is not None else f"model {model}'s chat template"
        raise RecipeError(
            f"{owner} does not render {problem}: the model could not see or call the tools; set data.chat_template to a "
            "template that renders tools and tool_calls (recipes/tools/chatml_tools.jinja is one)",
            key=key,
        )
