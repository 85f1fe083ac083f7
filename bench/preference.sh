#!/usr/bin/env bash
# SimPO beside DPO, ORPO and CPO on the bundled preference pairs, in one `ptrain compare` (issue 31).
# Default: builtin:tiny-llama, reverse/uppercase pairs (400 train, 64 held out), 40 steps of 8 pairs at lr 1e-3,
# seed 7: the settings of recipes/simpo_tiny.toml and of tests/plugins/test_preference_methods.py. Each method at
# its section's defaults, except ORPO at beta 1.0 (as its test: at 0.1 the cross-entropy lifts the rejected answers
# too). MODEL, LR and TAG choose another model (bench/README.md: SmolLM2-135M-Instruct at lr 1e-5, full fine-tuning).
#   OMP_NUM_THREADS=1 bash bench/preference.sh [OUT]             (DPO needs pip install -e examples/ptrain-dpo)
#   MODEL=builtin:smollm2-135m-instruct LR=1e-5 TAG=smollm2 bash bench/preference.sh
set -euo pipefail
model=${MODEL:-builtin:tiny-llama}
lr=${LR:-1e-3}
tag=${TAG:-tiny}
out=${1:-runs/preference_$tag}
mkdir -p "$out/recipes"
for method in dpo orpo simpo cpo; do
    section=""
    [ "$method" = orpo ] && section=$'[orpo]\nbeta = 1.0\n'
    cat > "$out/recipes/$method.toml" <<TOML
name = "${method}_$tag"
methods = ["$method"]
seed = 7
[model]
name = "$model"
[data]
source = "builtin:preferences"
tasks = ["reverse", "uppercase"]
num_examples = 400
eval_size = 64
$section
[train]
max_steps = 40
batch_size = 8
learning_rate = $lr
max_length = 128
logging_steps = 5
[eval]
max_samples = 4
max_new_tokens = 4
[output]
save_model = false
TOML
    ptrain run "$out/recipes/$method.toml" --output-dir "$out/$method" --overwrite
done
ptrain compare "$out/dpo" "$out/orpo" "$out/simpo" "$out/cpo" --output "$out/compare"
cat "$out/compare/compare.md"
