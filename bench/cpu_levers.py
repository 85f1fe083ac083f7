"""CPU levers side by side in one process: fp32 vs bf16 autocast, and the loss head three ways (full
logits, TRL 1.16's fused head that ptrain's SFT/DPO/KTO/GRPO trainers used before, ptrain's chunked
head), for full fine-tuning and LoRA of a SmolLM2-135M-shaped llama (random init: speed and memory only).

Prints this CPU's matmul peak (fp32 and bf16 GFLOP/s), then per variant: the median step time
(forward + backward of one batch), tokens/s, its ratio to today's default (fp32 + TRL's head), the
peak memory of the step above the memory in use before it (``ptrain.measure_memory``, the project's
one definition), the loss, and model-FLOPs utilisation against the measured peak of the precision
used. Repetitions are interleaved so a loaded machine slows every variant alike: read the ratios.

    flock /tmp/ptrain-heavy.lock python bench/cpu_levers.py [--batch 4] [--length 256] [--reps 2]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from trl.trainer.utils import add_fused_lm_head

from ptrain import measure_memory, memory_in_use_mb, use_chunked_lm_head
from ptrain._memory import trim_freed_memory
from ptrain._precision import cpu_flags, measure_matmul_gflops, training_flops


def smollm2_shaped() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).train()


def with_heads(model: torch.nn.Module) -> dict[str, object]:
    """The model's forward three ways: its own (full logits), TRL's fused head, ptrain's chunked head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    own = base.forward
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))  # as TRL's SFTTrainer does
    trl = base.forward
    use_chunked_lm_head(base)
    return {"base": base, "full": own, "trl": trl, "chunked": base.forward}


def step(model: torch.nn.Module, heads: dict, head: str, precision: str, ids: torch.Tensor, labels: torch.Tensor) -> float:
    heads["base"].forward = heads[head]
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        if head == "full":
            loss = model(input_ids=ids, labels=labels).loss
        else:
            loss = model(input_ids=ids, labels=labels, fused_lm_head=True).loss
    loss.backward()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=64, help="leading tokens masked with -100 (completion-only SFT)")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 flags: "
          f"{sorted(cpu_flags() & {'avx512_bf16', 'amx_bf16'}) or 'none'}")
    peak = {"fp32": measure_matmul_gflops(torch.float32, size=2048, seconds=2.0),
            "bf16": measure_matmul_gflops(torch.bfloat16, size=2048, seconds=2.0)}
    print(f"matmul peak (2048x2048): fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s "
          f"({peak['bf16'] / peak['fp32']:.2f}x)")

    from peft import LoraConfig, get_peft_model

    full = smollm2_shaped()
    lora = get_peft_model(smollm2_shaped(), LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    models = {"full": (full, with_heads(full)), "lora": (lora, with_heads(lora))}
    variants = [(m, p, h) for m in ("full", "lora") for p in ("fp32", "bf16") for h in ("full", "trl", "chunked")]
    ids = torch.randint(0, 49152, (args.batch, args.length))
    labels = ids.clone()
    labels[:, : args.prompt] = -100
    tokens = args.batch * args.length

    times: dict[tuple, list[float]] = {v: [] for v in variants}
    memory: dict[tuple, float] = {}
    losses: dict[tuple, float] = {}
    for v in variants:  # warm: first-call allocations, lazy inits
        step(models[v[0]][0], models[v[0]][1], v[2], v[1], ids, labels)
    for _ in range(args.reps):
        for v in variants:
            model, heads = models[v[0]]
            gc.collect()
            trim_freed_memory()  # what the previous variant freed is not this one's memory
            before = memory_in_use_mb()
            with measure_memory(baseline_mb=before) as used:
                started = time.perf_counter()
                losses[v] = step(model, heads, v[2], v[1], ids, labels)
                times[v].append(time.perf_counter() - started)
            memory[v] = max(memory.get(v, 0.0), used.above_baseline_mb)
            model.zero_grad(set_to_none=True)

    print(f"\nSmolLM2-135M-shaped llama, batch {args.batch} x {args.length} tokens ({args.prompt} prompt tokens masked), "
          f"forward + backward, median of {args.reps} interleaved repetitions")
    print(f"{'method':6s} {'precision':9s} {'loss head':8s} {'step s':>7s} {'tokens/s':>9s} {'vs today':>8s} "
          f"{'peak above MiB':>14s} {'vs today':>8s} {'loss':>8s} {'MFU':>6s}")
    for v in variants:
        method, precision, head = v
        today = (method, "fp32", "trl")
        seconds = statistics.median(times[v])
        flops = training_flops(models[method][0], tokens, args.length)
        mfu = flops / seconds / (peak[precision] * 1e9)
        print(f"{method:6s} {precision:9s} {head:8s} {seconds:7.2f} {tokens / seconds:9.0f} "
              f"{statistics.median(times[today]) / seconds:7.2f}x {memory[v]:14.0f} {memory[v] / max(memory[today], 1):7.2f}x "
              f"{losses[v]:8.4f} {mfu:6.1%}")


if __name__ == "__main__":
    main()
