"""Sample quality vs network evaluations (NFE) for every sampler, on one small model.

Trains (or reuses) a VP ε-prediction model (Ho et al. 2020, linear β, T = 1000) on the 8×8
digits of configs/tiny.yaml, then generates the same `--num` samples (sample i from (seed, i))
with each sampler at NFE budgets 5, 10, 20, 50, and the 1000-step ancestral DDPM chain over the
model's own training timesteps as the reference. Quality is the Fréchet distance on raw pixels
(64-dim Gaussians fitted to generated and held-out images; well defined at 8×8). The row
"data" is the FD of as many training images against the same held-out set: the floor.

    .venv/bin/python bench/sampler_quality.py    # trains runs/bench-sampler-quality once
    .venv/bin/python bench/sampler_quality.py --retrain --train-steps 3000 --num 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from difftrain.config import load_config
from difftrain.data import load_data, to_model_range
from difftrain.diffusion import vp_sigmas
from difftrain.pipeline.build import vp_alphas_cumprod
from difftrain.pipeline.checkpoint import latest_good_checkpoint
from difftrain.pipeline.generate import default_labels, generate
from difftrain.pipeline.run import load_run
from difftrain.samplers import karras_sigmas, nfe, training_sigmas, uniform_sigmas
from difftrain.train import train

ROOT = Path(__file__).resolve().parents[1]
# (sampler, schedule) rows; karras runs over the model's own σ range [σ_0, σ_{T−1}].
ROWS = [
    ("euler", "karras"),
    ("heun", "karras"),
    ("edm-stochastic", "karras"),
    ("ddim", "uniform"),
    ("ddpm", "uniform"),
    ("dpmpp-2m", "karras"),
    ("dpmpp-2m", "uniform"),
    ("dpmpp-3m", "karras"),
    ("unipc", "karras"),
]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||μa − μb||² + Tr(Σa + Σb − 2(ΣaΣb)^½) between Gaussians fitted to rows of a and b.

    Tr((ΣaΣb)^½) = Σ √eig(Σa^½ Σb Σa^½), a symmetric PSD form that stays exact when the
    covariances are singular (digits have border pixels that are always white).
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def steps_for(sampler: str, budget: int) -> int:
    """Most steps whose NFE fits the budget (Heun-type samplers use 2n − 1)."""
    return (budget + 1) // 2 if nfe(sampler, 2) == 3 else budget


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "bench-sampler-quality")
    ap.add_argument("--train-steps", type=int, default=3000)
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--num", type=int, default=1000, help="generated images per cell")
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--reference-steps", type=int, default=1000, help="0 = skip the reference")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    sets = [
        f"train.run_dir={args.run_dir}",
        f"train.max_steps={args.train_steps}",
        f"train.checkpoint_every={args.train_steps}",
        f"train.sample_every={args.train_steps}",
        "train.log_every=100",
        "data.val_fraction=0.2",
        "diffusion.objective=vp",
        "logging.tensorboard=false",
        "logging.progress=false",
    ]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", sets)
    if args.retrain or latest_good_checkpoint(args.run_dir / "checkpoints") is None:
        if args.retrain and args.run_dir.exists():
            import shutil

            shutil.rmtree(args.run_dir)
        t0 = time.time()
        summary = train(cfg)
        print(
            f"trained {summary.step} steps in {time.time() - t0:.0f}s, "
            f"final loss {summary.final_loss:.4f}"
        )
    run = load_run(args.run_dir, weights="ema")
    cfg = run.config
    data, val = load_data(cfg.data).split(cfg.data.val_fraction, cfg.train.seed)  # the run's split
    held_out = to_model_range(val.images).flatten(1).numpy().astype(np.float64)
    table = vp_sigmas(vp_alphas_cumprod(cfg)).float()
    shape = (cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
    labels = default_labels(args.num, run.num_classes)

    def fd_of(sampler: str, sigmas: torch.Tensor) -> tuple[float, float]:
        t0 = time.time()
        images = generate(
            run.denoiser,
            num=args.num,
            shape=shape,
            seed=args.seed,
            labels=labels,
            null_class=run.num_classes,
            sampler=sampler,
            sigmas=sigmas,
            batch_size=args.batch_size,
        )
        gen = images.clamp(-1, 1).flatten(1).numpy().astype(np.float64)
        return frechet_distance(gen, held_out), time.time() - t0

    rng = np.random.default_rng(0)
    pick = rng.choice(len(data), size=min(args.num, len(data)), replace=False)
    floor = frechet_distance(
        to_model_range(data.images[pick]).flatten(1).numpy().astype(np.float64), held_out
    )
    results = {"held_out": len(val), "num": args.num, "data_floor": floor, "cells": []}
    print(
        f"held-out images: {len(val)}; generated per cell: {args.num}; "
        f"FD floor (train vs held-out): {floor:.3f}"
    )

    ref = None
    if args.reference_steps:
        ts = training_sigmas(table)[-(args.reference_steps + 1) :]  # all T steps by default
        ref, secs = fd_of("ddpm", ts)
        results["reference"] = {
            "sampler": "ddpm",
            "schedule": "training",
            "nfe": args.reference_steps,
            "fd": ref,
        }
        print(f"ddpm / training timesteps / NFE {args.reference_steps}: FD {ref:.3f} ({secs:.0f}s)")

    for sampler, schedule in ROWS:
        for budget in args.nfe:
            n = steps_for(sampler, budget)
            if schedule == "karras":
                sig = karras_sigmas(n, table[0].item(), table[-1].item(), cfg.sample.rho)
            else:
                sig = uniform_sigmas(table, n)
            fd, secs = fd_of(sampler, sig)
            cell = {
                "sampler": sampler,
                "schedule": schedule,
                "budget": budget,
                "steps": n,
                "nfe": nfe(sampler, n),
                "fd": fd,
            }
            results["cells"].append(cell)
            print(
                f"{sampler} / {schedule} / NFE {cell['nfe']}: FD {fd:.3f} ({secs:.0f}s)", flush=True
            )

    # ---- Table ----
    head = "| sampler | schedule | " + " | ".join(f"NFE≤{b}" for b in args.nfe) + " |"
    lines = [head, "|" + "---|" * (2 + len(args.nfe))]
    for sampler, schedule in ROWS:
        cells = [
            c for c in results["cells"] if (c["sampler"], c["schedule"]) == (sampler, schedule)
        ]
        lines.append(
            f"| {sampler} | {schedule} | "
            + " | ".join(f"{c['fd']:.3f} ({c['nfe']})" for c in cells)
            + " |"
        )
    if ref is not None:
        lines.append(
            f"| ddpm (reference) | training | {ref:.3f} ({args.reference_steps}) |"
            + " |" * (len(args.nfe) - 1)
        )
    pad = " |" * (len(args.nfe) - 1)
    lines.append(f"| data floor (train vs held-out) | | {floor:.3f} |" + pad)
    print(
        "\nFréchet distance on raw pixels vs held-out digits "
        "(lower is better; NFE used in parentheses)\n"
    )
    print("\n".join(lines))
    if ref is not None:
        fast = [
            c for c in results["cells"] if c["sampler"] in ("dpmpp-2m", "heun") and c["nfe"] <= 20
        ]
        best = min(fast, key=lambda c: c["fd"])
        ok = best["fd"] <= 1.10 * ref
        print(
            f"\ntarget: DPM-Solver++(2M) or Heun at ≤20 NFE within 10% of the "
            f"{args.reference_steps}-step ancestral FD: best {best['sampler']}/{best['schedule']} "
            f"NFE {best['nfe']} FD {best['fd']:.3f} "
            f"vs {ref:.3f} ({best['fd'] / ref - 1:+.1%}) -> {'PASS' if ok else 'FAIL'}"
        )
        results["target"] = {"best": best, "ratio": best["fd"] / ref, "pass": ok}
    out = args.run_dir / "sampler_quality.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
