"""Streaming against loading, on the same JSON-lines files: how a run's memory grows with the data file.

For each file size, one process per mode runs the same recipe (SFT of builtin:tiny-llama, a fixed
number of steps): ``data.streaming = true`` reads rows as training goes, the default loads and
normalises every row first. Every row carries an unused 8 KB ``notes`` column, as real exports
do. The figure is ``ptrain.measure_memory``'s: the process's peak resident memory above what was
in use once the libraries were imported (measured around validation and the whole run)::

    python bench/streaming_memory.py                  # 25, 100 and 400 MiB files, 30 steps
    python bench/streaming_memory.py --sizes 50 200 --steps 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys
import trl, peft, datasets  # noqa: F401  the libraries' own memory is below the baseline
from trl import SFTTrainer  # noqa: F401
from ptrain import measure_memory
from ptrain._models import model_location
from ptrain.testing import execute

path, streaming, steps, out = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4]
model_location("builtin:tiny-llama")  # the built-in checkpoint exists before the baseline
recipe = {
    "name": "bench", "methods": ["sft"], "model": {"name": "builtin:tiny-llama"},
    "data": {"source": path, "streaming": streaming, "eval_size": 8},
    "train": {"max_steps": steps, "batch_size": 8, "learning_rate": 1e-3, "max_length": 64, "logging_steps": 10},
    "eval": {"base": False, "max_samples": 4, "max_new_tokens": 8},
    "output": {"plots": False, "report": False, "save_model": False},
}
with measure_memory() as usage:
    run = execute(recipe, output_dir=out, overwrite=True)
print(json.dumps({"above_baseline_mb": usage.above_baseline_mb, "peak_mb": usage.peak_mb, "steps": run.metrics["train"]["steps"]}))
"""


def write_file(path: Path, size_mb: int) -> float:
    notes = "x" * 8000
    with path.open("w") as handle:
        i = 0
        while handle.tell() < size_mb * 2**20:
            handle.write(json.dumps({"prompt": f"Reverse {i % 997} {i}", "completion": f"{i} {i % 997}", "notes": notes}) + "\n")
            i += 1
    return path.stat().st_size / 2**20


def measure(path: Path, streaming: bool, steps: int, folder: Path) -> dict:
    out = folder / ("stream" if streaming else "load")
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), "1" if streaming else "0", str(steps), str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 100, 400], help="file sizes in MiB")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    print(f"{'file MiB':>9} {'streamed: above baseline MiB':>29} {'loaded: above baseline MiB':>27} {'loaded / streamed':>18}")
    with tempfile.TemporaryDirectory(prefix="ptrain-bench-stream-") as tmp:
        folder = Path(tmp)
        for size in args.sizes:
            path = folder / f"data-{size}.jsonl"
            actual = write_file(path, size)
            streamed = measure(path, True, args.steps, folder)
            loaded = measure(path, False, args.steps, folder)
            ratio = loaded["above_baseline_mb"] / max(streamed["above_baseline_mb"], 1e-9)
            print(f"{actual:9.0f} {streamed['above_baseline_mb']:29.1f} {loaded['above_baseline_mb']:27.1f} {ratio:18.1f}", flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
