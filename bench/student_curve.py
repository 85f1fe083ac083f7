"""The phase-1 student with and without its teacher, by training steps (and kept layers): the curve.

    python bench/student_curve.py --teacher runs/phase1_sft --steps 40 80
    python bench/student_curve.py --teacher runs/phase1_sft --steps 80 --layers 5 7 10
    python bench/student_curve.py --teacher runs/phase1_sft --steps 80 --arms KD on-policy "no teacher"

Each point is two ``ptrain run`` processes of ``recipes/phase1/4_distill_student.toml`` with
``train.max_steps`` (and ``model.keep_layers``) overridden: the recipe as it is (logit KD from the
teacher) and the same recipe without its ``[distill]`` section and with ``methods = ["sft"]`` (the
no-teacher baseline: the same cut model, data, steps, schedule and seed, trained on the labels alone);
``--arms ... on-policy`` adds the recipe with ``distill.on_policy = true`` (GKD: for a share ``--lmbda`` of the
batches the student samples its own completions and learns the teacher's distribution on them).
Both are scored by the same held-out evaluation (task metric, completion eval loss, generation
tokens/s); the teacher's generation tokens/s is measured in the KD run, on the same machine.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

from _runs import ptrain_run

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "phase1" / "4_distill_student.toml"


def without_teacher(text: str) -> str:
    """The student recipe as plain SFT: its ``[distill]`` section dropped, ``methods = ["sft"]``."""
    out, skipping = [], False
    for line in text.splitlines():
        if re.match(r"\s*\[", line):
            skipping = line.strip() == "[distill]"
        if not skipping:
            out.append(line)
    text = "\n".join(out) + "\n"
    text, n = re.subn(r"(?m)^methods\s*=.*$", 'methods = ["sft"]', text)
    if n != 1:
        sys.exit(f"{RECIPE}: expected one top-level methods line")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="runs/phase1_sft", help="the teacher's run directory (phase-1 stage 1)")
    parser.add_argument("--steps", type=int, nargs="+", default=[40, 80])
    parser.add_argument("--layers", type=int, nargs="+", default=[7], help="model.keep_layers values")
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--arms", nargs="+", choices=["KD", "on-policy", "no teacher"], default=["KD", "no teacher"])
    parser.add_argument("--lmbda", type=float, default=0.5, help="on-policy: share of batches on the student's samples")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="ptrain-bench-student-"))
    out.mkdir(parents=True, exist_ok=True)
    plain = out / "no_teacher.toml"
    plain.write_text(without_teacher(RECIPE.read_text()))

    rows = []
    for layers in args.layers:
        for steps in args.steps:
            common = [f"train.max_steps={steps}", f"model.keep_layers={layers}", "eval.base=false", "output.plots=false"]
            label = f"{layers} layers, {steps} steps"
            teacher_setting = f"distill.teacher={json.dumps(str(Path(args.teacher).resolve()))}"
            arms = {
                "KD": (RECIPE, [*common, teacher_setting]),
                "on-policy": (RECIPE, [*common, teacher_setting, "distill.on_policy=true", f"distill.lmbda={args.lmbda}"]),
                "no teacher": (plain, common),
            }
            measured = {}
            for arm in args.arms:
                print(f"{label}: {arm}…", file=sys.stderr, flush=True)
                recipe, settings = arms[arm]
                measured[arm] = ptrain_run(f"{label} {arm}", recipe, settings, out / f"{arm.replace(' ', '_')}_{layers}l_{steps}s")
            teacher = next((m["distill"]["teacher"] for m in measured.values() if "distill" in m), {})
            for arm, m in measured.items():
                rows.append({
                    "layers": layers, "steps": steps, "arm": arm,
                    "task_metric": m["final"]["task_metric"], "eval_loss": m["final"]["eval_loss"],
                    "tokens_per_s": m["final"]["generation_tokens_per_s"],
                    "teacher_task_metric": teacher.get("task_metric"), "teacher_tokens_per_s": teacher.get("generation_tokens_per_s"),
                    "train_time_s": m["train"]["train_time_s"],
                })

    print(f"\nstudent of {args.teacher} ({RECIPE.name}); teacher figures from the KD run of the same row")
    header = f"{'layers':>6}{'steps':>7}  {'arm':<11}{'task':>7}{'% teacher':>11}{'eval loss':>11}{'tok/s':>8}{'x teacher':>11}{'train s':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        share = 100 * r["task_metric"] / r["teacher_task_metric"] if r["teacher_task_metric"] else float("nan")
        speed = r["tokens_per_s"] / r["teacher_tokens_per_s"] if r["teacher_tokens_per_s"] else float("nan")
        print(f"{r['layers']:>6}{r['steps']:>7}  {r['arm']:<11}{r['task_metric']:>7.3f}{share:>10.0f}%{r['eval_loss']:>11.5f}"
              f"{r['tokens_per_s']:>8.1f}{speed:>10.2f}x{r['train_time_s']:>9.0f}")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
