#!/usr/bin/env bash
# Quality per CPU-minute on Fashion-MNIST (issue 14): each recipe trains for the same wall-clock
# budget (train.time_limit, setup included), then `difftrain evaluate` scores its EMA weights on
# 1,000 class-balanced samples in the demo's domain feature space (one feature network for all
# rows: configs/fashion-mnist.yaml's `features`, trained once). One row per line of ROWS:
#   name|--set key=value --set key=value
# Rows already in OUT/results.tsv are skipped, and ROWS is re-read after every row, so rows can be
# appended while the search runs. Run it on an idle machine: the budget is wall-clock.
# Usage: bench/recipe_search.sh [ROWS] [OUT_DIR] [LIMIT] [SAMPLER:STEPS]
#   default bench/recipe_rows.txt /tmp/recipe-search 10m dpmpp-2m:10
set -euo pipefail
ROWS=${1:-bench/recipe_rows.txt}
OUT=${2:-/tmp/recipe-search}
LIMIT=${3:-10m}
SAMPLER=${4:-dpmpp-2m:10}
DT=.venv/bin/difftrain
CFG=configs/fashion-mnist.yaml
mkdir -p "$OUT"
RES="$OUT/results.tsv"
[ -f "$RES" ] || printf 'name\tsteps\timages\ttrain_s\tfid\tkid\tprecision\trecall\tacc\tsampler\tsettings\n' >"$RES"
[ -f "$OUT/features/feature_net.json" ] || $DT features train $CFG --set "features.out=$OUT/features" \
  --set logging.progress=false
# A row named `common` holds overrides for every row (it is not a row itself).
COMMON=$(grep '^common|' "$ROWS" | head -1 | cut -d'|' -f2- || true)
while true; do
  line=$(grep -v '^\s*#' "$ROWS" | grep -v '^\s*$' | grep -v '^common|' | while IFS='|' read -r name sets; do
    cut -f1 "$RES" | grep -qx "$name" || { echo "$name|$sets"; break; }; done || true)
  [ -z "$line" ] && break
  name=${line%%|*}; sets=${line#*|}
  echo "== $name: $sets"
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  $DT train $CFG --set "train.run_dir=$OUT/$name" --set "train.time_limit=$LIMIT" \
    --set eval.every=0 --set logging.progress=false $COMMON $sets >"$OUT/$name.log" 2>&1 \
    || { tail -20 "$OUT/$name.log"; exit 1; }
  train_s=$(python3 -c "import time; print(round(time.time() - $start))")
  $DT evaluate "$OUT/$name" --num 1000 --sampler "${SAMPLER%%:*}" --steps "${SAMPLER##*:}" \
    --feature-net "$OUT/features" >>"$OUT/$name.log" 2>&1 || { tail -20 "$OUT/$name.log"; exit 1; }
  python3 - "$OUT/$name" "$name" "$train_s" "$SAMPLER" "$sets" >>"$RES" <<'PY'
import json, sys
run, name, train_s, sampler, sets = sys.argv[1:]
rows = [json.loads(x) for x in open(f"{run}/metrics.jsonl") if '"train/images_seen"' in x]
m = json.load(open(f"{run}/eval.json"))["evaluations"][-1]["metrics"]
print("\t".join(str(v) for v in (
    name, rows[-1]["step"], rows[-1]["train/images_seen"], train_s, round(m["fid_domain"], 3),
    round(m["kid_domain"], 4), round(m["precision_domain"], 3), round(m["recall_domain"], 3),
    round(m["acc"], 3), sampler, sets.strip() or "(today's config)")))
PY
  tail -1 "$RES"
done
column -t -s $'\t' "$RES"
