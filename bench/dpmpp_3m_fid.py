"""DPM-Solver++(3M): the published coefficient (`dpmpp-3m`, the default) against the corrected
one (`dpmpp-3m-exact`) by FID in the run's domain feature space at 10, 20 and 30 steps.

The same samples (sample i from (seed, i)) and the same real images for every cell; FID and KID
come from `difftrain evaluate`'s code path (entries land in <out>/eval.json). Make the run first:

    difftrain train configs/tiny.yaml --set train.run_dir=runs/bench-3m --set train.max_steps=1000
    difftrain features train runs/bench-3m
    .venv/bin/python bench/dpmpp_3m_fid.py --run-dir runs/bench-3m --num 1000 --seeds 0 1 2

Each seed draws other samples and another subset of real images; the table shows the mean
over seeds and the range, so a difference smaller than the range is noise.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from difftrain.eval.run_eval import evaluate_run

SAMPLERS = ("dpmpp-3m", "dpmpp-3m-exact")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run-dir", type=Path, default=Path("runs/bench-3m"))
    ap.add_argument("--num", type=int, default=1000, help="generated (and real) images per cell")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20, 30])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = args.run_dir / "bench-dpmpp-3m"
    cells = []
    for seed, steps, sampler in itertools.product(args.seeds, args.steps, SAMPLERS):
        t0 = time.time()
        entry = evaluate_run(
            args.run_dir,
            metrics=["fid", "kid"],
            num=args.num,
            sampler=sampler,
            steps=steps,
            seed=seed,
            out=out,
        )
        m = entry["metrics"]
        cells.append(
            {
                "seed": seed,
                "steps": steps,
                "sampler": sampler,
                "step": entry["step"],
                "fid_domain": m["fid_domain"],
                "kid_domain": m["kid_domain"],
                "seconds": round(time.time() - t0, 1),
            }
        )
        print(json.dumps(cells[-1]), flush=True)
    (out / "table.json").write_text(json.dumps({"num": args.num, "cells": cells}, indent=1))
    print(
        f"\nFID in domain features, {args.num} samples, checkpoint step {cells[0]['step']}; "
        f"mean over seeds {args.seeds} (min-max)\n"
    )
    print("| steps | " + " | ".join(SAMPLERS) + " |")
    print("|---|" + "---|" * len(SAMPLERS))
    for steps in args.steps:
        row = []
        for s in SAMPLERS:
            v = [c["fid_domain"] for c in cells if c["steps"] == steps and c["sampler"] == s]
            row.append(f"{sum(v) / len(v):.3f} ({min(v):.3f}-{max(v):.3f})")
        print(f"| {steps} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
