"""On-policy against offline distillation of the phase-1 student at equal training time (issue 31).

    python bench/onpolicy_equal_time.py --teacher runs/phase1_sft --warm runs/student_sft80 --steps 40 62
    python bench/onpolicy_equal_time.py --teacher runs/phase1_sft --warm runs/student_sft80_l50 --steps 40 --labeled 50

Both arms start from the same warm-started student (``--warm``: a run directory of the 7-layer student trained
without the teacher, as GKD prescribes: SFT first) and run ``recipes/phase1/4_distill_student.toml`` with its
teacher, seed, batch size and schedule (cosine over each run's own steps). For each ``--steps`` N:

1. offline KD for N steps, which measures offline's seconds per step on this machine;
2. on-policy KD for N steps (``distill.on_policy``, ``--lmbda`` of the batches on the student's own samples);
3. offline KD again, given on-policy's training seconds: on-policy's ``train_time_s`` over offline's seconds
   per step, rounded down (skipped where that is N).

``train_time_s`` is the core's training time (the trainer's steps, on-policy sampling included; not loading or
evaluation). Run it alone on the machine: equal time means nothing on a loaded one. ``--set`` passes more
overrides to every run (e.g. ``--set eval.max_samples=8`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _runs import ptrain_run

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "phase1" / "4_distill_student.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="the teacher's run directory (phase-1 stage 1)")
    parser.add_argument("--warm", required=True, type=Path, help="the warm-started student's run directory (its model/)")
    parser.add_argument("--steps", type=int, nargs="+", default=[40], help="on-policy step counts")
    parser.add_argument("--lmbda", type=float, default=0.5)
    parser.add_argument("--labeled", type=int, default=-1, help="distill.labeled (-1: every row labeled)")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="more overrides for every run")
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()
    warm = (args.warm / "model") if (args.warm / "model").is_dir() else args.warm
    if not (warm / "config.json").is_file():
        sys.exit(f"--warm {args.warm}: no model there (expected a run directory with model/ or a model directory)")
    out = args.out or Path(tempfile.mkdtemp(prefix="ptrain-bench-onpolicy-"))
    out.mkdir(parents=True, exist_ok=True)
    common = [
        f"model.name={json.dumps(str(warm.resolve()))}", "model.keep_layers=7",
        f"distill.teacher={json.dumps(str(Path(args.teacher).resolve()))}", f"distill.labeled={args.labeled}",
        "eval.base=false", "output.plots=false", *args.extra,
    ]

    def run(label: str, steps: int, *settings: str) -> dict:
        print(f"{label}, {steps} steps…", file=sys.stderr, flush=True)
        m = ptrain_run(label, RECIPE, [*common, f"train.max_steps={steps}", *settings], out / f"{label.replace(' ', '_')}_{steps}")
        d = m.get("distill", {})
        return {
            "arm": label, "steps": m["train"]["steps"], "train_s": m["train"]["train_time_s"],
            "task_metric": m["final"]["task_metric"], "eval_loss": m["final"]["eval_loss"],
            "sampling_s": d.get("on_policy_sampling_s"), "sample_tokens": d.get("on_policy_sample_tokens"),
            "samples_at_cap": d.get("on_policy_samples_at_cap"), "teacher_task_metric": d.get("teacher", {}).get("task_metric"),
            "precision": m["train"].get("precision"),
        }

    rows = []
    for steps in args.steps:
        offline = run("offline", steps)
        on = run(f"on-policy lmbda {args.lmbda}", steps, "distill.on_policy=true", f"distill.lmbda={args.lmbda}")
        rows += [offline, on]
        matched = int(on["train_s"] / (offline["train_s"] / offline["steps"]))
        if matched != steps:
            rows.append(run("offline", matched))

    print(f"\nstudent {warm} -> teacher {args.teacher}; labeled rows: {'all' if args.labeled == -1 else args.labeled}")
    header = f"{'arm':<22}{'steps':>6}{'train s':>9}{'sampling s':>12}{'task':>7}{'eval loss':>11}"
    print(header)
    print("-" * len(header))
    for r in rows:
        sampling = "" if r["sampling_s"] is None else f"{r['sampling_s']:.0f}"
        print(f"{r['arm']:<22}{r['steps']:>6}{r['train_s']:>9.0f}{sampling:>12}{r['task_metric']:>7.3f}{r['eval_loss']:>11.5f}")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
