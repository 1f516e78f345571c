#!/usr/bin/env bash
# Reward fine-tuning against the plain model on scikit-learn's 8×8 digits (class-conditional):
# class accuracy (domain classifier) and domain FID at guidance 1, before and after DDPO and
# DRaFT-K with the class-prob reward, plus each stage's wall time. Run on an idle machine:
#   bash bench/reward_digits.sh [OUT_DIR] [REWARD_STEPS]    (default /tmp/reward-bench, 40)
set -euo pipefail
OUT=${1:-/tmp/reward-bench}
STEPS=${2:-40}
DT=.venv/bin/difftrain
export OMP_NUM_THREADS=1
for d in "$OUT"/{base,ddpo,draft,eval-base,eval-ddpo,eval-draft}; do  # never deletes: refuses
  [ -e "$d" ] && { echo "$d exists: move it away (or pass another OUT_DIR) first" >&2; exit 2; }
done
mkdir -p "$OUT"
quiet=(--set logging.progress=false --set logging.tensorboard=false)
t() { local s=$SECONDS; "$@" >"$OUT/last.log" 2>&1 || { cat "$OUT/last.log"; exit 1; }; echo $((SECONDS - s)); }
echo "features_s=$(t $DT features train configs/tiny.yaml --set "train.run_dir=$OUT/base")"
echo "base_train_s=$(t $DT train configs/tiny.yaml --set "train.run_dir=$OUT/base" "${quiet[@]}")"
ev() {  # run → eval dir; same feature net, sampler and seeds for every model
  t $DT evaluate "$1" --metrics fid,acc --num 1000 --guidance 1 --sampler heun --steps 12 \
    --feature-net "$OUT/base/features" --out "$2"
}
echo "base_eval_s=$(ev "$OUT/base" "$OUT/eval-base")"
for m in ddpo draft; do
  # The table's settings: DRaFT-1 at lr 1e-4 without the data term (before DRaFT's defaults became
  # K = 3, lr 2e-5, reward.data_weight 0.1; not re-measured here).
  args=(); [ $m = draft ] && args=(--lr 1e-4 --set reward.draft_k=1 --set reward.data_weight=0)
  echo "${m}_s=$(t $DT finetune-reward "$OUT/base" --reward class-prob --method $m "${args[@]}" \
    --max-steps "$STEPS" --out "$OUT/$m" "${quiet[@]}")"
  echo "${m}_eval_s=$(ev "$OUT/$m" "$OUT/eval-$m")"
done
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| model | class accuracy | FID (domain) |\n|---|---|---|")
for name in ("base", "ddpo", "draft"):
    m = json.loads((out / f"eval-{name}" / "eval.json").read_text())["evaluations"][-1]["metrics"]
    print(f"| {name} | {m['acc']:.3f} | {m['fid_domain']:.3f} |")
PY
