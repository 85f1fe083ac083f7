"""Keeping secrets out of what a run writes or a user publishes: the one redaction pass.

Every writer goes through it: :func:`ptrain.write_text` / :func:`ptrain.write_json` (model cards of every
export, ``metrics.json``, ``env.json``, ``log_history.json``, ``report.html``…), the run log's handler,
the resolved recipe, the trackers' parameters and summaries (TensorBoard, MLflow, W&B), and a last
sweep over the small text files libraries wrote into the run directory (``adapter_config.json``…).

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
from pathlib import Path
from typing import Any

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
    r"(?<![A-Za-z0-9])(hf_[A-Za-z0-9]{16,}|sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{16,}|rk_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|xox[abpr]-[A-Za-z0-9-]{10,}|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|glpat-[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{30,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})"
    r"|(?<=[Bb]earer )[A-Za-z0-9._~+/=-]{16,}"
)
AWS_SECRET = re.compile(r"(?i)(aws_secret_access_key[\"']?\s*[=:]\s*[\"']?)[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])")
"""Strings shaped like known tokens: Hugging Face (``hf_``), OpenAI and Anthropic (``sk-``, ``sk-proj-``),
GitHub, Slack, AWS access keys (and a secret key after its name), GitLab, Google API keys, JWTs and
bearer tokens. They are masked wherever they appear, a directory name in a data path included."""
SCRUBBED = frozenset({".json", ".jsonl", ".md", ".txt", ".toml", ".yaml", ".yml", ".html", ".csv", ".cfg", ".ini"})
"""Suffixes of the text files :func:`scrub_files` redacts (not ``run.log``: its handler redacts, and holds it open)."""
TOML_LINE = re.compile(r"^(\s*)([\w\"'.-]+?)(\s*=\s*)(.+)$", re.MULTILINE)


def _environment_secrets() -> list[str]:
    return sorted(
        (value for name, value in os.environ.items() if SECRET_NAME.search(name) and len(value) >= 8),
        key=len,
        reverse=True,
    )


def redact(text: str) -> str:
    """``text`` with token-shaped strings and secret environment values replaced by ``***``."""
    if not isinstance(text, str):
        return text
    for value in _environment_secrets():
        text = text.replace(value, MASK)
    return AWS_SECRET.sub(lambda m: m.group(1) + MASK, TOKEN_SHAPES.sub(MASK, text))


def redact_data(data: Any) -> Any:
    """A copy of JSON-like ``data`` with the values of secret keys masked and every string redacted."""
    if isinstance(data, dict):
        return {redact(str(k)) if isinstance(k, str) else k: MASK if isinstance(k, str) and secret_key(k) and v not in (None, "")
                else redact_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(v) for v in data]
    return redact(data) if isinstance(data, str) else data


def scrub_files(folder: str | Path, limit_bytes: int = 16 << 20) -> list[Path]:
    """Redact in place the small text files under ``folder`` that libraries wrote without ptrain's writers
    (``config.json``, ``adapter_config.json``, ``trainer_state.json``…); the files changed."""
    changed = []
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix not in SCRUBBED or not path.is_file() or path.is_symlink() or path.stat().st_size > limit_bytes:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        cleaned = redact(text)
        if cleaned != text:
            tmp = path.with_name(f".{path.name}.redacted")
            tmp.write_text(cleaned, encoding="utf-8")
            os.replace(tmp, path)  # never a half-written file (ptrain._artifacts imports this module: no import back)
            changed.append(path)
    return changed


SPECIAL_TOKEN_KEY = re.compile(r"(^|[_.-])(pad|eos|bos|unk|mask|sep|cls|start|end|image|audio|video|boi|eoi|think)_token$", re.IGNORECASE)
"""Tokenizer settings (``pad_token``, ``eos_token``…): named like secrets, and not secrets."""


def secret_key(key: str) -> bool:
    """Whether a recipe key, ``--set`` path or command-line option names a secret (its last part does)."""
    name = key.strip().strip("\"'").lstrip("-")
    return bool(SECRET_KEY.search(name)) and not SPECIAL_TOKEN_KEY.search(name)


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
