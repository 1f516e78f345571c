"""Load generator for `difftrain serve`: throughput and p50/p95/p99 latency, with and without
micro-batching, at several numbers of concurrent clients. Loopback only; bounded in count and
time (each cell stops at --requests answers or --seconds, whichever comes first).

For each setting of batching, one server runs in a subprocess (`difftrain serve` on
127.0.0.1, a free port) and is warmed up; then each cell runs `clients` closed-loop clients:
each sends a request, waits for the answer, sends the next. Request k uses seed k, so every answer is a
different image.

    .venv/bin/python bench/serve_load.py --make-run /tmp/serve-bench-run
    .venv/bin/python bench/serve_load.py RUN_DIR --clients 1 4 16 --requests 96 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def make_run(run_dir: Path, config: Path, sets: list[str]) -> Path:
    """An untrained run (random weights) of `config`: serving cost does not depend on training."""
    import torch

    from difftrain.config import dump_config, load_config
    from difftrain.pipeline.build import build_denoiser
    from difftrain.pipeline.checkpoint import write_checkpoint

    cfg = load_config(config, [f"train.run_dir={run_dir}", *sets])
    run_dir.mkdir(parents=True, exist_ok=False)  # never reuse (or overwrite) a directory
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    torch.manual_seed(0)
    weights = build_denoiser(cfg, 10).state_dict()
    state = {"step": 1, "data": {"num_classes": 10, "class_names": [str(i) for i in range(10)]}}
    write_checkpoint(run_dir / "checkpoints", 1, {"model": weights, "ema": weights}, state)
    return run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, port: int, batching: bool, window_ms: float, max_batch: int):
    cmd = [sys.executable, "-m", "difftrain.cli.main", "serve", str(run_dir), "--port", str(port)]
    cmd += ["--max-queue", "64", "--max-batch", str(max_batch), "--max-num", "16"]
    cmd += ["--batch-window-ms", str(window_ms)] + ([] if batching else ["--no-batching"])
    env = {**os.environ, "DIFFTRAIN_SERVE_TOKEN": ""}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start in 180 s")


async def run_cell(url: str, clients: int, requests: int, seconds: float, body: dict) -> dict:
    """Closed-loop clients until `requests` answers or `seconds`; latency of each answer."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(10**9))
    stop_at = time.perf_counter() + seconds

    async def worker(c: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop_at:
            k = next(counter)  # request k has seed k; exactly `requests` are sent at most
            if k >= requests:
                return
            t0 = time.perf_counter()
            res = await c.post("/v1/generate", json={**body, "seed": k})
            if res.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[str(res.status_code)] = errors.get(str(res.status_code), 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else None
    return {
        "answers": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 2),
        "req_per_s": round(len(latencies) / wall, 2),
        "img_per_s": round(len(latencies) * body.get("num", 1) / wall, 2),
        "p50_ms": round(q[49] * 1000) if q else None,
        "p95_ms": round(q[94] * 1000) if q else None,
        "p99_ms": round(q[98] * 1000) if q else None,
    }


def batch_totals(url: str) -> tuple[float, float]:
    """(requests, forward batches) so far, from the server's /metrics."""
    text = httpx.get(url + "/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        if line.startswith(("difftrain_batch_requests_sum ", "difftrain_batch_requests_count ")):
            name, value = line.split()
            values[name] = float(value)
    return values.get("difftrain_batch_requests_sum", 0), values.get(
        "difftrain_batch_requests_count", 0
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="?", type=Path, help="run directory to serve")
    ap.add_argument("--make-run", type=Path, help="build an untrained run here first and use it")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "tiny.yaml")
    ap.add_argument("--set", action="append", default=[], help="config override for --make-run")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=64, help="answers per cell (at most)")
    ap.add_argument("--seconds", type=float, default=60, help="time per cell (at most)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--window-ms", type=float, default=20)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    run_dir = make_run(args.make_run, args.config, args.set) if args.make_run else args.run_dir
    if run_dir is None:
        ap.error("give RUN_DIR or --make-run DIR")
    body = {"num": 1, "steps": args.steps, "sampler": args.sampler, "class_label": 1}
    rows = []
    for batching in (False, True):
        proc, url = start_server(run_dir, free_port(), batching, args.window_ms, args.max_batch)
        try:
            asyncio.run(run_cell(url, 1, 2, 30, body))  # warm-up: first-call costs
            for clients in args.clients:
                before = batch_totals(url)
                row = asyncio.run(run_cell(url, clients, args.requests, args.seconds, body))
                after = batch_totals(url)
                per_batch = (after[0] - before[0]) / max(1.0, after[1] - before[1])
                row = {"batching": batching, "clients": clients, **row, "req_per_batch": per_batch}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"\nbody: {json.dumps(body)}; window {args.window_ms} ms; max batch {args.max_batch}")
    print(
        "| batching | clients | answers | req/s | p50 ms | p95 ms | p99 ms | req/batch | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {'on' if r['batching'] else 'off'} | {r['clients']} | {r['answers']} | "
            f"{r['req_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
            f"{r['req_per_batch']:.1f} | {r['errors'] or '-'} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
