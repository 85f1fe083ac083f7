"""Keeping secrets out of what a run writes: argv in ``env.json``, ``run.log``, the resolved recipe.

Tokens belong in the environment (``HF_TOKEN``, ``WANDB_API_KEY``…), where the libraries read
them; ptrain never copies them. What a user types anyway (``--set hub.token=hf_…``) is masked
before it reaches a file: values of secret-looking keys, strings shaped like known tokens, and
the literal values of secret-looking environment variables.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

MASK = "***"
SECRET_NAME = re.compile(r"token|secret|passw(or)?d|api[_-]?key|credential", re.IGNORECASE)
"""Environment variables whose values are secrets (HF_TOKEN, WANDB_API_KEY…): their values are masked wherever they appear."""
SECRET_KEY = re.compile(
    r"(^|[_.-])(token|auth[_-]?token|access[_-]?token|api[_-]?key|apikey|secret|secret[_-]?key|client[_-]?secret"
    r"|passw(or)?d|credentials?)$",
    re.IGNORECASE,
)
"""Keys and options that are secrets by name: ``hf_token``, ``hub.token``, ``--hub-token``, ``api_key``, ``password``…
A key that merely contains the word (``max_new_tokens``, ``tokenizer``) is not one."""
TOKEN_SHAPES = re.compile(
    r"\b(hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|xox[abpr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|glpat-[A-Za-z0-9_-]{16,})"
)
TOML_LINE = re.compile(r"^(\s*)([\w\"'.-]+?)(\s*=\s*)(.+)$", re.MULTILINE)


def _environment_secrets() -> list[str]:
    return sorted(
        (value for name, value in os.environ.items() if SECRET_NAME.search(name) and len(value) >= 8),
        key=len,
        reverse=True,
    )


def redact(text: str) -> str:
    """``text`` with token-shaped strings and secret environment values replaced by ``***``."""
    for value in _environment_secrets():
        text = text.replace(value, MASK)
    return TOKEN_SHAPES.sub(MASK, text)


def secret_key(key: str) -> bool:
    """Whether a recipe key, ``--set`` path or command-line option names a secret (its last part does)."""
    return bool(SECRET_KEY.search(key.strip().strip("\"'").lstrip("-")))


def redact_argv(argv: Iterable[str]) -> list[str]:
    """Command-line arguments with the values of secret options and ``--set`` keys masked."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        key, sep, _ = arg.partition("=")
        if sep and secret_key(key):
            out.append(f"{key}={MASK}")
            continue
        if arg.startswith("-") and not sep and secret_key(arg):
            hide_next = True
        out.append(redact(arg))
    return out


def redact_toml(text: str) -> str:
    """A TOML document with the values of secret keys and token-shaped strings masked; other keys stay
    as they are, so the resolved recipe still validates and reproduces the run."""
    return redact(TOML_LINE.sub(lambda m: f'{m.group(1)}{m.group(2)}{m.group(3)}"{MASK}"' if secret_key(m.group(2)) else m.group(0), text))


class RedactingFilter(logging.Filter):
    """Masks secrets in log records before a handler writes them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let the handler report it as usual
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
