#!/usr/bin/env bash
# Evaluation-time settings of one trained run (issue 14's recipe search, second half): sampler and
# step count, guidance scale and interval, EMA weights vs raw weights. Each row is one
# `difftrain evaluate` of 1,000 class-balanced samples in the given domain feature space; sample i
# depends only on (seed, i), so rows differ only by the setting. One row per line of ROWS:
#   name|evaluate options
# Usage: bench/sampling_settings.sh RUN FEATURE_NET [ROWS] [OUT_DIR]
set -euo pipefail
RUN=$1
FEAT=$2
ROWS=${3:-bench/sampling_rows.txt}
OUT=${4:-$RUN-sampling}
DT=${DT:-.venv/bin/difftrain}
mkdir -p "$OUT"
RES="$OUT/results.tsv"
[ -f "$RES" ] || printf 'name\tnfe_per_image\tfid\tkid\tprecision\trecall\tacc\tgenerate_s\toptions\n' >"$RES"
grep -v '^\s*#' "$ROWS" | grep -v '^\s*$' | while IFS='|' read -r name opts; do
  cut -f1 "$RES" | grep -qx "$name" && continue
  mkdir -p "$OUT/$name"
  # shellcheck disable=SC2086
  $DT evaluate "$RUN" --num 1000 --feature-net "$FEAT" --out "$OUT/$name" $opts \
    >"$OUT/$name.log" 2>&1 || { tail -20 "$OUT/$name.log"; exit 1; }
  python3 - "$OUT/$name/eval.json" "$name" "$opts" >>"$RES" <<'PY'
import json, sys
path, name, opts = sys.argv[1:]
e = json.load(open(path))["latest"]
s, m = e["settings"], e["metrics"]
heun = s["sampler"] in ("heun", "edm-stochastic")
calls = 2 * s["steps"] - 1 if heun else s["steps"]
if s["guidance"] != 1.0:
    calls = f"≤{2 * calls}" if s.get("guidance_interval") else 2 * calls
print("\t".join(str(v) for v in (
    name, calls, round(m["fid_domain"], 3), round(m["kid_domain"], 4),
    round(m["precision_domain"], 3), round(m["recall_domain"], 3), round(m["acc"], 3),
    e["seconds"]["generate_s"], opts.strip())))
PY
  tail -1 "$RES"
done
column -t -s $'\t' "$RES"
