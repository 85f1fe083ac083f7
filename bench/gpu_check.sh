#!/usr/bin/env bash
# GPU acceptance for ptrain on one CUDA GPU, meant to finish in under 8 minutes on one H100; no network there.
#
#   bench/gpu_check.sh --prepare   # on a machine with the package index: the wheels the GPU image lacks, into
#                                  # shared/wheels (travels beside the tree; 64 MiB in all with it)
#   bench/gpu_check.sh             # on the GPU machine: install them (--no-index), then bench/gpu_check.py;
#                                  # the output lands in bench/gpu_check.txt: commit it
#
# The GPU image has torch, transformers, peft, accelerate, pluggy, rich, click and pytest. What ptrain adds:
# trl, datasets (and pyarrow, pandas, dill, multiprocess, xxhash, fsspec), tomli-w. Not carried: matplotlib
# (the runs set output.plots = false and output.report = false) and bitsandbytes' CUDA wheel (over the
# budget on its own), so qlora runs only where the image has bitsandbytes, and is reported failed otherwise.
# Model weights do not fit either: builtin: models and a ~1.1 B random-init llama built from a config.
# Environment: PTRAIN_WHEELS (default shared/wheels), PTRAIN_GPU_PYTHON (the GPU image's Python, default this one's),
# PTRAIN_GPU_OUT (default /tmp/ptrain-gpu-check), PTRAIN_GPU_STEPS (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${PTRAIN_WHEELS:-shared/wheels}
CARRIED="trl datasets pyarrow pandas dill multiprocess xxhash fsspec tomli-w"

if [[ "${1:-}" == "--prepare" ]]; then
  PY=${PTRAIN_GPU_PYTHON:-$(python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')}
  mkdir -p "$WHEELS"
  # shellcheck disable=SC2086
  pip download --quiet --no-deps --only-binary=:all: --python-version "$PY" --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 -c requirements.lock -d "$WHEELS" $CARRIED
  du -sh "$WHEELS"
  exit 0
fi

{
  echo "# bench/gpu_check.sh, $(date -u +%Y-%m-%dT%H:%MZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "nvidia-smi: not available"
  started=$(date +%s)
  if [[ -d "$WHEELS" ]]; then
    python3 -m pip install --quiet --no-index --no-deps "$WHEELS"/*.whl 2>&1 | tail -3
  fi
  python3 -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | tail -3
  echo "install: $(( $(date +%s) - started )) s"
  set +e
  timeout 450 python3 bench/gpu_check.py --out "${PTRAIN_GPU_OUT:-/tmp/ptrain-gpu-check}" --steps "${PTRAIN_GPU_STEPS:-8}"
  code=$?
  echo "gpu_check.py exit $code; total $(( $(date +%s) - started )) s"
  exit $code
} 2>&1 | tee bench/gpu_check.txt
exit "${PIPESTATUS[0]}"
