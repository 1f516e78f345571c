#!/usr/bin/env bash
# The emoji text-to-image demo's latent model against a pixel-space model trained for the same
# wall-clock budget on an idle machine (the latent side's budget includes its autoencoder).
# Same data (32 px emoji-base), text encoder, U-Net preset, batch, optimizer and sampler; the
# pixel model denoises 32×32×3 images instead of 8×8×4 latents (sigma_data 0.5 for pixels).
#   make demo-t2i                                   # the latent side: runs/emoji-vae + runs/emoji-t2i
#   bash bench/t2i_latent_vs_pixel.sh [BUDGET]      # default 48m = 8m autoencoder + 40m model
# Then: make demo-t2i-eval RUN=runs/emoji-t2i-pixel (prompt accuracy, domain FID) for both.
set -euo pipefail
BUDGET=${1:-48m}
OUT=runs/emoji-t2i-pixel
DT=.venv/bin/difftrain
rm -rf "$OUT"
/usr/bin/time -f "pixel wall_s=%e" $DT train configs/emoji-t2i.yaml --set "train.run_dir=$OUT" \
  --set latent.autoencoder=null --set latent.cache=false --set diffusion.sigma_data=0.5 \
  --set "train.time_limit=$BUDGET" --set logging.progress=false
python3 - "$OUT" runs/emoji-t2i <<'PY'
import json, statistics, sys
for run in sys.argv[1:]:
    rows = [json.loads(r) for r in open(f"{run}/metrics.jsonl")]
    ips = [r["train/img_per_s"] for r in rows if "train/img_per_s" in r]
    steps = max(r["step"] for r in rows)
    print(f"{run}: {steps} steps, median {statistics.median(ips):.1f} img/s")
PY
