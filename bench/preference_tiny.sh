#!/usr/bin/env bash
# SimPO beside DPO, ORPO and CPO on the bundled preference pairs, in one `ptrain compare` (issue 31).
# builtin:tiny-llama, reverse/uppercase pairs (400 train, 64 held out), 40 steps of 8 pairs at lr 1e-3, seed 7:
# the settings of recipes/simpo_tiny.toml and of tests/plugins/test_preference_methods.py. Each method at its
# section's defaults, except ORPO at beta 1.0 (as its test: at 0.1 the cross-entropy lifts the rejected answers too).
#   OMP_NUM_THREADS=1 bash bench/preference_tiny.sh [OUT]        (DPO needs pip install -e examples/ptrain-dpo)
set -euo pipefail
out=${1:-runs/preference_tiny}
mkdir -p "$out/recipes"
for method in dpo orpo simpo cpo; do
    section=""
    [ "$method" = orpo ] && section=$'[orpo]\nbeta = 1.0\n'
    cat > "$out/recipes/$method.toml" <<TOML
name = "${method}_tiny"
methods = ["$method"]
seed = 7
[model]
name = "builtin:tiny-llama"
[data]
source = "builtin:preferences"
tasks = ["reverse", "uppercase"]
num_examples = 400
eval_size = 64
$section
[train]
max_steps = 40
batch_size = 8
learning_rate = 1e-3
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
