#!/usr/bin/env bash
# Recipe A/B for the emoji text-to-image demo: each row of ROWS_FILE (`name|--set k=v ...`)
# trains configs/emoji-t2i.yaml for STEPS steps on one autoencoder's latents, then is judged alike:
# prompt accuracy (scripts/prompt_eval.py, 17 prompts × 8 samples, the judge = a domain feature
# network on the emoji.json categories, trained once) and the 8-prompt grid of `make demo-t2i`.
#   bash bench/emoji_t2i_ab.sh [OUT_DIR] [ROWS_FILE] [STEPS]
#       (defaults /tmp/emoji-t2i-ab, bench/emoji_t2i_rows.txt, 3000; AE=runs/emoji-vae)
# Rows train two at a time on one thread each and have a fixed number of steps, so their quality
# does not depend on the machine's load (their wall time does: no timings are reported here).
# Existing rows are reused (move OUT/NAME away to redo one); nothing is deleted.
set -euo pipefail
OUT=${1:-/tmp/emoji-t2i-ab}
ROWS=${2:-bench/emoji_t2i_rows.txt}
STEPS=${3:-3000}
AE=${AE:-runs/emoji-vae}
DT=.venv/bin/difftrain
CFG=configs/emoji-t2i.yaml
[ -d "$AE/autoencoder" ] || { echo "no autoencoder run at $AE: run make demo-t2i (or set AE=)" >&2; exit 2; }
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
quiet=(--set logging.progress=false --set logging.tensorboard=false)
if [ ! -f "$OUT/judge/feature_net.json" ]; then
  $DT features train $CFG --set "train.run_dir=$OUT/judge-run" --set "features.out=$OUT/judge" \
    --set logging.progress=false >"$OUT/judge.log" 2>&1
fi
row() {  # name args...: train (unless done), score, grid
  local name=$1; shift
  if [ ! -d "$OUT/$name/checkpoints/step-$(printf %07d "$STEPS")" ]; then
    [ -e "$OUT/$name" ] && { echo "$OUT/$name exists but is incomplete: move it away" >&2; return 2; }
    $DT train $CFG --set "latent.autoencoder=$AE" --set "train.run_dir=$OUT/$name" \
      --set "train.max_steps=$STEPS" --set train.time_limit=null "${quiet[@]}" "$@" \
      >"$OUT/$name.log" 2>&1 || { tail -n 20 "$OUT/$name.log"; return 1; }
  fi
  [ -f "$OUT/$name/prompt_eval.json" ] || .venv/bin/python scripts/prompt_eval.py "$OUT/$name" \
    --prompts configs/emoji-eval-prompts.tsv --num 8 --feature-net "$OUT/judge" >/dev/null
  [ -f "$OUT/$name/generated/grid.png" ] || $DT sample "$OUT/$name" --num 8 --guidance 3 \
    --seed 0 --prompt-file configs/emoji-prompts.txt --out "$OUT/$name/generated" >/dev/null
}
names=()
pids=()
while IFS='|' read -r name args; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  names+=("$name")
  # shellcheck disable=SC2086  # args are words
  row "$name" $args &
  pids+=($!)
  if [ ${#pids[@]} -eq 2 ]; then wait "${pids[@]}"; pids=(); fi
done <"$ROWS"
[ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"
python3 - "$OUT" "${names[@]}" <<'PY'
import json, sys
from pathlib import Path
out, names = Path(sys.argv[1]), sys.argv[2:]
prompts = ["red heart", "cat face", "pizza", "sun", "tree", "car", "ghost"]
print("| row | prompt accuracy | " + " | ".join(prompts) + " | val loss (last) | grid |")
print("|---|---:|" + "---:|" * len(prompts) + "---:|---|")
for n in names:
    pe = json.loads((out / n / "prompt_eval.json").read_text())
    val = [json.loads(l) for l in (out / n / "metrics.jsonl").read_text().splitlines()]
    val = [r["val/loss"] for r in val if "val/loss" in r]
    per = " | ".join(f"{pe['per_prompt'][p]:.2f}" for p in prompts)
    print(f"| {n} | {pe['prompt_accuracy']:.3f} | {per} | {val[-1]:.3f} | {out / n}/generated/grid.png |")
PY
