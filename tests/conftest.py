"""Shared fixtures: small, fast configs on real data (scikit-learn's bundled 8×8 digits)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One thread: on a 2-core machine with anything else running, OpenMP's spin-waiting makes two
# threads ~10x slower than one (measured: 339 vs 32 ms per forward of the tiny U-Net). Child
# processes (the SIGKILL and disk-full tests) inherit the setting through the environment.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture
def tiny_args(tmp_path):
    """CLI override list for a seconds-long digits run in a fresh run directory."""

    def make(run_dir: Path | None = None, **extra) -> list[str]:
        run_dir = run_dir or tmp_path / "run"
        sets = {
            "train.run_dir": str(run_dir),
            "train.max_steps": 30,
            "train.checkpoint_every": 10,
            "train.sample_every": 1000,
            "train.log_every": 1,
            "train.keep_checkpoints": 5,
            "logging.tensorboard": "false",
            "logging.progress": "false",
            "sample.num": 10,
            "sample.steps": 4,
        }
        sets.update(extra)
        out = [str(TINY)]
        for k, v in sets.items():
            out += ["--set", f"{k}={v}"]
        return out

    return make
