"""Data-parallel scaling: training throughput of `torchrun --nproc_per_node N -m difftrain train`.

Each process count trains the same config (global batch fixed, so N processes each get
batch/N rows) for --steps steps in a temporary run directory; img/s is the median of the
loop's own `train/img_per_s` rows after --warmup steps. On the CPU the backend is gloo and each
process gets OMP_NUM_THREADS=1 (2 processes on 2 cores).

GPU speed options are switches mapped to config keys (run them on a GPU machine):
  --bf16            train.mixed_precision=bf16 (autocast)
  --channels-last   train.channels_last=true
  --fused-adamw     optim.fused=true
Not implemented: --compile (torch.compile) and removing the per-step host sync (the guards
decide to skip a step on the host from the loss and the gradient norm every step).

    .venv/bin/python bench/scaling.py --config configs/tiny.yaml --procs 1 2 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(config: str, procs: int, steps: int, warmup: int, batch: int, sets: list[str]) -> dict:
    """Train once with `procs` processes; img/s and wall time."""
    with tempfile.TemporaryDirectory() as d:
        run_dir = Path(d) / "run"
        keys = {
            "train.run_dir": run_dir, "train.max_steps": warmup + steps,
            "train.batch_size": batch, "train.log_every": 1,
            "train.checkpoint_every": 10**9, "train.sample_every": 10**9,
            "sample.num": 1, "sample.steps": 1,
            "logging.progress": "false", "logging.tensorboard": "false",
        }  # fmt: skip
        args = [a for k, v in keys.items() for a in ("--set", f"{k}={v}")]
        args += [a for s in sets for a in ("--set", s)]
        if procs == 1:
            cmd = [sys.executable, "-m", "difftrain"]
        else:
            torchrun = str(Path(sys.executable).with_name("torchrun"))
            cmd = [torchrun, f"--nproc_per_node={procs}", f"--master_port={free_port()}",
                   "-m", "difftrain"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        t = time.time()
        out = subprocess.run([*cmd, "train", config, *args], capture_output=True, text=True,
                             env=env, cwd=REPO)  # fmt: skip
        wall = time.time() - t
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
        ips = [r["train/img_per_s"] for r in rows if "train/img_per_s" in r][warmup:]
    return {"procs": procs, "img_per_s": statistics.median(ips), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64, help="global batch (fixed across counts)")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--fused-adamw", action="store_true")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    sets = list(a.sets)
    sets += ["train.mixed_precision=bf16"] if a.bf16 else []
    sets += ["train.channels_last=true"] if a.channels_last else []
    sets += ["optim.fused=true"] if a.fused_adamw else []
    results = [run(a.config, n, a.steps, a.warmup, a.batch, sets) for n in a.procs]
    base = results[0]["img_per_s"]
    print(f"global batch {a.batch}, {a.steps} steps after {a.warmup} warm-up; {' '.join(sets)}")
    print("procs  img/s    speed-up  wall s")
    for r in results:
        print(f"{r['procs']:>5}  {r['img_per_s']:7.1f}  {r['img_per_s'] / base:7.2f}x  "
              f"{r['wall_s']:6.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
