"""Training-step overhead: difftrain's loop vs a plain diffusers-style loop on the same U-Net.

The plain loop is written the way diffusers' examples/unconditional_image_generation/
train_unconditional.py does its step (add_noise, model(noisy, t).sample, MSE, accelerator.backward,
clip_grad_norm_, optimizer.step, EMAModel.step). Both run the same UNet2DModel config, batch size
and data, alternately in one process; img/s is measured over the steps after a warm-up.

    .venv/bin/python bench/train_throughput.py --config configs/fashion-mnist.yaml --steps 60 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel

from difftrain.config import load_config
from difftrain.data import load_data, to_model_range
from difftrain.pipeline.build import build_denoiser
from difftrain.train import train


def ours(cfg, steps: int, warmup: int) -> float:
    """img/s of difftrain's own loop, from its metrics.jsonl (rows after the warm-up)."""
    with tempfile.TemporaryDirectory() as d:
        c = cfg.model_copy(deep=True)
        c.train.run_dir = Path(d) / "run"
        c.train.max_steps = warmup + steps
        c.train.log_every = warmup
        c.train.checkpoint_every = c.train.sample_every = 10**9
        c.logging.progress = False
        c.logging.tensorboard = False
        c.data.val_fraction = 0.0
        train(c)
        rows = [json.loads(r) for r in (c.train.run_dir / "metrics.jsonl").read_text().splitlines()]
        t = {r["step"]: r["time"] for r in rows if "train/loss" in r}
        # Rows at exactly `warmup` and `warmup + steps`: the images trained between them.
        return steps * c.train.batch_size / (t[warmup + steps] - t[warmup])


def plain(cfg, images: torch.Tensor, labels, steps: int, warmup: int) -> float:
    """img/s of a diffusers-example-style step on the same network and data."""
    torch.manual_seed(0)
    unet = build_denoiser(cfg, None if labels is None else int(labels.max()) + 1).backbone.unet
    acc = Accelerator(cpu=not torch.cuda.is_available())
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    unet, opt = acc.prepare(unet, opt)
    ema = EMAModel(acc.unwrap_model(unet).parameters(), decay=0.9999)
    sched = DDPMScheduler(num_train_timesteps=1000)
    bs = cfg.train.batch_size
    g = torch.Generator().manual_seed(0)
    unet.train()
    t0 = None
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        idx = torch.randint(0, len(images), (bs,), generator=g)
        clean = to_model_range(images[idx]).to(acc.device)
        noise = torch.randn(clean.shape, device=clean.device)
        timesteps = torch.randint(0, 1000, (bs,), device=clean.device).long()
        noisy = sched.add_noise(clean, noise, timesteps)
        cl = None if labels is None else labels[idx].to(acc.device)
        with acc.accumulate(unet):
            out = unet(noisy, timesteps, class_labels=cl).sample
            loss = F.mse_loss(out.float(), noise.float())
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
        ema.step(acc.unwrap_model(unet).parameters())
        loss.item()  # the example logs the loss every step
    return steps * bs / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default="configs/fashion-mnist.yaml")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="config override")
    args = ap.parse_args()
    if args.steps % args.warmup:
        ap.error("--steps must be a multiple of --warmup (metrics are logged every --warmup steps)")
    cfg = load_config(args.config, args.set)
    data = load_data(cfg.data)
    results = {"difftrain": [], "plain": []}
    for r in range(args.rounds):  # alternate so drift in machine load hits both
        results["difftrain"].append(ours(cfg, args.steps, args.warmup))
        results["plain"].append(plain(cfg, data.images, data.labels, args.steps, args.warmup))
        print(
            f"round {r}: difftrain {results['difftrain'][-1]:.1f} img/s, plain {results['plain'][-1]:.1f} img/s"
        )
    a, b = statistics.median(results["difftrain"]), statistics.median(results["plain"])
    print(
        json.dumps(
            {
                "config": args.config,
                "batch_size": cfg.train.batch_size,
                "steps": args.steps,
                "difftrain_img_per_s": round(a, 1),
                "plain_img_per_s": round(b, 1),
                "ratio": round(a / b, 3),
                "overhead_pct": round(100 * (1 - a / b), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
