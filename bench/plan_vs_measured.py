"""Predicted training memory (``ptrain plan``'s figures, recorded by every run) against what runs measure.

Each bundled recipe that trains runs in its own process for a few steps (memory does not depend on the
step count), with evaluation and export off; its ``metrics.json["train"]`` holds the measured
``memory_above_baseline_mb`` and the prediction made for the same data (``predicted``). Prints one
markdown row per recipe and the errors' median; ``--heavy`` adds the SmolLM2-135M recipes (minutes each:
run them under ``flock /tmp/ptrain-heavy.lock``).

    flock /tmp/ptrain-heavy.lock python bench/plan_vs_measured.py [--heavy] [--only NAME ...] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _runs import ptrain_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
R = ROOT / "recipes"
DPO = ROOT / "examples" / "ptrain-dpo" / "recipes"
PAIRS = ["data.source=\"builtin:preferences\"", "data.num_examples=600"]
TINY = "model.name=\"builtin:tiny-llama\""
TINY_CASES: list[tuple[str, Path, list[str]]] = [
    ("sft", R / "sft_tiny.toml", []),
    ("lora", R / "lora_tiny.toml", []),
    ("qlora", R / "qlora_tiny.toml", []),
    ("ia3", R / "sft_tiny.toml", ['methods=["sft", "ia3"]']),
    ("loha", R / "sft_tiny.toml", ['methods=["sft", "loha"]']),
    ("lokr", R / "sft_tiny.toml", ['methods=["sft", "lokr"]']),
    ("prompt_tuning", R / "sft_tiny.toml", ['methods=["sft", "prompt_tuning"]']),
    ("prefix_tuning", R / "sft_tiny.toml", ['methods=["sft", "prefix_tuning"]']),
    ("p_tuning", R / "sft_tiny.toml", ['methods=["sft", "p_tuning"]']),
    ("distill (logit)", R / "distill_tiny_same_tokenizer.toml", ['distill.teacher="builtin:tiny-llama"']),
    ("dpo", DPO / "dpo_tiny.toml", []),
    ("kto", R / "sft_tiny.toml", ['methods=["kto"]', *PAIRS]),
    ("orpo", R / "sft_tiny.toml", ['methods=["orpo"]', *PAIRS]),
    ("reward", R / "sft_tiny.toml", ['methods=["reward"]', *PAIRS]),
    ("grpo", R / "grpo_tiny.toml", [TINY]),
]
SMOL = "model.name=\"builtin:smollm2-135m-instruct\""
FULL = R / "peft" / "01_full.toml"
HEAVY_CASES: list[tuple[str, Path, list[str]]] = [
    ("SmolLM2 lora (quickstart)", R / "quickstart.toml", []),
    ("SmolLM2 lora, checkpointing", R / "quickstart.toml", ["train.gradient_checkpointing=true"]),
    ("SmolLM2 full sft", FULL, []),
    ("SmolLM2 qlora", R / "phase1" / "3_qlora.toml", []),
    ("SmolLM2 dora", R / "peft" / "03_dora.toml", []),
    ("SmolLM2 ia3", R / "peft" / "07_ia3.toml", []),
    ("SmolLM2 loha", R / "peft" / "08_loha.toml", []),
    ("SmolLM2 lokr", R / "peft" / "09_lokr.toml", []),
    ("SmolLM2 prompt_tuning", R / "peft" / "10_prompt_tuning.toml", []),
    ("SmolLM2 prefix_tuning", R / "peft" / "11_prefix_tuning.toml", []),
    ("SmolLM2 p_tuning", R / "peft" / "12_p_tuning.toml", []),
    ("SmolLM2 distill (logit, 7 layers)", R / "phase1" / "4_distill_student.toml", ['distill.teacher="builtin:smollm2-135m-instruct"']),
    ("SmolLM2 dpo", DPO / "dpo_tiny.toml", [SMOL, "train.batch_size=8"]),
    ("SmolLM2 kto", FULL, ['methods=["kto"]', *PAIRS]),
    ("SmolLM2 orpo", FULL, ['methods=["orpo"]', *PAIRS]),
    ("SmolLM2 reward", FULL, ['methods=["reward"]', *PAIRS]),
    ("SmolLM2 grpo", R / "grpo_smollm2.toml", []),
]
QUIET = ["eval.base=false", "eval.max_samples=0", "output.save_model=false", "output.plots=false", "output.report=false"]


def replan(recipe: Path, settings: list[str], before: dict) -> dict:
    """The prediction for a kept run, made again by the current code for the same sequence lengths."""
    from ptrain._plan import plan_training
    from ptrain._recipe import load_recipe

    loaded = load_recipe(recipe, settings)
    return plan_training(loaded, device=before["device"], sequence_length=before.get("data_sequence_length", before["sequence_length"]),
                         prompt_length=before.get("prompt_length")).as_metrics()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heavy", action="store_true", help="also the SmolLM2-135M recipes")
    parser.add_argument("--only", nargs="*", help="labels to run (default all)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="keep the run directories here (default: a temporary directory)")
    parser.add_argument("--replan", action="store_true", help="with --keep: no runs; predict again for the kept runs (calibration)")
    args = parser.parse_args()
    cases = TINY_CASES + (HEAVY_CASES if args.heavy else [])
    if args.only:
        cases = [c for c in cases if c[0] in args.only]
    print("| recipe | tokens/seq | predicted above baseline MiB | measured MiB | predicted / measured | "
          "predicted w / g / o / a+ | measured w / g / o / a+ | predicted s/step | measured s/step |")
    print("| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |")
    errors = []
    with tempfile.TemporaryDirectory(prefix="plan-bench-") as scratch:
        for label, recipe, overrides in cases:
            out = (args.keep or Path(scratch)) / label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
            settings = [f"train.max_steps={args.steps}", *QUIET, *overrides]
            if args.replan:
                if not (out / "metrics.json").is_file():
                    continue
                metrics = json.loads((out / "metrics.json").read_text())
            else:
                metrics = ptrain_run(label, recipe, settings, out)
            train = metrics["train"]
            predicted = train.get("predicted")
            if args.replan and predicted:
                predicted = replan(recipe, settings, predicted)
            if not predicted:
                print(f"| {label} | | (no prediction) | {train['memory_above_baseline_mb']:.0f} | | | |")
                continue
            measured = train["memory_above_baseline_mb"]
            ratio = predicted["memory_above_baseline_mb"] / measured
            errors.append(abs(ratio - 1))

            def parts(d: dict) -> str:
                return " / ".join(f"{d[k]:.0f}" for k in ("weights", "gradients", "optimizer_state", "activations_and_other"))

            step_s = train.get("time_per_step_s") or (train["train_time_s"] / max(1, train["steps"]))  # median, first step left out
            guess = predicted.get("time_per_step_s")
            print(f"| {label} | {predicted['sequence_length']} | {predicted['memory_above_baseline_mb']:.0f} | {measured:.0f} | "
                  f"{ratio:.2f} | {parts(predicted['memory_breakdown_mb'])} | {parts(train['memory_breakdown_mb'])} | "
                  f"{f'{guess:.2f}' if guess else ''} | {step_s:.2f} |", flush=True)
    if errors:
        print(f"\n{len(errors)} recipes: median |error| {100 * statistics.median(errors):.1f} %, largest {100 * max(errors):.1f} %; "
              f"{sum(e <= 0.2 for e in errors)} within ±20 %")


if __name__ == "__main__":
    main()
