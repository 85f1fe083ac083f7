"""Full fine-tuning vs LoRA vs QLoRA on the same model, data and steps: peak memory and time ratios.

Each configuration runs in its own process (``ptrain run``), so its peak memory is its own;
the numbers come from each run's ``metrics.json`` (``train.peak_memory_mb`` is the peak during
training: resident memory on CPU, allocated memory on CUDA)::

    python bench/lora_qlora.py                       # builtin:tiny-llama, 60 steps
    python bench/lora_qlora.py --model DIR --steps 20 --batch-size 4 --max-length 256

The three recipes are ``recipes/sft_tiny.toml``, ``lora_tiny.toml`` and ``qlora_tiny.toml``
(each method with its own learning rate); ``--model`` and the options below override all three.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _runs import ptrain_run

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
CONFIGS = {"full": "sft_tiny.toml", "lora": "lora_tiny.toml", "qlora": "qlora_tiny.toml"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-llama", help="model.name for all three runs")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="ptrain-bench-lora-"))
    common = [
        f"model.name={json.dumps(args.model)}",
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        f"train.max_length={args.max_length}",
        f"train.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        "train.logging_steps=5",
        "data.num_examples=2000",
        "eval.base=false",
        "eval.max_samples=32",
        "output.plots=false",
    ]
    results = {}
    for name in args.only:
        print(f"running {name} ({CONFIGS[name]}, {args.steps} steps)…", file=sys.stderr, flush=True)
        results[name] = ptrain_run(name, RECIPES / CONFIGS[name], common, out / name)

    ref_name = "full" if "full" in results else next(iter(results))
    reference = results[ref_name]["train"]
    print(f"\nmodel {args.model}, {args.steps} steps x batch {args.batch_size}, max_length {args.max_length}, "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; ratios vs {ref_name}")
    print("memory: ptrain.measure_memory's peak during training; 'above' = minus the process's memory before the model loaded")
    header = (f"{'config':<7}{'trainable':>12}{'train %':>9}{'peak MiB':>10}{'above':>8}{'x above':>9}"
              f"{'weights':>9}{'grads':>7}{'optim':>7}{'act+':>7}{'train s':>9}{'x time':>8}{'eval loss':>11}{'saved MiB':>11}")
    print(header)
    print("-" * len(header))
    for name, m in results.items():
        train, final = m["train"], m["final"]
        trainable = m.get("lora", {}).get("trainable_parameters", train["trainable_parameters"])
        total = m.get("lora", {}).get("total_parameters", train["parameters"])
        saved = final.get("adapter_size_mb", final.get("model_size_mb"))
        parts = train.get("memory_breakdown_mb", {})
        print(
            f"{name:<7}{trainable:>12,}{100 * trainable / total:>9.2f}"
            f"{train['peak_memory_mb']:>10.1f}{train['memory_above_baseline_mb']:>8.1f}"
            f"{train['memory_above_baseline_mb'] / reference['memory_above_baseline_mb']:>9.2f}"
            + "".join(f"{parts.get(k, float('nan')):>{w}.0f}" for k, w in (("weights", 9), ("gradients", 7), ("optimizer_state", 7), ("activations_and_other", 7)))
            + f"{train['train_time_s']:>9.1f}{train['train_time_s'] / reference['train_time_s']:>8.2f}"
            f"{final['eval_loss']:>11.4f}{saved:>11.3f}"
        )
    print("weights / grads / optim / act+: the 'above' figure split (metrics.json train.memory_breakdown_mb); act+ = activations,"
          " logits, temporaries and allocator slack")
    if "qlora" in results:
        q = results["qlora"]["qlora"]
        print(f"\nqlora base: {q['quantized_linear_layers']} linear layers in 4-bit {q['quant_type']}, footprint {q['base_memory_footprint_mb']} MiB")
    print(f"saved MiB: adapter for lora/qlora, full model for full; run directories in {out}")


if __name__ == "__main__":
    main()
