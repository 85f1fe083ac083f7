"""Sampling with ``generate`` under bf16 autocast, three ways, side by side: why the core wraps ``generate`` in one autocast.

    python bench/generation_autocast.py [--layers 7] [--batch 8] [--tokens 80]

The phase-1 student (SmolLM2-135M-Instruct cut to ``--layers`` layers) samples ``--tokens`` new tokens for
``--batch`` AVRO prompts (``min_new_tokens`` = ``max_new_tokens``: every call the same length), three times each:

- fp32;
- the forward cast at every decoding step, as the Trainer's accelerator wraps it during training (each exit from
  autocast empties its cache of bf16 weights, so every weight is cast again for every token);
- one autocast around the whole ``generate`` call (what ``cast_generation`` does while a mixed-precision Trainer
  trains), with the per-step cast nested inside, as it runs in training.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from ptrain._models import keep_layers, load_pretrained

    torch.manual_seed(0)
    model, tokenizer = load_pretrained("builtin:smollm2-135m-instruct")
    keep_layers(model, args.layers, "builtin:smollm2-135m-instruct")
    model.eval()
    tokenizer.padding_side = "left"
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": f"Write an AVRO schema for the entity.\n\nProduct{i} with id "
                                        "(long integer), name (text), price (decimal number)"}], tokenize=False, add_generation_prompt=True)
        for i in range(args.batch)
    ]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    options = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "do_sample": True, "top_k": 0,
               "pad_token_id": tokenizer.pad_token_id}

    def bf16() -> contextlib.AbstractContextManager:
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def timed(outer: contextlib.AbstractContextManager) -> list[float]:
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            with torch.no_grad(), outer():
                model.generate(**batch, **options)
            seconds.append(time.perf_counter() - started)
        return seconds

    rows = [("fp32", timed(contextlib.nullcontext))]
    forward = model.forward

    @functools.wraps(forward)
    def cast_per_step(*a, **k):  # as accelerate wraps a mixed-precision Trainer's model
        with bf16():
            return forward(*a, **k)

    model.forward = cast_per_step
    rows.append(("bf16, the forward cast per step (the Trainer's)", timed(contextlib.nullcontext)))
    rows.append(("bf16, one autocast around generate (cast_generation)", timed(bf16)))
    base = min(rows[0][1])
    print(f"{args.layers} layers, {args.batch} x {args.tokens} sampled tokens, {torch.get_num_threads()} threads, best of {args.repeats}")
    for label, seconds in rows:
        print(f"{label:<56} {min(seconds):6.2f} s  ({' '.join(f'{s:.2f}' for s in seconds)})  x fp32 {base / min(seconds):.2f}")


if __name__ == "__main__":
    main()
