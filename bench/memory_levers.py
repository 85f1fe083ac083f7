"""Peak training memory of whole ``ptrain run``s on SmolLM2-135M-Instruct, before the CPU levers, with
today's defaults, and with gradient checkpointing added: full SFT, LoRA, QLoRA and logit distillation at
batch 8 x 256 tokens, and the GRPO recipe (``recipes/grpo_smollm2.toml``, its own shape).

Each run is its own process (``bench/_runs.py``) and reports the project's one definition of peak training
memory (``train.memory_above_baseline_mb``: the most the process held during training above what it held
when training began, ``ptrain.measure_memory``), its tokens/s and median step time, and the plan's
prediction beside it. "before" = ``train.precision = "fp32"``, ``train.chunked_loss = false`` (what ptrain
ran before the performance issue); "now" = the defaults (``auto`` precision: bf16 autocast on a CPU that
computes it faster; the chunked loss); "now, fp32" = the chunked loss alone; "+ checkpointing" = now with ``train.gradient_checkpointing = true``.

The 8 x 256 batches: every row is a short prompt and a completion of seeded random words longer than 256
tokens, cut at ``train.max_length = 256``, so every batch is 8 full sequences. A few steps suffice for the
peak (the optimizer's state exists from the first step), and no generation metrics are computed.

    flock /tmp/ptrain-heavy.lock python bench/memory_levers.py [--steps 3] [--methods sft lora ...] [--variants before now ...]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _runs import ptrain_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "builtin:smollm2-135m-instruct"
LORA = '[lora]\nr = 8\nalpha = 16\ndropout = 0.0\ntarget_modules = "all-linear"\n'
METHODS = {
    "sft": ("full SFT", '["sft"]', "", 1e-5),
    "lora": ("LoRA", '["sft", "lora"]', LORA, 2e-4),
    "qlora": ("QLoRA (NF4)", '["sft", "lora", "qlora"]', LORA + '[qlora]\nquant_type = "nf4"\ndouble_quant = true\n', 2e-4),
    "distill": ("logit KD, 30 -> 7 layers", '["distill"]',
                f'[distill]\nteacher = "{MODEL}"\nmode = "auto"\ntemperature = 2.0\nalpha = 0.5\n', 5e-4),
}
VARIANTS = {
    "before": ["train.precision=fp32", "train.chunked_loss=false"],
    "now": [],
    "now, fp32": ["train.precision=fp32"],
    "now + checkpointing": ["train.gradient_checkpointing=true"],
}
QUIET = ["eval.base=false", "eval.max_samples=0", "output.save_model=false", "output.plots=false", "output.report=false"]


def long_rows(path: Path, rows: int = 48, words: int = 400, seed: int = 0) -> Path:
    rng = random.Random(seed)
    vocabulary = ("model data train token layer memory batch record field schema value number answer "
                  "question river mountain window garden music letter summer winter orange yellow quiet "
                  "simple careful gentle bright early later always never often under above between").split()
    with path.open("w") as f:
        for i in range(rows):
            text = " ".join(rng.choice(vocabulary) for _ in range(words))
            f.write(json.dumps({"prompt": f"Write passage {i}.", "completion": text}) + "\n")
    return path


def recipe(method: str, data: Path, steps: int, folder: Path, model: str = MODEL) -> Path:
    label, methods, sections, lr = METHODS[method]
    sections = sections.replace(MODEL, model)
    keep = "keep_layers = 7\n" if method == "distill" else ""
    text = (f'name = "memory_{method}"\nmethods = {methods}\nseed = 42\n\n[model]\nname = "{model}"\n{keep}\n'
            f'[data]\nsource = "{data}"\neval_size = 8\n\n{sections}\n'
            f"[train]\nmax_steps = {steps}\nbatch_size = 8\nlearning_rate = {lr}\nmax_length = 256\nlogging_steps = 1\n")
    path = folder / f"{method}.toml"
    path.write_text(text)
    return path


def figures(m: dict) -> dict:
    train = m["train"]
    predicted = train.get("predicted", {})
    return {"precision": train.get("precision", "fp32"), "above_mb": train["memory_above_baseline_mb"],
            "predicted_mb": predicted.get("memory_above_baseline_mb"), "tokens_per_s": train["tokens_per_s"],
            "step_s": train.get("time_per_step_s"), "loss": train.get("train_loss"), "mfu": train.get("mfu")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--set", dest="settings", action="append", default=[], help="a recipe override for every run")
    parser.add_argument("--model", default=MODEL, help="another model, to try the script out (e.g. builtin:tiny-llama)")
    parser.add_argument("--methods", nargs="+", default=[*METHODS, "grpo"], choices=[*METHODS, "grpo"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    print("| method | variant | precision | memory above baseline MiB | vs before | plan MiB | tokens/s | vs before | s/step | MFU | train loss |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="memory-levers-") as scratch:
        folder = Path(scratch)
        data = long_rows(folder / "long.jsonl")
        for method in args.methods:
            if method == "grpo":
                label, path = "GRPO (recipe's shape)", ROOT / "recipes" / "grpo_smollm2.toml"
            else:
                label, path = METHODS[method][0], recipe(method, data, args.steps, folder, args.model)
            extra = [f"train.max_steps={args.steps}"] if method == "grpo" else []
            base: dict | None = None
            for number, variant in enumerate(args.variants):
                row = figures(ptrain_run(f"{method} {variant}", path, [*VARIANTS[variant], *QUIET, *extra, *args.settings], folder / f"{method}-{number}"))
                base = base or (row if variant == "before" else None)

                def versus(key: str, row: dict = row, base: dict | None = base) -> str:
                    return f"{row[key] / base[key]:.2f}x" if base and base[key] else "-"

                mfu = "-" if row["mfu"] is None else f"{row['mfu']:.0%}"
                print(f"| {label} | {variant} | {row['precision']} | {row['above_mb']:.0f} | {versus('above_mb')} | "
                      f"{row['predicted_mb'] or '-'} | {row['tokens_per_s']:.0f} | {versus('tokens_per_s')} | "
                      f"{row['step_s'] or '-'} | {mfu} | {row['loss'] if row['loss'] is None else round(row['loss'], 4)} |", flush=True)


if __name__ == "__main__":
    main()
