"""GPU acceptance, the Python half of bench/gpu_check.sh: the chunked loss against full logits on a ~1 B
random-init llama, then ptrain runs (sft, sft + lora, qlora, distill, grpo) a few steps each in bf16.

Each check prints one line: its name, exit, tokens/s, peak GPU memory (``ptrain.measure_memory``: allocated
tensors on CUDA) and what it compared. The process exits 1 if any check failed. Nothing here needs the
network or model weights: ``builtin:`` models and a llama built from a config.

    python bench/gpu_check.py [--out DIR] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

RESULTS: list[dict] = []


def report(name: str, ok: bool, **facts: object) -> None:
    RESULTS.append({"check": name, "ok": ok, **facts})
    shown = "  ".join(f"{k} {v}" for k, v in facts.items())
    print(f"{'PASS' if ok else 'FAIL'}  {name:28s} {shown}", flush=True)


def environment() -> None:
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0) if cuda else None,
             "bf16": cuda and torch.cuda.is_bf16_supported(), "flash_attn": importlib.util.find_spec("flash_attn") is not None}
    for name in ("transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            facts[name] = __import__(name).__version__
        except Exception as err:  # noqa: BLE001 - a missing package is a fact to print
            facts[name] = f"missing ({type(err).__name__})"
    report("environment", cuda, **facts)


def one_b_llama(vocab: int = 32000) -> object:
    """About 1.1 B parameters (TinyLlama's shape), random init, bf16, on the GPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                         num_key_value_heads=4, max_position_embeddings=2048, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device("cuda"):
        return LlamaForCausalLM(config).to(torch.bfloat16).train()


def chunked_against_full(batch: int, length: int) -> None:
    """Loss and head gradient of the chunked loss vs the model's own (full logits), their peak memory and time."""
    import torch

    from ptrain import chunked_cross_entropy, measure_memory, memory_in_use_mb

    model = one_b_llama()
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, model.config.vocab_size, (batch, length), device="cuda")
    labels = ids.clone()
    labels[:, : length // 4] = -100
    results = {}
    for variant in ("full", "chunked", "full", "chunked"):  # the second round is timed: the first warms up
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        with measure_memory(baseline_mb=memory_in_use_mb()) as used:
            started = time.perf_counter()
            if variant == "full":
                loss = model(input_ids=ids, labels=labels).loss
            else:
                hidden = model.model(input_ids=ids).last_hidden_state
                loss = chunked_cross_entropy(hidden, model.lm_head.weight, labels)
            loss.backward()
            torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        results[variant] = {"loss": loss.item(), "grad": model.lm_head.weight.grad.float().norm().item(),
                            "seconds": seconds, "peak_mb": used.above_baseline_mb}
    full, chunked = results["full"], results["chunked"]
    agree = abs(full["loss"] - chunked["loss"]) < 2e-2 and abs(full["grad"] - chunked["grad"]) / full["grad"] < 2e-2
    report("chunked vs full loss (1B)", agree, parameters=f"{params / 1e9:.2f}B", tokens=batch * length,
           loss=f"{full['loss']:.4f}/{chunked['loss']:.4f}", head_grad=f"{full['grad']:.3f}/{chunked['grad']:.3f}",
           step_s=f"{full['seconds']:.2f}/{chunked['seconds']:.2f}",
           tokens_per_s=f"{batch * length / full['seconds']:.0f}/{batch * length / chunked['seconds']:.0f}",
           peak_above_mb=f"{full['peak_mb']:.0f}/{chunked['peak_mb']:.0f}")
    del model
    torch.cuda.empty_cache()


def save_one_b(where: Path) -> Path:
    """The 1 B llama saved as a model directory with builtin:tiny-llama's tokenizer (its ids fit the 32 000 rows)."""
    from ptrain import load_pretrained

    model = one_b_llama()
    model.save_pretrained(where)
    load_pretrained("builtin:tiny-llama")[1].save_pretrained(where)
    del model
    return where


def ptrain_run(name: str, recipes: list[str], out: Path, *overrides: str) -> None:
    """One ``ptrain run`` in a subprocess; its exit, tokens/s and peak memory from metrics.json."""
    folder = out / name.replace(" ", "_").replace("+", "plus")
    command = [sys.executable, "-m", "ptrain", "run", *recipes, "--output-dir", str(folder), "--overwrite",
               "--set", "train.precision='bf16'", "--set", "eval.base=false", *[a for o in overrides for a in ("--set", o)]]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    metrics = {}
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        pass
    train = metrics.get("train", {})
    last = (done.stderr or done.stdout).strip().splitlines()[-1:] if done.returncode else []
    report(name, done.returncode == 0, exit=done.returncode, wall_s=f"{seconds:.0f}", tokens_per_s=train.get("tokens_per_s"),
           peak_above_mb=train.get("memory_above_baseline_mb"), loss=f"{train.get('first_logged_loss')}->{train.get('last_logged_loss')}",
           **({"error": last[0][:200]} if last else {}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/ptrain-gpu-check")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--only", nargs="*", help="run only these checks (by name), e.g. for a CPU smoke test")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipes = Path(__file__).resolve().parent.parent / "recipes"
    few = [f"train.max_steps={args.steps}", "train.logging_steps=2", "data.num_examples=400", "data.eval_size=16", "eval.max_samples=16",
           "output.plots=false", "output.report=false"]  # matplotlib is not carried to the GPU machine
    checks = [
        ("environment", environment),
        ("chunked vs full", lambda: chunked_against_full(8, 1024)),
        ("sft tiny", lambda: ptrain_run("sft tiny", [str(recipes / "sft_tiny.toml")], out, *few)),
        ("sft tiny full logits", lambda: ptrain_run("sft tiny full logits", [str(recipes / "sft_tiny.toml")], out, *few,
                                                    "train.chunked_loss=false")),
        ("sft + lora tiny", lambda: ptrain_run("sft + lora tiny", [str(recipes / "lora_tiny.toml")], out, *few)),
        ("qlora tiny", lambda: ptrain_run("qlora tiny", [str(recipes / "qlora_tiny.toml")], out, *few)),
        ("distill logit tiny", lambda: ptrain_run("distill logit tiny", [str(recipes / "distill_tiny_same_tokenizer.toml")], out, *few,
                                                  f"distill.teacher='{out / 'sft_tiny'}'")),
        ("grpo tiny", lambda: ptrain_run("grpo tiny", [str(recipes / "grpo_tiny.toml")], out, *few, "train.batch_size=16",
                                         f"model.name='{out / 'sft_tiny'}'")),
        ("sft 1B", lambda: ptrain_run("sft 1B", [str(recipes / "sft_tiny.toml")], out, *few, "train.batch_size=8",
                                      "train.max_length=512", f"model.name='{save_one_b(out / 'llama-1b')}'", "output.save_model=false")),
        ("sft + lora 1B", lambda: ptrain_run("sft + lora 1B", [str(recipes / "lora_tiny.toml")], out, *few, "train.batch_size=8",
                                             "train.max_length=512", f"model.name='{out / 'llama-1b'}'", "output.save_model=false")),
    ]
    for name, check in checks:
        if args.only and name not in args.only:
            continue
        try:
            check()
        except Exception as err:  # noqa: BLE001 - every check reports, the next one runs
            report(name, False, error=f"{type(err).__name__}: {err}"[:300])
            traceback.print_exc()
    (out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=1))
    failed = [r["check"] for r in RESULTS if not r["ok"]]
    print(f"\n{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
