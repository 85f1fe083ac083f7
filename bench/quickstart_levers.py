"""The quickstart before and after the CPU levers: ``recipes/quickstart.toml`` run as it ran before them
(``train.precision = "fp32"``, ``train.chunked_loss = false``) and with today's defaults (``auto``: bf16
autocast where the CPU computes it faster; the chunked loss), in alternating order, each run in its own
process. Prints per run the training time, the run's wall time (model load, both evaluations, export),
tokens/s, peak training memory above the baseline (the one definition, ``ptrain.measure_memory``), eval loss
and the task metric; then the median ratios new / before. Quality is guarded by the same rows: eval loss
within 1 % and the task metric equal is what the performance issue asks.

    flock /tmp/ptrain-heavy.lock python bench/quickstart_levers.py [--pairs 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _runs import ptrain_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "quickstart.toml"
VARIANTS = {
    "before (fp32, full logits)": ["train.precision=fp32", "train.chunked_loss=false"],
    "now (auto precision, chunked loss)": [],
}
FIELDS = ("precision", "train_s", "wall_s", "tokens_per_s", "above_baseline_mb", "eval_loss", "task_metric")


def measure(label: str, overrides: list[str], out: Path) -> dict:
    m = ptrain_run(label, RECIPE, overrides, out)
    train, final = m["train"], m["final"]
    return {"precision": train.get("precision", "fp32"), "train_s": train["train_time_s"], "wall_s": m["run"]["wall_time_s"],
            "tokens_per_s": train["tokens_per_s"], "above_baseline_mb": train["memory_above_baseline_mb"],
            "eval_loss": final["eval_loss"], "task_metric": final["task_metric"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2, help="runs of each variant, alternating which goes first")
    parser.add_argument("--set", dest="settings", action="append", default=[], help="a recipe override for both variants")
    parser.add_argument("--seeds", type=int, nargs="+", help="one pair per seed (recipe seed), instead of --pairs at the recipe's seed")
    args = parser.parse_args()
    seeds = args.seeds or [None] * args.pairs
    args.pairs = len(seeds)
    names = list(VARIANTS)
    rows: dict[str, list[dict]] = {name: [] for name in names}
    print("| variant | " + " | ".join(FIELDS) + " |")
    print("| --- |" + " ---: |" * len(FIELDS))
    with tempfile.TemporaryDirectory(prefix="quickstart-levers-") as scratch:
        for pair, seed in enumerate(seeds):
            seeded = [] if seed is None else [f"seed={seed}"]
            for name in names if pair % 2 == 0 else reversed(names):
                row = measure(name, [*VARIANTS[name], *args.settings, *seeded], Path(scratch) / f"{pair}-{names.index(name)}")
                row["seed"] = seed
                rows[name].append(row)
                print(f"| {name}{'' if seed is None else f' (seed {seed})'} | " + " | ".join(f"{row[f]:.4g}" if isinstance(row[f], float) else str(row[f]) for f in FIELDS) + " |",
                      flush=True)
    before, now = (rows[n] for n in names)

    def ratio(field: str) -> float:
        return statistics.median(b[field] / a[field] for a, b in zip(before, now, strict=True))

    print(f"\nnew / before, median of {args.pairs} pairs: training time {ratio('train_s'):.2f}x, run wall time "
          f"{ratio('wall_s'):.2f}x, tokens/s {ratio('tokens_per_s'):.2f}x, memory above baseline {ratio('above_baseline_mb'):.2f}x, "
          f"eval loss {ratio('eval_loss'):.3f}x; task metric before {[r['task_metric'] for r in before]}, "
          f"now {[r['task_metric'] for r in now]}")
    if args.seeds:
        for label, runs in (("before", before), ("now", now)):
            print(f"{label}: eval loss mean {statistics.mean(r['eval_loss'] for r in runs):.5f} "
                  f"(range {min(r['eval_loss'] for r in runs):.5f}-{max(r['eval_loss'] for r in runs):.5f}), "
                  f"task metric mean {statistics.mean(r['task_metric'] for r in runs):.4f}")


if __name__ == "__main__":
    main()
