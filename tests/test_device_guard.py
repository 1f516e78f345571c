"""train.guard_on_device: the same skips as the host guards, with no per-step host read."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from difftrain.config import ConfigError, load_config
from difftrain.train import train
from difftrain.train.device_guard import DeviceWindow
from difftrain.train.guards import SpikeDetector
from tests.conftest import TINY

SETS = ["train.max_steps=24", "train.batch_size=16", "train.checkpoint_every=12",
        "train.sample_every=1000", "train.keep_checkpoints=5", "optim.fused=true",
        "sample.num=1", "sample.steps=1", "logging.tensorboard=false", "logging.progress=false"]  # fmt: skip
DEVICE = ["train.guard_on_device=true", "train.log_every=12"]


def test_device_window_decides_like_the_spike_detector():
    rng = random.Random(0)
    host, dev = SpikeDetector(window=25, factor=3.0), DeviceWindow(25, 3.0, "cpu")
    for i in range(200):  # the ring wraps several times
        v = rng.uniform(0.5, 1.5) * (rng.choice([1, 1, 1, 5, 50]) if i > 20 else 1)
        spike = host.is_spike(v)
        assert bool(dev.is_spike(torch.tensor(v, dtype=torch.float64))) == spike, i
        if not spike:
            host.add(v)
        dev.add(torch.tensor(v, dtype=torch.float64), torch.tensor(not spike))
        assert dev.state() == host.state(), i
    again = DeviceWindow(25, 3.0, "cpu")
    again.load(host.state())
    assert again.state() == host.state()


def run(tmp_path: Path, name: str, monkeypatch, inject: str, *extra: str) -> Path:
    monkeypatch.setenv("DIFFTRAIN_INJECT", inject)
    run_dir = tmp_path / name
    train(load_config(TINY, [*SETS, f"train.run_dir={run_dir}", *extra]))
    return run_dir


def host_reads_from_the_loop(monkeypatch) -> list[str]:
    """Count .item() and float() on tensors called from loop.py (each one waits for the device)."""
    calls: list[str] = []
    item, to_float = torch.Tensor.item, torch.Tensor.__float__

    def record(fn):
        def wrapper(self, *a):
            if sys._getframe(1).f_code.co_filename.endswith("train/loop.py"):
                calls.append(fn.__name__)
            return fn(self, *a)

        return wrapper

    monkeypatch.setattr(torch.Tensor, "item", record(item))
    monkeypatch.setattr(torch.Tensor, "__float__", record(to_float))
    return calls


def test_device_guard_skips_exactly_what_the_host_guard_skips(tmp_path, monkeypatch):
    faults = "nan@4,spike@22:1e9"  # a NaN loss (step 5) and a spike once the window has 20 values
    host_calls = host_reads_from_the_loop(monkeypatch)
    host = run(tmp_path, "host", monkeypatch, faults, "train.log_every=1")
    n_host = len(host_calls)
    device = run(tmp_path, "device", monkeypatch, faults, *DEVICE)
    n_device = len(host_calls) - n_host
    assert n_host >= 2 * 24  # loss and grad norm, every step
    assert n_device <= 3 * 2  # 2 reads (steps 12, 24) + the early-stop vote at each checkpoint
    ck = "checkpoints/step-0000024"
    for group in ("model", "ema", "optimizer"):
        a, b = (
            load_file(host / ck / f"{group}.safetensors"),
            load_file(device / ck / f"{group}.safetensors"),
        )
        assert all(torch.equal(a[k], b[k]) for k in a), group  # bitwise: same skips, same updates
    sa = json.loads((host / ck / "state.json").read_text())["run"]
    sb = json.loads((device / ck / "state.json").read_text())["run"]
    assert sa["skip_reasons"] == sb["skip_reasons"] == {"nonfinite_loss": 1, "loss_spike": 1}
    assert sa["loss_window"] == sb["loss_window"] and sa["grad_window"] == sb["grad_window"]
    rows = [json.loads(r) for r in (device / "metrics.jsonl").read_text().splitlines()]
    guard = [(r["step"], r.get("guard/nonfinite_loss"), r.get("guard/loss_spike"))
             for r in rows if r.get("guard/skipped")]  # fmt: skip
    assert guard == [(12, 1, None), (24, None, 1)]  # reported at the reads, not every step


def test_device_guard_streak_rolls_back_at_the_next_read(tmp_path, monkeypatch):
    run_dir = run(tmp_path, "rb", monkeypatch, "nanonce@12-14", *DEVICE[:1], "train.log_every=5",
                  "train.checkpoint_every=10", "train.max_bad_steps=3", "optim.warmup_steps=0")  # fmt: skip
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    skipped = [(r["step"], r["guard/nonfinite_loss"]) for r in rows if r.get("guard/skipped")]
    assert skipped == [(15, 3)]  # steps 13-15 skipped; the streak is seen at the read at 15
    rb = [r for r in rows if "guard/rollback" in r]
    assert [(r["step"], r["guard/rollback"], r["guard/lr_scale"]) for r in rb] == [(10, 1, 0.5)]
    state = json.loads((run_dir / "checkpoints/step-0000024/state.json").read_text())["run"]
    assert state["lr_scale"] == 0.5 and state["rollbacks"] == 1
    assert state["skip_reasons"] == {}  # restored from step 10, as the host guard does


def test_device_guard_needs_a_fused_optimizer(tmp_path):
    cfg = load_config(TINY, [*SETS, f"train.run_dir={tmp_path}", "optim.fused=false", *DEVICE])
    with pytest.raises(ConfigError, match="train.guard_on_device.*optim.fused"):
        train(cfg)
