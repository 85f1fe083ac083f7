"""Typed validation of recipe sections against dataclasses.

A section schema is a plain dataclass: its fields are the keys, their type hints the accepted
types, their defaults the defaults. This module turns a TOML table into an instance of it, or
raises :class:`RecipeError` naming the file, the key path, the expected type and, for unknown
keys, the closest known key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

from ptrain._errors import RecipeError

SourceOf = Callable[[str], str]
"""Maps a dotted key path to the file (or ``--set``) it came from."""


def suggest(word: str, candidates: list[str]) -> str:
    """A ``"; did you mean 'x'?"`` suffix, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def show(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for one-line messages (never raises)."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return "a number too large to show"
    return text if len(text) <= limit else text[: limit - 5] + "…" + text[-4:]


def type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if hint is type(None):
        return "nothing"
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint) if a is not type(None))
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return f"a list of {type_name(item)}"
    if origin is dict:
        return "a table"
    if dataclasses.is_dataclass(hint):
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _convert(value: Any, hint: Any, key: str, source: SourceOf) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)

    def fail() -> typing.NoReturn:
        raise RecipeError(
            f"expected {type_name(hint)}, got {show(value)} ({type(value).__name__})",
            source=source(key),
            key=key,
        )

    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except RecipeError:
                continue
        fail()
    if origin is Literal:
        if value in args:
            return value
        raise RecipeError(
            f"expected one of {', '.join(repr(a) for a in args)}, got {show(value)}{suggest(show(value), [str(a) for a in args])}",
            source=source(key),
            key=key,
        )
    if origin in (list, tuple):
        if not isinstance(value, list):
            fail()
        item = args[0] if args else Any
        return [_convert(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            fail()
        item = args[1] if len(args) == 2 else Any
        return {k: _convert(v, item, f"{key}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            fail()
        return build(hint, value, key, source)
    if hint is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        if not -(2**63) <= value < 2**63:
            raise RecipeError(f"{show(value)} is out of range (a 64-bit integer)", source=source(key), key=key)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        if isinstance(value, int) and abs(value) >= 2**1023 or not math.isfinite(float(value)):
            raise RecipeError(f"expected a finite number, got {show(value)}", source=source(key), key=key)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            fail()
        return value
    raise TypeError(f"schema type {hint!r} at {key} is not supported")


def build(schema: type, table: Mapping[str, Any], prefix: str, source: SourceOf) -> Any:
    """Validate ``table`` against the dataclass ``schema`` and return an instance of it."""
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    kwargs = {}
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise RecipeError(
                f"unknown key{suggest(key, list(fields))} (known keys: {', '.join(fields)})",
                source=source(path),
                key=path,
            )
        kwargs[key] = _convert(value, hints[key], path, source)
    for name, field in fields.items():
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            path = f"{prefix}.{name}" if prefix else name
            raise RecipeError(
                f"required key is missing (expected {type_name(hints[name])})", source=source(prefix), key=path
            )
    instance = schema(**kwargs)
    check = getattr(instance, "validate", None)
    if callable(check):
        try:
            check()
        except RecipeError as err:
            if err.source is None and err.key:
                full = f"{prefix}.{err.key}" if prefix else err.key
                raise RecipeError(err.detail, source=source(full), key=full) from None
            raise
    return instance


def to_table(instance: Any) -> dict[str, Any]:
    """A dataclass instance as a TOML-ready table (None values dropped, TOML has no null)."""

    def clean(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {k: clean(v) for k, v in dataclasses.asdict(value).items() if v is not None}
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(instance)
