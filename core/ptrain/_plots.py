"""PNG charts written into run directories (matplotlib, headless)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from ptrain._artifacts import write_bytes

REWARD = re.compile(r"^(?:eval_)?(?:reward|mean_reward|rewards/.+)$")
"""Logged reward series: RL trainers log ``reward`` and ``rewards/<function>/mean`` per step, preference
trainers ``rewards/chosen``/``rejected``/``margins``, reward-model trainers ``mean_reward``."""
PANELS = (
    ("loss", lambda key: key in ("loss", "eval_loss")),
    ("reward", lambda key: bool(REWARD.match(key)) and not key.endswith("/std")),
    ("KL to the reference", lambda key: key in ("kl", "eval_kl")),
    ("completion length (tokens)", lambda key: key in ("completions/mean_length", "eval_completions/mean_length")),
)


def series(log_history: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Panel title -> logged key -> ``[(step, value)]``, for the panels whose keys were logged."""
    found: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            for title, wanted in PANELS:
                if wanted(key):
                    found.setdefault(title, {}).setdefault(key, []).append((step, float(value)))
                    break
    return {title: found[title] for title, _ in PANELS if title in found}


def loss_curve(log_history: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Train (and eval) loss against optimizer steps, and next to it whatever else the trainer logged
    that tells how training went: rewards (RL and preference methods), KL to the reference, completion length."""
    panels = series(log_history)
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 + 4 * (len(panels) - 1), 4), dpi=100, squeeze=False)
    for axis, (name, lines) in zip(axes[0], panels.items(), strict=True):
        for key, points in lines.items():
            label = {"loss": "train loss", "eval_loss": "eval loss"}.get(key, key)
            axis.plot(*zip(*points, strict=True), marker="o" if key.startswith("eval_") else None, label=label)
        axis.set_xlabel("step")
        axis.set_ylabel(name)
        axis.set_title((title or "loss") if name == "loss" else name)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())  # never a half-written PNG
    return path
