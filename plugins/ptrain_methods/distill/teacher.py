"""The teacher: loaded frozen through the core's model service, and its answers cached in the run directory."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from ptrain import Run, generate, load_pretrained

CACHE = "teacher_completions.jsonl"


def load_teacher(run: Run) -> tuple[Any, Any]:
    """The teacher named by ``distill.teacher``, with the student's dtype and attention, frozen, in eval mode."""
    section = run.section("distill")
    options: dict[str, Any] = {}
    if section.teacher_load_in != "none":
        import torch
        from transformers import BitsAndBytesConfig

        if section.teacher_load_in == "8bit":
            options["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
            options["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
            )
    teacher, tokenizer = load_pretrained(section.teacher, like=run.recipe.model, seed=run.recipe.seed, key="distill.teacher", **options)
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher, tokenizer


def same_vocabulary(a: Any, b: Any) -> bool:
    """True when both tokenizers map every token string to the same id (sizes alone are not enough)."""
    return a.get_vocab() == b.get_vocab()


def teacher_answers(run: Run, teacher: Any, tokenizer: Any, prompts: list[str]) -> dict[str, str]:
    """The teacher's greedy answers to ``prompts``, cached in ``distill/teacher_completions.jsonl``.

    The cache is appended to batch by batch, so a rerun (``--resume``) only generates the prompts
    that have no answer yet; a line cut short by an interruption is generated again.
    """
    section = run.section("distill")
    path = run.dir / "distill" / CACHE
    cache: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                cache[row["prompt"]] = row["completion"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    missing = list(dict.fromkeys(p for p in prompts if p not in cache))
    run.log.info("distill: %d teacher answers cached, %d to generate", len(prompts) - len(missing), len(missing))
    if missing:
        batch = run.recipe.eval.batch_size
        chunk = max(batch * 4, 64)
        max_new = section.max_new_tokens or run.recipe.eval.max_new_tokens
        # every process of a distributed run needs the answers (greedy: the same everywhere); the main one writes them
        write = run.is_main_process
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
        cut = write and path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        with path.open("a", encoding="utf-8") if write else contextlib.nullcontext() as handle:
            if cut:
                handle.write("\n")  # after a line cut short, start a fresh one
            for i in range(0, len(missing), chunk):
                part = missing[i : i + chunk]
                texts = generate(teacher, tokenizer, part, max_new, batch, warm_up=False).texts
                for prompt, text in zip(part, texts, strict=True):
                    cache[prompt] = text
                    if write:
                        handle.write(json.dumps({"prompt": prompt, "completion": text}) + "\n")
                if write:
                    handle.flush()
    return {p: cache[p] for p in prompts}
