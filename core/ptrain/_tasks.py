"""A seeded offline task generator whose answers can be checked exactly.

Each row has ``task``, ``instruction``, ``input`` and ``output``. Tasks: ``arithmetic`` (sums and
differences, scored by numeric match), ``reverse`` (spell words backwards), ``uppercase`` and ``avro`` (an AVRO record
schema from an entity description, as in the source material). Every task also has paraphrased
instruction wordings (used by template randomization) and a way to produce a plausible wrong
answer (used for preference pairs).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    instructions: tuple[str, ...]
    """The first wording is canonical; the rest are paraphrases."""
    make: Callable[[random.Random], tuple[str, str]]
    """rng -> (input, output)."""
    corrupt: Callable[[str, str, random.Random], str]
    """(input, output, rng) -> a plausible wrong output."""
    metric: str = "exact_match"


WORDS = (
    "apple river stone cloud tiger lemon pilot candle forest garden silver rocket window basket dragon marble "
    "planet violet copper harbor meadow pepper falcon winter summer orange castle bridge engine feather "
    "island jacket kettle ladder mirror needle pocket rabbit saddle ticket wagon yellow zebra anchor bottle "
    "cactus dinner eagle fabric guitar hammer insect jungle kitten lantern monkey nickel oyster parrot quartz "
    "ribbon spider turtle"
).split()
"""A fixed vocabulary: string tasks are compositions of known words, so held-out rows test
generalisation to new combinations (which tiny models can reach) rather than character copying."""


def _word(rng: random.Random, lo: int = 1, hi: int = 3) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    if rng.random() < 0.5:
        return f"{a} + {b}", str(a + b)
    a, b = max(a, b), min(a, b)
    return f"{a} - {b}", str(a - b)


def _arithmetic_wrong(_: str, output: str, rng: random.Random) -> str:
    return str(int(output) + rng.choice([-10, -2, -1, 1, 2, 10]))


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    return word, word[::-1]


def _reverse_wrong(inp: str, output: str, rng: random.Random) -> str:
    if rng.random() < 0.5 and inp != output:
        return inp
    letters = list(output)
    i = rng.randrange(len(letters) - 1)
    letters[i], letters[i + 1] = letters[i + 1], letters[i]
    wrong = "".join(letters)
    return wrong if wrong != output else output + "s"


def _uppercase(rng: random.Random) -> tuple[str, str]:
    words = _word(rng)
    return words, words.upper()


def _uppercase_wrong(inp: str, output: str, rng: random.Random) -> str:
    return rng.choice([inp, inp.capitalize() if inp.capitalize() != output else inp, output[:-1]])


ENTITIES = ["Customer", "Order", "Product", "Invoice", "Employee", "Shipment", "Account", "Ticket", "Device", "Payment"]
FIELDS = [
    ("id", "long"), ("name", "string"), ("email", "string"), ("active", "boolean"), ("price", "double"),
    ("quantity", "int"), ("created_at", "long"), ("country", "string"), ("score", "float"), ("notes", "string"),
    ("status", "string"), ("age", "int"),
]
AVRO_WORDS = {"long": "long integer", "string": "text", "boolean": "true/false flag", "double": "decimal number",
              "int": "integer", "float": "small decimal number"}


def _avro(rng: random.Random) -> tuple[str, str]:
    entity = rng.choice(ENTITIES)
    fields = rng.sample(FIELDS, rng.randint(2, 4))
    description = f"{entity} with " + ", ".join(f"{n} ({AVRO_WORDS[t]})" for n, t in fields)
    schema = {"type": "record", "name": entity, "fields": [{"name": n, "type": t} for n, t in fields]}
    return description, json.dumps(schema, separators=(", ", ": "))


def _avro_wrong(_: str, output: str, rng: random.Random) -> str:
    schema = json.loads(output)
    schema["fields"] = schema["fields"][:-1] if len(schema["fields"]) > 1 else []
    return json.dumps(schema, separators=(", ", ": "))


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "arithmetic",
            ("Compute the result.", "Calculate the answer.", "Work out the arithmetic.", "What is the value?",
             "Evaluate the expression.", "Solve the sum."),
            _arithmetic,
            _arithmetic_wrong,
            metric="numeric_match",
        ),
        Task(
            "reverse",
            ("Reverse the letters of the text.", "Spell the text backwards.", "Write the text in reverse order.",
             "Turn the text around.", "Give the text reversed.", "Mirror the letters."),
            _reverse,
            _reverse_wrong,
        ),
        Task(
            "uppercase",
            ("Write the text in capital letters.", "Convert the text to uppercase.", "Make every letter a capital.",
             "Shout the text.", "Change the text to upper case.", "Capitalize all letters."),
            _uppercase,
            _uppercase_wrong,
        ),
        Task(
            "avro",
            ("Write an AVRO schema for the entity.", "Generate the AVRO record schema.",
             "Describe the entity as an AVRO schema.", "Produce an AVRO schema in JSON.",
             "Create the AVRO schema for this record.", "Give the AVRO schema."),
            _avro,
            _avro_wrong,
            metric="json_match",
        ),
    )
}


def generate(tasks: list[str], count: int, seed: int, exclude: set[tuple[str, str]] | None = None) -> list[dict[str, str]]:
    """``count`` distinct rows cycling through ``tasks``, reproducible from ``seed``."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows: list[dict[str, str]] = []
    order: Iterator[str] = iter(lambda: tasks[len(rows) % len(tasks)], None)
    attempts = 0
    for name in order:
        if len(rows) >= count:
            break
        task = TASKS[name]
        inp, out = task.make(rng)
        attempts += 1
        if (name, inp) in seen:
            if attempts > 50 * count:
                raise ValueError(f"cannot make {count} distinct rows of {tasks}; ask for fewer")
            continue
        seen.add((name, inp))
        rows.append({"task": name, "instruction": task.instructions[0], "input": inp, "output": out})
    return rows


def preference_pairs(rows: list[dict[str, str]], seed: int) -> list[dict[str, str]]:
    """Chosen = the correct output, rejected = a plausible wrong one (for DPO and friends)."""
    rng = random.Random(seed)
    pairs = []
    for row in rows:
        wrong = TASKS[row["task"]].corrupt(row["input"], row["output"], rng)
        if wrong != row["output"]:
            pairs.append({**row, "chosen": row["output"], "rejected": wrong})
    return pairs
