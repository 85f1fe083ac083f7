"""Single template vs randomized templates, same model, data, steps and seed; prints the comparison.

    python bench/instruct_robustness.py --steps 400 --out runs/instruct_bench

Runs recipes/instruct_tiny_single.toml then recipes/instruct_tiny.toml (one after the other) with
the settings of tests/plugins/test_instruct.py, then ``ptrain compare`` on the two run directories.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from click.testing import CliRunner

from ptrain._cli import cli
from ptrain._lifecycle import execute
from ptrain._recipe import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-rows", type=int, default=40)
    parser.add_argument("--out", default="runs/instruct_bench")
    args = parser.parse_args()
    overrides = (
        f"train.max_steps={args.steps}", "eval.base=false", f"data.eval_size={max(40, args.eval_rows)}", "eval.max_samples=40",
        "train.logging_steps=10", f"instruct.eval_rows={args.eval_rows}",
    )
    dirs = []
    for name in ("instruct_tiny_single", "instruct_tiny"):
        run = execute(load_recipe(RECIPES / f"{name}.toml", overrides), output_dir=f"{args.out}/{name}", overwrite=True)
        dirs.append(str(run.dir))
    result = CliRunner().invoke(cli, ["compare", *dirs, "--output", args.out], terminal_width=140)
    print(result.output)


if __name__ == "__main__":
    main()
