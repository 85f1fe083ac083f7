"""What does ptrain cost over a hand-written TRL script? The same SFT job both ways, side by side.

    python bench/sft_overhead.py [--steps 300] [--pairs 5]

Runs ``recipes/sft_tiny.toml`` through ``ptrain run`` and an equivalent hand-written TRL script
(same model weights, data, hyper-parameters and seed), each in its own process, then prints the
wall-time ratios and both final losses. ptrain's extra work (evaluation, export) is timed
separately: the training ratio compares ``trainer.train()`` against ``trainer.train()``.
``--pairs N`` runs the two N times, the order alternating from pair to pair (ptrain then script, script
then ptrain, ...) so that a drift of the machine's speed falls on both, and reports every pair's ratio
and their median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HAND_WRITTEN = textwrap.dedent(
    """
    import json, sys, time
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    import datasets
    from ptrain._models import builtin_checkpoint
    from ptrain._tasks import generate
    from ptrain._formats import ALPACA_TEMPLATE

    steps, out = int(sys.argv[1]), sys.argv[2]
    datasets.disable_progress_bars()
    path = builtin_checkpoint("tiny-llama", 42)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    rows = generate(["reverse", "uppercase"], 6000, 42)
    data = datasets.Dataset.from_list(
        [{"prompt": ALPACA_TEMPLATE.format(instruction=r["instruction"], input=r["input"]), "completion": r["output"]} for r in rows]
    )
    args = SFTConfig(
        output_dir=out, max_steps=steps, per_device_train_batch_size=32, learning_rate=3e-3,
        lr_scheduler_type="cosine", warmup_steps=0.05, max_length=128, logging_steps=20, seed=42, data_seed=42,
        save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, completion_only_loss=True,
        # SFTConfig defaults both to True; the recipe (and ptrain on a CPU) uses neither
        gradient_checkpointing=False, bf16=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    start = time.perf_counter()
    result = trainer.train()
    print(json.dumps({"train_time_s": time.perf_counter() - start, "train_loss": result.training_loss}))
    """
)


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])}… failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def run_ptrain(steps: int, tmp: str) -> tuple[dict, float]:
    wall, _ = timed(
        [sys.executable, "-m", "ptrain", "run", "recipes/sft_tiny.toml", "--output-dir", f"{tmp}/ptrain", "--overwrite",
         "--set", f"train.max_steps={steps}", "--set", "eval.base=false", "--set", "train.save_steps=0"]
    )
    return json.loads(Path(f"{tmp}/ptrain/metrics.json").read_text())["train"], wall


def run_script(steps: int, tmp: str) -> tuple[dict, float]:
    script = Path(tmp) / "hand_written.py"
    script.write_text(HAND_WRITTEN)
    wall, out = timed([sys.executable, str(script), str(steps), f"{tmp}/trl"])
    return json.loads(out.strip().splitlines()[-1]), wall


def one_pair(steps: int, tmp: str, script_first: bool) -> tuple[dict, dict, float, float]:
    """One ptrain run and one script run; which goes first alternates from pair to pair (A B, B A, ...),
    so that a machine getting faster or slower over the minutes does not favour either side."""
    if script_first:
        trl, trl_wall = run_script(steps, tmp)
        ptrain, ptrain_wall = run_ptrain(steps, tmp)
    else:
        ptrain, ptrain_wall = run_ptrain(steps, tmp)
        trl, trl_wall = run_script(steps, tmp)
    return ptrain, trl, ptrain_wall, trl_wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            ptrain, trl, ptrain_wall, trl_wall = one_pair(args.steps, tmp, script_first=i % 2 == 1)
            rows.append((ptrain, trl, ptrain_wall, trl_wall))
            print(f"pair {i + 1}: train() {ptrain['train_time_s']:.2f} s vs {trl['train_time_s']:.2f} s, "
                  f"ratio {ptrain['train_time_s'] / trl['train_time_s']:.3f}", file=sys.stderr, flush=True)

    print(f"SFT, builtin:tiny-llama, {args.steps} steps x batch 32, same seed, one machine, {args.pairs} alternating pairs")
    print(f"{'pair':<6}{'ptrain train()':>16}{'TRL train()':>13}{'ratio':>8}{'ptrain wall':>13}{'TRL wall':>10}{'ptrain loss':>13}{'TRL loss':>10}")
    ratios = []
    for i, (ptrain, trl, ptrain_wall, trl_wall) in enumerate(rows, 1):
        ratio = ptrain["train_time_s"] / trl["train_time_s"]
        ratios.append(ratio)
        print(f"{i:<6}{ptrain['train_time_s']:>16.2f}{trl['train_time_s']:>13.2f}{ratio:>8.3f}{ptrain_wall:>13.2f}{trl_wall:>10.2f}"
              f"{ptrain['train_loss']:>13.5f}{trl['train_loss']:>10.5f}")
    print(f"median train() ratio {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    print("(ptrain's wall time also covers its final evaluation and model export, which the script does not do)")


if __name__ == "__main__":
    main()
