"""SmolLM2-135M-Instruct learns to call tools: base vs LoRA-tuned on held-out conversations.

    python bench/tool_calling.py --make-data     # (re)writes recipes/tools/{train,heldout}.jsonl (seeded)
    python bench/tool_calling.py                 # runs recipes/tools/smollm2_tools.toml, prints the table

The data: two tools (``calculator`` with an operation and two integers, ``lookup_schema`` with an entity
name), OpenAI/TRL ``messages`` with ``tool_calls`` and a ``tools`` column. Half the training
conversations go on after the call (the tool's result, then the assistant's answer): the call is then
an earlier assistant turn, trained too. Held-out conversations use other numbers, other entities and
phrasings never trained on, and end with the call to make. SmolLM2's own chat template ignores tools,
so the recipe gives one that renders them (``data.chat_template``). Scored on the held-out generations
of the run (``samples.jsonl``): the answer parses as a tool call (valid JSON), names the right tool,
and has exactly the right arguments.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT / "recipes" / "tools"
RECIPE = DATA / "smollm2_tools.toml"

TOOLS = [
    {"type": "function", "function": {
        "name": "calculator", "description": "Compute a + b, a - b or a * b",
        "parameters": {"type": "object", "properties": {
            "operation": {"type": "string", "enum": ["add", "subtract", "multiply"]},
            "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["operation", "a", "b"]}}},
    {"type": "function", "function": {
        "name": "lookup_schema", "description": "The AVRO schema of a record type",
        "parameters": {"type": "object", "properties": {"entity": {"type": "string"}}, "required": ["entity"]}}},
]
OPS = {"add": ("plus", "+", lambda a, b: a + b), "subtract": ("minus", "-", lambda a, b: a - b), "multiply": ("times", "*", lambda a, b: a * b)}
TRAIN_MATH = ["What is {a} {word} {b}?", "Compute {a} {sym} {b}.", "Please work out {a} {word} {b}.", "{a} {sym} {b} = ?"]
HELD_MATH = ["Could you tell me {a} {word} {b}?", "I need {a} {sym} {b}."]
TRAIN_SCHEMA = ["Show me the schema of {e}.", "What fields does the {e} record have?", "Look up the {e} schema."]
HELD_SCHEMA = ["Which schema describes {e}?", "I need the record layout for {e}."]
TRAIN_ENTITIES = ["Order", "Customer", "Invoice", "Product", "Shipment", "Payment", "Employee", "Supplier", "Warehouse", "Ticket"]
HELD_ENTITIES = ["Account", "Booking", "Vehicle", "Patient"]


def call(name: str, arguments: dict) -> dict:
    return {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


def conversation(rng: random.Random, held_out: bool) -> dict:
    if rng.random() < 0.6:
        op = rng.choice(list(OPS))
        word, sym, fn = OPS[op]
        a, b = (rng.randint(20, 99), rng.randint(20, 99)) if held_out else (rng.randint(1, 19), rng.randint(1, 19))
        question = rng.choice(HELD_MATH if held_out else TRAIN_MATH).format(a=a, b=b, word=word, sym=sym)
        messages = [{"role": "user", "content": question}, call("calculator", {"operation": op, "a": a, "b": b})]
        result, answer = str(fn(a, b)), f"{a} {word} {b} is {fn(a, b)}."
    else:
        entity = rng.choice(HELD_ENTITIES if held_out else TRAIN_ENTITIES)
        question = rng.choice(HELD_SCHEMA if held_out else TRAIN_SCHEMA).format(e=entity)
        messages = [{"role": "user", "content": question}, call("lookup_schema", {"entity": entity})]
        result = json.dumps({"type": "record", "name": entity, "fields": [{"name": "id", "type": "long"}]})
        answer = f"The {entity} record has one field, id (a long)."
    if not held_out and rng.random() < 0.5:  # the call is an earlier turn: trained as well
        messages += [{"role": "tool", "name": messages[-1]["tool_calls"][0]["function"]["name"], "content": result},
                     {"role": "assistant", "content": answer}]
    return {"messages": messages, "tools": TOOLS}


def make_data(train: int = 240, held_out: int = 40, seed: int = 0) -> None:
    rng = random.Random(seed)
    for name, count, held in (("train", train, False), ("heldout", held_out, True)):
        rows = [conversation(rng, held) for _ in range(count)]
        (DATA / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def parse(text: str) -> dict | None:
    """The first tool call in a generation: ``<tool_call>{…}</tool_call>``, or a bare JSON object."""
    found = re.search(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", text, re.S) or re.search(r"(\{.*\})", text, re.S)
    if not found:
        return None
    try:
        value = json.loads(found.group(1))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def score(samples: list[dict], key: str) -> dict:
    valid = right_tool = right_args = 0
    for sample in samples:
        expected, got = parse(sample["reference"]), parse(sample[key])
        valid += got is not None
        right_tool += got is not None and got.get("name") == expected["name"]
        right_args += got is not None and got.get("name") == expected["name"] and got.get("arguments") == expected["arguments"]
    n = len(samples)
    return {"valid tool-call JSON": valid / n, "right tool": right_tool / n, "right tool and arguments": right_args / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--make-data", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_tool_calling")
    parser.add_argument("--set", action="append", default=[], help="recipe overrides, as ptrain run --set")
    args = parser.parse_args()
    if args.make_data:
        make_data()
        return
    sys.path.insert(0, str(HERE))
    from _runs import ptrain_run

    metrics = ptrain_run("tools", RECIPE, args.set, args.out)
    samples = [json.loads(line) for line in (args.out / "samples.jsonl").read_text().splitlines()]
    base, tuned = score(samples, "base_generation"), score(samples, "generation")
    print(f"SmolLM2-135M-Instruct, {len(samples)} held-out conversations, {metrics['train']['steps']} LoRA steps "
          f"({metrics['train']['train_time_s']:.0f} s of training)")
    print("| | base | tuned |\n| --- | --- | --- |")
    for name in base:
        print(f"| {name} | {base[name]:.0%} | {tuned[name]:.0%} |")
    print(f"| eval loss | {metrics['base']['eval_loss']:.3f} | {metrics['final']['eval_loss']:.3f} |")
    for sample in samples[:3]:
        print(json.dumps({"reference": sample["reference"], "base": sample["base_generation"], "tuned": sample["generation"]}))


if __name__ == "__main__":
    main()
