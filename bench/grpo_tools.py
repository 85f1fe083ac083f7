"""GRPO with a calculator tool: the warm-start data, and the base -> tuned table of a tool run.

    python bench/grpo_tools.py --make-data      # (re)writes recipes/tools/calculator_sft.jsonl (seeded)
    python bench/grpo_tools.py RUN_DIR          # prints a finished tool run's held-out table

A model calls a tool only once it has seen calls: ``recipes/sft_tools_tiny.toml`` first teaches the tiny
llama the exchange on builtin arithmetic prompts (the user turn as ``builtin:tasks`` with ``data.chat``
writes it; the call ``calculator({"expression": "<the sum>"})``; the tool's result; the result as the
answer), then ``recipes/grpo_tools_tiny.toml`` samples rollouts that call the real calculator. Half the
rows end with the call (the answer to learn is the call), half go on to the answer after the result.
The ``tools`` column is the built-in tool's own schema, so the warm start sees what the rollouts render.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "recipes" / "tools" / "calculator_sft.jsonl"


def make_data(count: int = 400, seed: int = 11) -> None:
    from ptrain import TASKS, generate_tasks
    from ptrain._tools import CORE_TOOLS, calculator

    tool = next(t for t in CORE_TOOLS if t.name == "calculator")
    schema = tool.schema()
    rng = random.Random(seed)
    lines = []
    for row in generate_tasks(["arithmetic"], count, seed=seed):
        user = {"role": "user", "content": f"{TASKS['arithmetic'].instructions[0]}\n\n{row['input']}"}
        call = {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "calculator", "arguments": {"expression": row["input"]}}}]}
        messages = [user, call]
        if rng.random() < 0.5:
            result = calculator(row["input"])
            messages += [{"role": "tool", "name": "calculator", "content": result}, {"role": "assistant", "content": result}]
        lines.append(json.dumps({"messages": messages, "tools": [schema]}))
    DATA.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} conversations to {DATA.relative_to(ROOT)}")


def table(run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("rewards", "tool_call_rate", "tool_use_correct", "tool_calls_per_answer", "completion_length"):
        print(f"{key:24} {metrics['base'].get(key)!s:>32} -> {metrics['final'].get(key)!s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path)
    parser.add_argument("--make-data", action="store_true")
    args = parser.parse_args()
    if args.make_data:
        make_data()
    elif args.run:
        table(args.run)
    else:
        parser.print_help()
        sys.exit(2)


if __name__ == "__main__":
    main()
