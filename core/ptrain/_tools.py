"""Tools: the core's built-ins, and the collection a recipe's plugins register.

A tool is a Python function a model calls while it answers (``[grpo] tools = ["calculator"]``): the
rollout parses the call from the generated text, runs the function and feeds its result back through
the chat template. The core registers the built-ins below through its own ``tools`` hook, like any
plugin: they serve the core's own tasks (a calculator for ``arithmetic``, a type lookup for ``avro``),
and a plugin adds more under names of its own. Nothing heavy is imported here: a tool's schema is
checked from its signature and docstring as transformers will read them, so a tool transformers
cannot describe fails at ``ptrain validate``, not mid-run.
"""

from __future__ import annotations

import ast
import inspect
import operator
import re
from typing import Any

from ptrain._rewards import collect_named, unknown_name
from ptrain._tasks import AVRO_WORDS
from ptrain._types import Tool

MAX_EXPRESSION = 200
"""Characters a calculator expression may have: long enough for any task, too short to hang the rollout."""
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
SIGNS = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression of numbers, + - * / and parentheses.

    Args:
        expression: The expression to evaluate, e.g. "12 + 7 * (3 - 1)".
    """
    if len(expression) > MAX_EXPRESSION:
        raise ValueError(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    value = _evaluate(tree.body)
    if isinstance(value, int) or value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return f"{value:.6g}"


def _evaluate(node: ast.AST) -> float:
    """Numbers and + - * / only (no names, calls, powers or attributes): the parsed tree is walked, never ``eval``-ed."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ValueError("division by zero")
        return OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in SIGNS:
        return SIGNS[type(node.op)](_evaluate(node.operand))
    raise ValueError(f"only numbers, + - * / and parentheses are allowed, not {ast.unparse(node)!r}")


AVRO_TYPES = {words: avro for avro, words in AVRO_WORDS.items()}


def avro_type(description: str) -> str:
    """The AVRO primitive type for a field described in plain words.

    Args:
        description: How the field is described, e.g. "long integer", "text" or "true/false flag".
    """
    key = description.strip().strip("()").lower()
    if key in AVRO_TYPES:
        return AVRO_TYPES[key]
    if key in AVRO_WORDS:  # already a type name
        return key
    raise ValueError(f"no AVRO type is described as {description!r}; known: {', '.join(sorted(AVRO_TYPES))}")


CORE_TOOLS = [
    Tool("calculator", calculator, "evaluates + - * / and parentheses (the arithmetic task); no code is run"),
    Tool("avro_type", avro_type, "the AVRO type of a field described in words (the avro task)"),
]


def tool_problem(tool: Tool) -> str | None:
    """Why transformers could not describe ``tool`` to a model (as ``get_json_schema`` would refuse it), or None:
    a docstring with a summary, and every argument type-hinted and described under ``Args:``."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", tool.name):
        return "its name must be letters, digits, _ and - (the model writes it in its call)"
    function = tool.function
    if not inspect.isfunction(function):
        return f"its function is a {type(function).__name__}, not a plain Python function (def ...)"
    doc = inspect.getdoc(function) or ""
    if not doc.strip():
        return "its function has no docstring: the model reads the tool's description and arguments from it"
    described = set(re.findall(r"^\s+(\w+)\s*(?:\([^)]*\))?:", doc.partition("Args:")[2], flags=re.MULTILINE))
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            return f"its function takes *{parameter.name}: every argument must be named, typed and described"
        if parameter.annotation is inspect.Parameter.empty:
            return f"argument {parameter.name!r} has no type hint (the model is told each argument's JSON type)"
        if parameter.name not in described:
            return f"argument {parameter.name!r} is not described under 'Args:' in the docstring (Google style)"
    return None


def collect(by_plugin: dict[str, list[Tool]]) -> dict[str, tuple[str, Tool]]:
    """Name -> (plugin, tool); a name two plugins register, or a tool transformers cannot describe, is a RecipeError."""
    return collect_named(by_plugin, Tool, "tool", tool_problem)


def unknown(name: str, known: list[str], providers: list[str]) -> str:
    """The message for a tool name no plugin of the recipe registers."""
    return unknown_name("tool", "tools", name, known, providers)


def run_tool(tools: dict[str, Any], name: str, arguments: Any) -> tuple[str, bool]:
    """``(result text, ok)`` of one parsed call: the tool's result, or the error fed back to the model as TRL does."""
    if name not in tools:
        return str({"error": f"Tool {name} not found."}), False
    try:
        return str(tools[name](**(arguments if isinstance(arguments, dict) else {}))), True
    except Exception as err:  # a tool's failure is the model's to see, never the run's
        return str({"error": str(err)}), False


def describe(value: Any) -> Any:
    """A tool call's arguments as the rollout log keeps them (JSON-safe)."""
    return value if isinstance(value, (dict, list, str, int, float, bool)) or value is None else str(value)
