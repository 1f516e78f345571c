"""GPU speed options that also run on the CPU: fused AdamW and channels-last train the same model."""

from __future__ import annotations

import json

import pytest
import torch

from difftrain.config import ConfigError, load_config
from difftrain.train import train
from tests.conftest import TINY

SETS = ["train.max_steps=3", "train.batch_size=16", "train.checkpoint_every=3",
        "train.sample_every=1000", "train.log_every=1", "sample.num=1", "sample.steps=1",
        "logging.tensorboard=false", "logging.progress=false"]  # fmt: skip


def losses(run_dir) -> list[float]:
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def test_fused_adamw_and_channels_last_match_the_plain_run(tmp_path):
    plain = tmp_path / "plain"
    train(load_config(TINY, [*SETS, f"train.run_dir={plain}"]))
    fast = tmp_path / "fast"
    train(load_config(TINY, [*SETS, f"train.run_dir={fast}", "optim.fused=true",
                             "train.channels_last=true"]))  # fmt: skip
    a, b = torch.tensor(losses(plain)), torch.tensor(losses(fast))
    assert len(a) == 3 and torch.allclose(a, b, rtol=1e-4)


def test_fused_needs_an_adam_optimizer(tmp_path):
    cfg = load_config(TINY, [*SETS, f"train.run_dir={tmp_path}", "optim.name=sgd",
                             "optim.fused=true"])  # fmt: skip
    with pytest.raises(ConfigError, match="optim.fused"):
        train(cfg)
