"""Training-time sample grids cost what sample.num says, whatever the number of classes (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from difftrain.config import load_config
from difftrain.pipeline import generate as gen_mod
from difftrain.pipeline.build import build_denoiser
from difftrain.pipeline.generate import default_labels
from difftrain.train import setup
from difftrain.train.loop import train


def counting(monkeypatch):
    """Wrap the real `generate` used by the grid writer; record how many images each call made."""
    made: list[int] = []

    def wrapped(*args, **kwargs):
        out = gen_mod.generate(*args, **kwargs)
        made.append(len(out))
        return out

    monkeypatch.setattr(setup, "generate", wrapped)
    return made


def test_500_class_run_grid_makes_exactly_sample_num_images(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    path = tmp_path / "many.npz"
    np.savez(path, images=rng.integers(0, 256, (1000, 8, 8), dtype=np.uint8),
             labels=np.repeat(np.arange(500), 2))  # fmt: skip
    made = counting(monkeypatch)
    sets = ["data.source=npz", f"data.path={path}", "data.resolution=8", "data.channels=1",
            "data.val_fraction=0.05", "model.preset=unet-tiny", f"train.run_dir={tmp_path / 'run'}",
            "train.max_steps=2", "train.batch_size=16", "train.sample_every=2",
            "train.checkpoint_every=100", "logging.tensorboard=false", "logging.progress=false",
            "sample.num=12", "sample.steps=3", "sample.sampler=euler"]  # fmt: skip
    cfg = load_config(None, sets)
    train(cfg)
    assert made == [12]  # one grid event at step 2 (= the end): 12 images, not 500
    grid = tmp_path / "run" / "samples" / "step-0000002.png"
    assert grid.is_file() and Image.open(grid).size[0] >= 256


@pytest.mark.parametrize(
    "k,num,want", [(10, 64, 60), (10, 55, 50), (10, 10, 10), (500, 12, 12), (3, 2, 2)]
)
def test_grid_size_never_exceeds_sample_num(k, num, want, tmp_path, monkeypatch):
    made = counting(monkeypatch)
    cfg = load_config(None, ["data.resolution=8", "model.preset=unet-tiny", f"sample.num={num}",
                             "sample.steps=1", "sample.sampler=euler"])  # fmt: skip
    den = build_denoiser(cfg, k)
    setup.write_samples(den, cfg, k, tmp_path / "g.png", "cpu")
    assert made == [want]


def test_sample_defaults_with_many_classes_cost_num_and_cover_distinct_classes():
    labels = default_labels(16, 500)  # `difftrain sample` without --class-label
    assert len(labels) == 16 and len(set(labels.tolist())) == 16
    assert labels.min() == 0 and labels.max() < 500
    assert torch.equal(default_labels(16, 500), labels)  # fixed subset: same every time
