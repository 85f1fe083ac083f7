"""Template-randomized instruction tuning (FLAN-style) and template-robustness evaluation.

Each training row is re-rendered from its raw ``instruction``/``input`` with a template drawn
from a pool, chosen by a generator seeded with the recipe seed and the row's index, so a run is
reproducible row by row. The built-in pool is *compositional*: every template joins one
instruction prefix, one answer marker and one separator (8 x 8 x 3 = 192 templates), covering
the ``### Instruction:/### Response:``, ``Instruction:/Response:`` and ChatML
``<|im_start|>user … <|im_start|>assistant`` styles and their mixtures. Six combinations
(:data:`HELDOUT`) are never trained on; evaluation scores the model on them and on templates
seen in training, so the gain in robustness is measured rather than assumed. Tiny random-init
models can learn held-out templates that recombine seen parts, not wholly new styles; hence the
compositional pool.

The method only wraps ``prepare_data`` and adds an ``evaluate`` hook: it composes with any
trainer-building method (``sft``) and any model adapter (``lora``, ``qlora``) without either
side knowing about the other. Rows from chat ``messages`` data are re-rendered from their last
user turn, so use the method with instruction data (alpaca, dolly, prompt/completion, tasks).
"""

from __future__ import annotations

import random
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ptrain import (
    TASKS,
    DataSplits,
    Recipe,
    RecipeError,
    ReportRow,
    Run,
    check_template,
    generate,
    hookimpl,
    task_scores,
    to_dataset,
    write_json,
)

PREFIXES: dict[str, tuple[str, str]] = {
    "hash": ("### Instruction:\n", "### Input:\n"),
    "plain": ("Instruction:\n", "Input:\n"),
    "chatml": ("<|im_start|>user\n", ""),
    "alpaca": (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n",
        "### Input:\n",
    ),
    "task": ("Task: ", "Text: "),
    "question": ("Question: ", "Context: "),
    "request": ("Request:\n", "Data:\n"),
    "prompt": ("Prompt: ", "Input: "),
}
"""Name -> (text before the instruction, text before the input)."""
ANSWERS: dict[str, str] = {
    "hash": "### Response:\n",
    "plain": "Response:\n",
    "chatml": "<|im_end|>\n<|im_start|>assistant\n",
    "answer": "Answer:\n",
    "output": "Output:\n",
    "reply": "Reply:\n",
    "result": "Result:\n",
    "solution": "Solution:\n",
}
"""Name -> the text that ends the prompt, right before the answer. None ends in a space: most
tokenizers merge a trailing space into the answer's first token, so a prompt ending in one is
tokenized differently in training (prompt + answer) than at inference (prompt alone)."""
SEPARATORS: dict[str, str] = {"blank": "\n\n", "newline": "\n", "space": " "}
PRIMARY = "hash/hash/blank"
"""The Alpaca template, the core's default rendering: always in the training pool."""
HELDOUT = (
    "hash/hash/newline",  # the primary template with single newlines: the nearest variation
    "chatml/answer/newline",
    "task/plain/space",
    "question/output/blank",
    "alpaca/reply/newline",
    "prompt/solution/blank",
)
"""Built-in combinations never used in training, evaluated for robustness. Every part of them
appears in many training templates; only the combinations are new."""


@dataclass(frozen=True)
class Template:
    """A named prompt template; ``no_input`` is used for rows without an input."""

    name: str
    text: str
    no_input: str | None = None

    def render(self, instruction: str, input: str) -> str:
        if not input and self.no_input is not None:
            return self.no_input.format(instruction=instruction)
        if "input" in placeholders(self.text):
            return self.text.format(instruction=instruction, input=input)
        # a template without {input}: the input follows the instruction on its own line
        return self.text.format(instruction=f"{instruction}\n{input}" if input else instruction)


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def builtin_templates() -> dict[str, Template]:
    """All 192 built-in combinations, by name ``prefix/answer/separator``."""
    pool = {}
    for (p_name, (before_instruction, before_input)), (a_name, answer), (s_name, sep) in (
        (p, a, s) for p in PREFIXES.items() for a in ANSWERS.items() for s in SEPARATORS.items()
    ):
        name = f"{p_name}/{a_name}/{s_name}"
        pool[name] = Template(
            name,
            f"{before_instruction}{{instruction}}{sep}{before_input}{{input}}{sep}{answer}",
            f"{before_instruction}{{instruction}}{sep}{answer}",
        )
    return pool


@dataclass
class InstructSection:
    """``[instruct]``: template randomization of the training data and robustness evaluation."""

    randomize: bool = True
    """Render each training row with a template drawn from the pool. False keeps the core's single
    template (plain SFT data) and only evaluates robustness: the baseline to compare against."""
    paraphrase: bool = True
    """With ``randomize``, also draw the instruction wording among the paraphrases of the row's
    bundled task (``builtin:tasks`` rows); other rows keep their instruction."""
    templates: list[str] = field(default_factory=list)
    """Your own training templates with ``{instruction}`` and optionally ``{input}`` (a template
    without ``{input}`` gets the input on the line after the instruction). Empty: the built-in
    compositional pool of 186 templates."""
    heldout: list[str] = field(default_factory=list)
    """Templates evaluated but never trained on. Empty: the built-in held-out six with the
    built-in pool, none with your own templates."""
    eval_rows: int = 40
    """Evaluation rows scored under every evaluated template; 0 turns robustness evaluation off."""
    eval_templates: int = 6
    """How many templates seen in training are evaluated (the primary one first)."""

    def validate(self) -> None:
        for key in ("templates", "heldout"):
            for i, text in enumerate(getattr(self, key)):
                check_template(text, f"{key}[{i}]", ("instruction",), ("instruction", "input"))
        if self.eval_rows < 0:
            raise RecipeError("must be >= 0", key="eval_rows")
        if self.eval_templates < 1:
            raise RecipeError("must be >= 1", key="eval_templates")
        train = {t.text for t in training_pool(self)}
        for i, text in enumerate(self.heldout):
            if text in train:
                raise RecipeError(f"template {text!r} is also a training template; a held-out one must be new", key=f"heldout[{i}]")

    # ------------------------------------------------------------------ pools

    def custom(self, key: str) -> list[Template]:
        return [Template(f"{key}[{i}]", text) for i, text in enumerate(getattr(self, key))]


def training_pool(section: InstructSection) -> list[Template]:
    if section.templates:
        return section.custom("templates")
    return [t for name, t in builtin_templates().items() if name not in HELDOUT]


def heldout_pool(section: InstructSection) -> list[Template]:
    if section.heldout:
        return section.custom("heldout")
    if section.templates:
        return []
    pool = builtin_templates()
    return [pool[name] for name in HELDOUT]


def row_rng(seed: int, index: int) -> random.Random:
    """The generator of one training row: the same seed and index give the same template."""
    return random.Random(f"ptrain-instruct:{seed}:{index}")


def randomize_rows(
    rows: list[dict[str, Any]], pool: list[Template], seed: int, paraphrase: bool
) -> tuple[list[dict[str, Any]], Counter[str], Counter[str]]:
    """Rows re-rendered with pool templates, with the template and instruction histograms."""
    used: Counter[str] = Counter()
    wordings: Counter[str] = Counter()
    out = []
    for index, row in enumerate(rows):
        rng = row_rng(seed, index)
        template = pool[rng.randrange(len(pool))]
        instruction = row["instruction"]
        task = TASKS.get(row.get("task") or "")
        if paraphrase and task is not None and instruction in task.instructions:
            instruction = rng.choice(task.instructions)
            wordings[instruction] += 1
        used[template.name] += 1
        out.append({**row, "prompt": template.render(instruction, row["input"]), "template": template.name})
    return out, used, wordings


# ------------------------------------------------------------------ hooks


@hookimpl
def recipe_sections() -> dict[str, type]:
    return {"instruct": InstructSection}


@hookimpl
def validate_recipe(recipe: Recipe) -> None:
    if recipe.data.streaming:
        raise RecipeError("instruct re-renders every training row in memory, and data.streaming reads them one at a time; remove data.streaming (or instruct)", key="data.streaming")
    fields = recipe.data_fields
    if fields is not None and "instruction" not in fields:
        raise RecipeError(
            f"instruct re-renders instructions, and format {recipe.data_format!r} has none; use instruction data "
            "(alpaca, dolly, prompt/completion, builtin:tasks)",
            key="data.format",
        )
    if recipe.data.chat:
        raise RecipeError("instruct renders its own prompt templates; remove data.chat (or instruct)", key="data.chat")


@hookimpl
def report_rows() -> list[ReportRow]:
    return [
        ReportRow("seen templates: mean", "final.templates_seen_mean", chart="quality"),
        ReportRow("seen templates: worst", "final.templates_seen_worst"),
        ReportRow("seen templates: spread", "final.templates_seen_spread"),
        ReportRow("held-out templates: mean", "final.templates_heldout_mean", chart="quality"),
        ReportRow("held-out templates: worst", "final.templates_heldout_worst", chart="quality"),
        ReportRow("held-out templates: spread", "final.templates_heldout_spread", chart="quality"),
        ReportRow("all templates: worst", "final.templates_all_worst"),
        ReportRow("all templates: spread", "final.templates_all_spread", chart="quality"),
    ]


@hookimpl(wrapper=True)
def prepare_data(run: Run) -> DataSplits:
    splits = yield
    section: InstructSection = run.section("instruct")
    pool = training_pool(section)
    summary: dict[str, Any] = {"randomize": section.randomize, "paraphrase": section.randomize and section.paraphrase}
    if section.randomize:
        rows, used, wordings = randomize_rows(splits.train.to_list(), pool, run.recipe.seed, section.paraphrase)
        splits = DataSplits(to_dataset(rows), splits.eval)
        run.log.info("instruct: %d training rows rendered with %d of %d templates", len(rows), len(used), len(pool))
    else:
        used, wordings = Counter({"data": len(splits.train)}), Counter()
        run.log.info("instruct: randomize = false, training rows keep the data template")
    heldout = heldout_pool(section)
    histogram = {
        **summary,
        "pool_size": len(pool) if section.randomize else 1,
        "templates_used": len(used),
        "counts": dict(sorted(used.items())),
        "instructions": dict(sorted(wordings.items())),
        "pool": {t.name: t.text for t in pool} if section.randomize else {},
        "heldout": {t.name: t.text for t in heldout},
    }
    if run.is_main_process:
        write_json(run.dir / "templates.json", histogram)
    run.metrics["instruct"] = {
        **summary,
        "pool_size": histogram["pool_size"],
        "templates_used": len(used),
        "heldout": [t.name for t in heldout],
        "histogram": "templates.json",
    }
    return splits


def evaluated_templates(run: Run, section: InstructSection, first_row: dict[str, Any]) -> dict[str, list[Template | None]]:
    """``{"seen": [...], "heldout": [...]}``; ``None`` stands for the data's own rendering (``prompt``)."""
    if section.randomize:
        pool = training_pool(section)
        primary = [t for t in pool if t.name == PRIMARY] or pool[:1]
        rest = [t for t in pool if t not in primary]
        seen: list[Template | None] = primary + random.Random(0).sample(rest, min(len(rest), section.eval_templates - 1))
    else:
        # the single template the run trained on: named after the built-in one it equals, if any
        same = [t for t in builtin_templates().values() if t.render(first_row["instruction"], first_row["input"]) == first_row["prompt"]]
        seen = same[:1] or [None]
    return {"seen": seen, "heldout": list(heldout_pool(section))}


@hookimpl
def evaluate(run: Run, stage: str) -> dict[str, Any] | None:
    section: InstructSection = run.section("instruct")
    rows = run.eval_dataset.select(range(min(section.eval_rows, len(run.eval_dataset)))).to_list()
    if not rows:
        return None
    settings = run.recipe.eval
    metrics: dict[str, Any] = {}
    by_template: dict[str, dict[str, float]] = {}
    for group, templates in evaluated_templates(run, section, rows[0]).items():
        scores: dict[str, float] = {}
        for template in templates:
            prompts = [row["prompt"] if template is None else template.render(row["instruction"], row["input"]) for row in rows]
            texts = generate(run.model, run.tokenizer, prompts, settings.max_new_tokens, settings.batch_size, warm_up=False).texts
            values = task_scores(rows, texts, settings.metric)
            scores["data" if template is None else template.name] = round(sum(values) / len(values), 4)
        if not scores:
            continue
        by_template[group] = scores
        values = list(scores.values())
        metrics[f"templates_{group}_mean"] = round(sum(values) / len(values), 4)
        metrics[f"templates_{group}_worst"] = min(values)
        metrics[f"templates_{group}_spread"] = round(max(values) - min(values), 4)
    every = [v for scores in by_template.values() for v in scores.values()]
    if every:  # seen and held-out together: the gap between the best and the worst phrasing a user may try
        metrics["templates_all_mean"] = round(sum(every) / len(every), 4)
        metrics["templates_all_worst"] = min(every)
        metrics["templates_all_spread"] = round(max(every) - min(every), 4)
    metrics["templates_eval_rows"] = len(rows)
    metrics["templates_by_template"] = by_template
    return metrics
