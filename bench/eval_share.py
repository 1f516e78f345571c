"""Measured (not projected) cost of in-training evaluation over one whole run.

Trains the config once as it is (eval.every from the config, feature network trained first
when missing, exactly as `make demo` does), then reads the run's metrics.jsonl: the share is
the sum of `eval/seconds` of every in-training evaluation over the run's wall time from its
first to its last log row. The issue-14 bar is under 10% on an idle 2-core machine.

    .venv/bin/python bench/eval_share.py configs/fashion-mnist.yaml --set train.time_limit=10m
    .venv/bin/python bench/eval_share.py configs/tiny.yaml --set eval.every=20 --set eval.num=50
        --set train.max_steps=40      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def difftrain(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "difftrain", *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--run-dir", help="default: a temporary directory")
    args = ap.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run_dir or Path(tmp) / "run")
        sets = [x for s in [*args.sets, f"train.run_dir={run}"] for x in ("--set", s)]
        t0 = time.time()
        if not (run / "features" / "feature_net.json").is_file():
            difftrain("features", "train", args.config, *sets)
        t_feat = time.time() - t0
        difftrain("train", args.config, *sets)
        t_train = time.time() - t0 - t_feat
        rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
        evals = [r["eval/seconds"] for r in rows if "eval/seconds" in r]
        times = [r["time"] for r in rows if "time" in r]
        span = max(times) - min(times) if len(times) > 1 else t_train
        print(json.dumps({
            "load_average_at_start": load, "load_average_at_end": os.getloadavg(),
            "feature_net_seconds": round(t_feat, 1), "train_command_seconds": round(t_train, 1),
            "evaluations": len(evals), "eval_seconds": round(sum(evals), 1),
            "eval_share_of_run": round(sum(evals) / max(span, 1e-9), 4),
            "steps": max(r["step"] for r in rows),
        }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
