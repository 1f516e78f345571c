"""Evaluation cost: feature-extraction throughput, and one in-training evaluation vs training.

Measures, in one process on the demo config:
  * images/s of the domain feature network and of the FID Inception-v3 (same architecture and
    cost as with the published weights; random values, as those cannot be downloaded here);
  * training img/s of difftrain's own loop over all timed steps after a warm-up (the
    images between two metrics.jsonl rows over the wall time between them);
  * the time of one `TrainingEvaluator` call (generate eval.num images, embed, FID/KID/PR/acc),
    and its share of training time when the loop calls it every eval.every steps.
Network weights do not change the cost, so untrained networks are timed.

    .venv/bin/python bench/eval_speed.py --config configs/fashion-mnist.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from difftrain.config import load_config
from difftrain.data import load_data
from difftrain.eval.evaluate import TrainingEvaluator
from difftrain.eval.features import FeatureNet, FeatureNetSpec, run_extractor, save_feature_net
from difftrain.eval.inception import InceptionV3FID
from difftrain.pipeline.build import build_denoiser
from difftrain.train import train


def throughput(net, images: torch.Tensor, batch: int) -> float:
    run_extractor(net, images[:batch], batch)  # warm-up
    t = time.perf_counter()
    run_extractor(net, images, batch)
    return len(images) / (time.perf_counter() - t)


def img_per_s_between(rows: list[dict], start: int, end: int, batch_size: int) -> float:
    """img/s over every step in (start, end]: the images trained between the two log rows
    divided by the wall time between them (so a slow step, e.g. a snapshot write, counts once
    among all the timed steps, not as a fifth of them)."""
    t = {r["step"]: r["time"] for r in rows if "train/loss" in r}
    return (end - start) * batch_size / (t[end] - t[start])


def train_img_per_s(cfg, steps: int, warmup: int) -> float:
    """img/s of difftrain's loop over all `steps` timed steps after `warmup` (metrics.jsonl)."""
    with tempfile.TemporaryDirectory() as d:
        c = cfg.model_copy(deep=True)
        c.train.run_dir = Path(d) / "run"
        c.train.max_steps = warmup + steps
        c.train.log_every = warmup  # rows at step `warmup` and (always) at the last step
        c.train.checkpoint_every = c.train.sample_every = 10**9
        c.logging.progress = False
        c.logging.tensorboard = False
        c.eval.every = 0
        train(c)
        rows = [json.loads(r) for r in (c.train.run_dir / "metrics.jsonl").read_text().splitlines()]
        return img_per_s_between(rows, warmup, warmup + steps, c.train.batch_size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/fashion-mnist.yaml")
    p.add_argument("--set", dest="sets", action="append", default=[], help="config override")
    p.add_argument("--every", type=int, default=None, help="eval.every (default: the config's)")
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3, help="alternating train/eval measurements")
    p.add_argument("--inception-images", type=int, default=32)
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args()

    cfg = load_config(args.config, args.sets)
    every = args.every or cfg.eval.every or cfg.train.checkpoint_every
    cfg.eval.every = every
    t = time.perf_counter()
    train_data, val = load_data(cfg.data).split(cfg.data.val_fraction, cfg.train.seed)
    load_s = time.perf_counter() - t
    k = train_data.num_classes
    res = {
        "config": args.config,
        "threads": torch.get_num_threads(),
        "load_avg_1min": os.getloadavg()[0],
        "data_load_s": load_s,
        "eval": cfg.eval.model_dump(mode="json"),
        "every": every,
    }

    # Feature extraction throughput.
    torch.manual_seed(0)
    domain = FeatureNet(
        FeatureNetSpec(cfg.data.channels, k or 1, cfg.features.width, cfg.features.feature_dim)
    ).eval()
    res["domain_img_per_s"] = throughput(domain, val.images[:2048], 256)
    incep = InceptionV3FID()
    res["inception_img_per_s"] = throughput(incep, val.images[: args.inception_images], 16)

    # Training speed and one in-training evaluation, alternately (`--rounds`), so that both
    # numbers of a round see the same machine load; the share is taken per round.
    with tempfile.TemporaryDirectory() as d:
        save_feature_net(
            domain, {"format": "difftrain-feature-net/1", "spec": vars(domain.spec)}, d
        )
        cfg.eval.feature_net = Path(d)
        t = time.perf_counter()
        evaluator = TrainingEvaluator.from_config(cfg, train_data, val)  # reference features
        res["eval_setup_s"] = time.perf_counter() - t
        torch.manual_seed(0)
        den = build_denoiser(cfg, k).eval()
        n_evals = math.ceil(cfg.train.max_steps / every)
        rounds = []
        for _ in range(args.rounds):
            rate = train_img_per_s(cfg, args.train_steps, warmup=5)
            train_s = cfg.train.max_steps * cfg.train.batch_size / rate
            eval_s = evaluator(den, step=every)["eval/seconds"]
            share = (n_evals * eval_s + res["eval_setup_s"]) / train_s
            rounds.append(
                {"train_img_per_s": rate, "train_s": train_s, "eval_s": eval_s, "share": share}
            )
    best = sorted(rounds, key=lambda r: r["share"])[len(rounds) // 2]  # the median round
    res.update(best, rounds=rounds, n_evals=n_evals, eval_share=best["share"])
    train_s = best["train_s"]

    e = cfg.eval
    print(
        f"\n## Evaluation cost — {args.config} (torch threads {res['threads']}, "
        f"1-min load average {res['load_avg_1min']:.1f})\n"
    )
    print("| measure | value |\n|---|---|")
    rows = [
        ("domain features (28×28, batch 256)", f"{res['domain_img_per_s']:.0f} img/s"),
        ("Inception-v3 features (→299×299, batch 16)", f"{res['inception_img_per_s']:.1f} img/s"),
        ("training (difftrain loop)", f"{res['train_img_per_s']:.1f} img/s"),
        (f"training, {cfg.train.max_steps} steps × {cfg.train.batch_size}", f"{train_s:.0f} s"),
        ("evaluator setup (reference features, once)", f"{res['eval_setup_s']:.1f} s"),
        (
            f"one evaluation ({e.num} samples, {e.sampler} {e.steps} steps, {','.join(e.metrics)})",
            f"{res['eval_s']:.1f} s",
        ),
        (f"evaluations at every {every} steps", f"{n_evals}"),
        ("share of training time (median round)", f"{100 * res['eval_share']:.1f} %"),
        ("share per round", ", ".join(f"{100 * r['share']:.1f} %" for r in res["rounds"])),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
