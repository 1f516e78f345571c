"""Training throughput at 64×64: pixel space vs cached latents vs encoding every step.

All three run difftrain's one training loop (`difftrain.train.train`) with the same U-Net preset
on the same images (scikit-learn's digits upscaled to 64×64 RGB: content does not change the
cost): `pixel` denoises 64×64×3 images; `latent-cached` denoises the 16×16×4 latents of an
AutoencoderKL (`vae-small`, the emoji demo's ×4 autoencoder; random weights, which cost the same)
read from the memory-mapped latent cache; `latent-encode` runs the same model but encodes each
batch through the autoencoder every step (latent.cache = false). img/s is measured between the
warm-up log row and the last one, so the one-time cache build is reported separately.

    .venv/bin/python bench/latent_speedup.py --steps 20 --warmup 5 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from difftrain.config import load_config
from difftrain.models.autoencoder import AE_PRESETS, build_autoencoder
from difftrain.train import train


def run(sets: list[str], steps: int, warmup: int, root: Path, name: str) -> tuple[float, float]:
    """(img/s after the warm-up, wall seconds of the whole run) of one short training run."""
    cfg = load_config(None, sets)
    cfg.train.run_dir = root / name
    cfg.train.max_steps = warmup + steps
    cfg.train.log_every = warmup
    cfg.train.checkpoint_every = cfg.train.sample_every = 10**9
    cfg.train.posthoc_ema_sigma_rels = []
    cfg.sample.num, cfg.sample.steps = 1, 1  # the end-of-run grid is not what is measured
    cfg.logging.progress = cfg.logging.tensorboard = False
    cfg.data.val_fraction = 0.0
    t0 = time.time()
    train(cfg)
    rows = [json.loads(r) for r in (cfg.train.run_dir / "metrics.jsonl").read_text().splitlines()]
    t = {r["step"]: r["time"] for r in rows if "train/loss" in r}
    ips = steps * cfg.train.batch_size / (t[warmup + steps] - t[warmup])
    return ips, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--images", type=int, default=512, help="images in the (cached) data set")
    ap.add_argument("--preset", default="unet-small", help="U-Net preset for all three")
    ap.add_argument("--ae-preset", default="vae-small")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        build_autoencoder(AE_PRESETS[args.ae_preset], 3, 64).save_pretrained(
            root / "ae", safe_serialization=True
        )
        base = [
            "data.source=digits", "data.resolution=64", "data.channels=3",
            f"data.max_images={args.images}", f"model.preset={args.preset}",
            f"train.batch_size={args.batch_size}", "data.class_conditional=false",
        ]  # fmt: skip
        latent = [*base, f"latent.autoencoder={root / 'ae'}", f"latent.cache_dir={root / 'cache'}"]
        variants = {
            "pixel": base,
            "latent-cached": latent,
            "latent-encode": [*latent, "latent.cache=false"],
        }
        ips = {k: [] for k in variants}
        wall = {k: [] for k in variants}
        for r in range(args.rounds):  # alternate so drift in machine load hits all three
            for name, sets in variants.items():
                v, s = run(sets, args.steps, args.warmup, root, f"{name}-{r}")
                ips[name].append(v)
                wall[name].append(round(s, 1))  # latent-cached round 0 also builds the cache
                print(f"round {r}: {name:14s} {v:7.1f} img/s  ({s:.0f} s in all)", flush=True)
    med = {k: statistics.median(v) for k, v in ips.items()}
    out = {
        "device": "cuda"
        if torch.cuda.is_available()
        else f"cpu, {torch.get_num_threads()} thread(s)",
        "images": args.images,
        "batch_size": args.batch_size,
        "preset": args.preset,
        "ae_preset": args.ae_preset,
        "img_per_s": {k: round(v, 1) for k, v in med.items()},
        "cached_vs_pixel": round(med["latent-cached"] / med["pixel"], 2),
        "cached_vs_encode": round(med["latent-cached"] / med["latent-encode"], 2),
        "run_wall_s_per_round": wall,
        "cache_build_s_est": round(wall["latent-cached"][0] - wall["latent-cached"][-1], 1),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
