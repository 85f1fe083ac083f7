"""Packing (``[sft] packing = true``) against padding on variable-length data: tokens/s and eval loss.

    python bench/packing.py                                   # builtin:tiny-llama
    python bench/packing.py --model builtin:smollm2-135m-instruct --examples 400 --batch-size 8

Both runs train one epoch over the same rows (short arithmetic and long AVRO-schema examples, mixed),
so they see the same tokens; each runs in its own ``ptrain run`` process. Padding pads every batch
to its longest row; packing (TRL's best-fit-decreasing packing, padding-free: rows are laid end to
end in sequences of ``train.max_length`` tokens, each attending only to itself through its position
ids) wastes nothing on padding but makes fewer, longer rows. tokens/s counts real (non-padding)
tokens, as every ptrain run does. The eval loss is the same held-out completion loss for both.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _runs import ptrain_run

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "sft_tiny.toml"


def run_one(packing: bool, args: argparse.Namespace, out: Path, batch_size: int) -> dict:
    overrides = [
        f"model.name={json.dumps(args.model)}",
        'data.tasks=["arithmetic", "avro"]',
        f"data.num_examples={args.examples}",
        "data.eval_size=64",
        f"data.chat={str(args.chat).lower()}",
        "train.max_steps=-1",
        "train.epochs=1",
        f"train.batch_size={batch_size}",
        f"train.max_length={args.max_length}",
        f"train.learning_rate={args.learning_rate}",
        "train.logging_steps=5",
        f"sft.packing={str(packing).lower()}",
        "eval.base=false",
        "eval.max_samples=0",
        "output.plots=false",
        "output.save_model=false",
    ]
    return ptrain_run("packed" if packing else "padded", RECIPE, overrides, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-llama")
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--packed-batch-size", type=int, default=0, help="rows per packed batch; default: the padded run's tokens per step / max_length")
    parser.add_argument("--chat", action="store_true", help="format rows with the model's chat template")
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="ptrain-bench-packing-"))

    print("running padded…", file=sys.stderr, flush=True)
    results = {"padded": run_one(False, args, out / "padded", args.batch_size)}
    # the packed run gets as many tokens per step as the padded one had (so as many optimizer steps for
    # the epoch): its rows are max_length long, the padded ones only as long as a batch's longest row
    padded_train = results["padded"]["train"]
    packed_batch = args.packed_batch_size or max(1, round(padded_train["tokens_seen"] / padded_train["steps"] / args.max_length))
    print(f"running packed (batch {packed_batch} x {args.max_length} tokens)…", file=sys.stderr, flush=True)
    results["packed"] = run_one(True, args, out / "packed", packed_batch)

    padded, packed = results["padded"]["train"], results["packed"]["train"]
    print(f"\nSFT of {args.model}, one epoch of {args.examples} rows (arithmetic + avro), max_length {args.max_length}; "
          f"padded batches of {args.batch_size} rows, packed batches of {packed_batch} rows of {args.max_length} tokens")
    header = f"{'':8}{'steps':>7}{'tokens':>10}{'train s':>10}{'tokens/s':>10}{'eval loss':>11}{'peak above MiB':>16}"
    print(header)
    print("-" * len(header))
    for label, m in results.items():
        t = m["train"]
        print(f"{label:<8}{t['steps']:>7}{t['tokens_seen']:>10,}{t['train_time_s']:>10.1f}{t['tokens_per_s']:>10.0f}"
              f"{m['final']['eval_loss']:>11.4f}{t['memory_above_baseline_mb']:>16.1f}")
    print(f"packed / padded: tokens/s x{packed['tokens_per_s'] / padded['tokens_per_s']:.2f}, "
          f"train time x{packed['train_time_s'] / padded['train_time_s']:.2f}, "
          f"tokens seen x{packed['tokens_seen'] / padded['tokens_seen']:.3f}")
    print(json.dumps({k: {"train": v["train"], "final": v["final"]} for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
