#!/usr/bin/env bash
# The emoji text-to-image demo's latent model against a pixel-space model given the same
# wall-clock budget on an idle machine (the latent side's budget includes its autoencoder).
# Same data (32 px emoji-base), text encoder, U-Net preset, batch, optimizer and sampler; the
# pixel model denoises 32×32×3 images instead of 8×8×4 latents (sigma_data 0.5 for pixels, and
# p_mean −0.4 = the latent config's 0.3 + ln 0.5: the same training σ/σ_data distribution).
#   make demo-t2i                                   # the latent side: runs/emoji-vae + runs/emoji-t2i
#   bash bench/t2i_latent_vs_pixel.sh [BUDGET [--set k=v ...]]   # default 48m = 8m autoencoder + 40m model
# The budget fixes the run's length once, a minute in (`train.time_limit = 48m: N steps planned`).
# On an idle machine that is all. To free the machine sooner, stop the run after that line and
# train exactly N steps, at any load (the same schedule, quality independent of load):
#   PIXEL_STEPS=N bash bench/t2i_latent_vs_pixel.sh
# Then prompt accuracy and domain FID for both, with the same feature network:
#   make demo-t2i-eval                              # trains runs/emoji-t2i/features, scores the latent run
#   .venv/bin/python scripts/prompt_eval.py runs/emoji-t2i-pixel --prompts configs/emoji-eval-prompts.tsv \
#     --num 32 --feature-net runs/emoji-t2i/features
set -euo pipefail
BUDGET=${1:-48m}
OUT=${OUT:-runs/emoji-t2i-pixel}
DT=.venv/bin/difftrain
if [ -e "$OUT" ]; then
  echo "$OUT exists: move it away (or set OUT=...) first; this script does not delete it" >&2
  exit 2
fi
length=(--set "train.time_limit=$BUDGET")
[ -n "${PIXEL_STEPS:-}" ] && length=(--set train.time_limit=null --set "train.max_steps=$PIXEL_STEPS")
/usr/bin/time -f "pixel wall_s=%e" $DT train configs/emoji-t2i.yaml --set "train.run_dir=$OUT" \
  --set latent.autoencoder=null --set latent.cache=false --set diffusion.sigma_data=0.5 \
  --set diffusion.p_mean=-0.4 \
  "${length[@]}" --set logging.progress=false "${@:2}"
python3 - "$OUT" runs/emoji-t2i <<'PY'
import json, statistics, sys
for run in sys.argv[1:]:
    rows = [json.loads(r) for r in open(f"{run}/metrics.jsonl")]
    ips = [r["train/img_per_s"] for r in rows if "train/img_per_s" in r]
    steps = max(r["step"] for r in rows)
    print(f"{run}: {steps} steps, median {statistics.median(ips):.1f} img/s")
PY
