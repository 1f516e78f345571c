#!/usr/bin/env bash
# Each curriculum vs none at the same wall-clock budget (train.time_limit, setup and the
# difficulty probe included) on scikit-learn's 8×8 digits; domain FID of the EMA weights.
# Usage: bench/curriculum.sh [OUT_DIR] [LIMIT]   (default /tmp/curriculum-bench, 40s)
set -euo pipefail
OUT=${1:-/tmp/curriculum-bench}
LIMIT=${2:-40s}
export OMP_NUM_THREADS=1
DT="nice -n 19 .venv/bin/difftrain"
mkdir -p "$OUT"
common=(--set train.max_steps=100000 --set "train.time_limit=$LIMIT" --set train.checkpoint_every=100000
        --set train.sample_every=100000 --set train.log_every=20 --set logging.progress=false
        --set logging.tensorboard=false --set sample.num=16)
declare -A CUR=(
  [none]=""
  [resolution]='train.curriculum.resolution=[{until_step: 100, resolution: 4}]'
  [noise]='train.curriculum.noise=[{step: 0, p_mean: 0.5, p_std: 1.0}, {step: 150, p_mean: -1.2, p_std: 1.2}]'
  [order]='train.curriculum.order={until_step: 150, probe_steps: 30, start_fraction: 0.3}'
)
$DT features train configs/tiny.yaml --set "features.out=$OUT/features" >/dev/null
for name in none resolution noise order; do
  extra=()
  [ -n "${CUR[$name]}" ] && extra=(--set "${CUR[$name]}")
  /usr/bin/time -f "$name cpu_s=%U+%S wall_s=%e" $DT train configs/tiny.yaml \
    --set "train.run_dir=$OUT/$name" "${common[@]}" "${extra[@]}" >"$OUT/$name.log" 2>&1 \
    || { cat "$OUT/$name.log"; exit 1; }
  tail -1 "$OUT/$name.log"
  $DT evaluate "$OUT/$name" --metrics fid --num 500 --sampler dpmpp-2m --steps 12 \
    --feature-net "$OUT/features" >/dev/null
  steps=$(grep -o '"step": [0-9]*' "$OUT/$name/metrics.jsonl" | tail -1 | grep -o '[0-9]*$')
  python3 -c "import json; e=json.load(open('$OUT/$name/eval.json'))['evaluations'][-1]; print('$name', 'steps', $steps, {k: round(v, 3) for k, v in e['metrics'].items()})"
done
