#!/usr/bin/env bash
# Reward fine-tuning on the Fashion-MNIST demo model (issue 15's target: class accuracy of
# conditional samples at guidance 1 raised to >= 0.9 with domain FID at most 20% worse).
#   bash bench/reward_fashion.sh [OUT_DIR] [ROWS_FILE]   (default /tmp/reward-fashion, bench/reward_fashion_rows.txt)
# Stage 1 trains the demo model as `make demo` does (features, then 6m30s of training: run it on
# an idle machine), and an independent judge: a second, wider feature network (seed 1) that no
# reward sees. Each row of ROWS_FILE (`name|method|steps|--lr X --set k=v ...`) fine-tunes the
# base with the class-prob reward of the base's own feature network. Fine-tuning has a fixed
# number of steps, so its quality does not depend on the machine's load (its wall time does).
# Every model is evaluated alike: 1,000 class-balanced samples, DPM-Solver++(2M) 10 steps,
# guidance 1, the same seeds; FID/KID/precision/recall/accuracy in the base's feature space, and
# accuracy again by the judge. Existing rows are reused (delete OUT/NAME to redo one).
set -euo pipefail
OUT=${1:-/tmp/reward-fashion}
ROWS=${2:-bench/reward_fashion_rows.txt}
DT=.venv/bin/difftrain
CFG=configs/fashion-mnist.yaml
mkdir -p "$OUT"
quiet=(--set logging.progress=false --set logging.tensorboard=false)
t() { local s=$SECONDS; "$@" >"$OUT/last.log" 2>&1 || { cat "$OUT/last.log"; exit 1; }; echo $((SECONDS - s)); }
if [ ! -f "$OUT/base/features/feature_net.json" ] || [ -z "$(ls "$OUT/base/checkpoints" 2>/dev/null)" ]; then
  [ -e "$OUT/base" ] && { echo "$OUT/base exists but is incomplete: move it away first" >&2; exit 2; }
  s=$(t $DT features train $CFG --set "train.run_dir=$OUT/base"); echo "features_s=$s"
  s=$(t $DT train $CFG --set "train.run_dir=$OUT/base" --set train.time_limit=6m30s "${quiet[@]}"); echo "base_train_s=$s"
fi
if [ ! -f "$OUT/judge/feature_net.json" ]; then
  s=$(t $DT features train $CFG --set "train.run_dir=$OUT/judge-run" --set "features.out=$OUT/judge" \
    --set features.width=32 --set features.epochs=4 --set features.seed=1); echo "judge_s=$s"
fi
ev() {  # run → OUT/eval-NAME (base features) and OUT/judge-NAME (accuracy by the judge)
  local common=(--num 1000 --guidance 1 --sampler dpmpp-2m --steps 10)
  [ -f "$OUT/eval-$2/eval.json" ] || t $DT evaluate "$1" --metrics fid,kid,pr,acc "${common[@]}" \
    --feature-net "$OUT/base/features" --out "$OUT/eval-$2" >/dev/null
  [ -f "$OUT/judge-$2/eval.json" ] || t $DT evaluate "$1" --metrics acc "${common[@]}" \
    --feature-net "$OUT/judge" --out "$OUT/judge-$2" >/dev/null
}
ev "$OUT/base" base
names=(base)
while IFS='|' read -r name method steps args; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  names+=("$name")
  if [ ! -d "$OUT/$name" ]; then
    # shellcheck disable=SC2086  # args are words
    s=$(t $DT finetune-reward "$OUT/base" --reward class-prob --method "$method" --max-steps "$steps" \
      --out "$OUT/$name" --set sample.guidance=1 --set sample.guidance_interval=null \
      --set "eval.every=$((steps / 4))" --set eval.num=256 "${quiet[@]}" $args); echo "${name}_s=$s"
  fi
  ev "$OUT/$name" "$name"
done <"$ROWS"
python3 - "$OUT" "${names[@]}" <<'PY'
import json, sys
from pathlib import Path
out, names = Path(sys.argv[1]), sys.argv[2:]
def last(d):
    return json.loads((out / d / "eval.json").read_text())["evaluations"][-1]["metrics"]
base = last("eval-base")["fid_domain"]
print("| model | accuracy (reward's net) | accuracy (judge) | FID (domain) | FID / base | precision | recall |")
print("|---|---:|---:|---:|---:|---:|---:|")
for n in names:
    m, j = last(f"eval-{n}"), last(f"judge-{n}")
    print(f"| {n} | {m['acc']:.3f} | {j['acc']:.3f} | {m['fid_domain']:.3f} | "
          f"{m['fid_domain'] / base:.2f} | {m['precision_domain']:.3f} | {m['recall_domain']:.3f} |")
PY
