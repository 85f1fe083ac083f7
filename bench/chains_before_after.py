"""A chain of recipes run twice, before the CPU levers and with today's defaults, and the two side by side.

"before" = ``--set train.precision=fp32 --set train.chunked_loss=false`` (what ptrain ran before the performance
issue); "now" = the recipes as they are (``auto`` precision: bf16 autocast on a CPU that computes it faster, the
chunked loss, ``lora.fp32_adapters``). Each chain runs in its own folder (``runs/`` and ``compare/`` there), so a
later stage reads its own chain's earlier run (``distill.teacher = "runs/phase1_sft"``)::

    python bench/chains_before_after.py phase1 --folder /tmp/chains               # one chain after the other, 2 threads each
    python bench/chains_before_after.py peft --folder /tmp/chains --side-by-side  # both at once, one thread each
    python bench/chains_before_after.py phase1 --folder /tmp/chains --table       # the table of runs already made

The table: per run, training time, training tokens/s, peak training memory above the baseline (the project's one
definition, ``train.memory_above_baseline_mb``), eval loss and task metric, before / now and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAINS = {
    "phase1": sorted((ROOT / "recipes" / "phase1").glob("*.toml")),
    "peft": sorted((ROOT / "recipes" / "peft").glob("*.toml")),
}
BEFORE = ["train.precision=fp32", "train.chunked_loss=false"]
TRAINS_NOTHING = {"5_quantize.toml"}  # exports only, the same in both chains: run in "now" alone


def command(recipes: list[Path], settings: list[str]) -> list[str]:
    line = [sys.executable, "-m", "ptrain", "run", *map(str, recipes), "--skip-done", "--compare", "compare"]
    for item in settings:
        line += ["--set", item]
    return line


def run_chains(chain: str, folder: Path, side_by_side: bool) -> None:
    recipes = CHAINS[chain]
    jobs = []
    for variant, settings in (("before", BEFORE), ("now", [])):
        where = folder / f"{chain}-{variant}"
        where.mkdir(parents=True, exist_ok=True)  # the recipes' run paths (runs/phase1_sft) are read from here
        chosen = [r for r in recipes if variant == "now" or r.name not in TRAINS_NOTHING]
        env = dict(os.environ, OMP_NUM_THREADS="1") if side_by_side else None
        with (where / "log.txt").open("w") as log:
            process = subprocess.Popen(command(chosen, settings), cwd=where, stdout=log, stderr=subprocess.STDOUT, env=env)
        if side_by_side:
            jobs.append(process)
        elif process.wait() != 0:
            sys.exit(f"{chain} {variant} failed: see {where / 'log.txt'}")
    for process in jobs:
        if process.wait() != 0:
            sys.exit(f"{chain}: a chain failed: see the log.txt files under {folder}")


def figures(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    train, final = metrics.get("train", {}), metrics.get("final", {})
    return {
        "train s": train.get("train_time_s"),
        "tokens/s": train.get("tokens_per_s"),
        "memory MiB": train.get("memory_above_baseline_mb"),
        "precision": train.get("precision"),
        "eval loss": final.get("eval_loss"),
        "task": final.get("task_metric"),
    }


def ratio(now: float | None, before: float | None) -> str:
    return f"{now / before:.2f}x" if now and before else "-"


def row(name: str, before: dict, now: dict) -> str:
    cells = [name]
    for key in ("train s", "tokens/s", "memory MiB"):
        cells += [f"{before.get(key, '-')} / {now[key]}", ratio(now[key], before.get(key))]
    cells += [f"{before.get(key, '-')} / {now[key]}" for key in ("precision", "eval loss", "task")]
    return "| " + " | ".join(map(str, cells)) + " |"


def table(chain: str, folder: Path) -> str:
    before_runs, now_runs = folder / f"{chain}-before" / "runs", folder / f"{chain}-now" / "runs"
    lines = [
        "| run | train s before / now | | tokens/s before / now | | memory above baseline MiB before / now | | "
        "precision | eval loss before / now | task metric before / now |",
        "| --- | --- | ---: | --- | ---: | --- | ---: | --- | --- | --- |",
    ]
    for run in sorted(p for p in now_runs.iterdir() if (p / "metrics.json").exists()) if now_runs.exists() else []:
        now = figures(run)
        if now["train s"]:
            earlier = before_runs / run.name / "metrics.json"
            lines.append(row(run.name, figures(earlier.parent) if earlier.exists() else {}, now))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chain", choices=sorted(CHAINS))
    parser.add_argument("--folder", type=Path, required=True, help="where the two chains' folders go")
    parser.add_argument("--side-by-side", action="store_true", help="run both chains at once, one thread each")
    parser.add_argument("--table", action="store_true", help="only print the table of runs already made")
    args = parser.parse_args()
    if not args.table:
        run_chains(args.chain, args.folder, args.side_by_side)
    print(table(args.chain, args.folder))


if __name__ == "__main__":
    main()
