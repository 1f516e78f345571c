"""A run directory built in milliseconds: tiny config + randomly initialised weights.

Sampling, serving and watching only read config.yaml and checkpoints/, so a run whose weights
were never trained exercises the same code as a trained one (the images are noise-like).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from difftrain.config import dump_config, load_config
from difftrain.pipeline.build import build_denoiser
from difftrain.pipeline.checkpoint import write_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
CLASSES = [f"digit {i}" for i in range(10)]


def make_run(
    run_dir: Path,
    num_classes: int | None = 10,
    step: int = 1,
    init_seed: int = 0,
    class_names: list[str] | None = None,
    **sets,
) -> Path:
    """Write config.yaml and one checkpoint (model = ema) at `step`; mark it best."""
    overrides = [f"train.run_dir={run_dir}", "sample.steps=4"]
    overrides += [f"{k}={v}" for k, v in sets.items()]
    cfg = load_config(TINY, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    add_checkpoint(run_dir, step, num_classes, init_seed, cfg=cfg, class_names=class_names)
    return run_dir


def add_checkpoint(
    run_dir: Path,
    step: int,
    num_classes: int | None,
    init_seed: int,
    cfg=None,
    class_names: list[str] | None = None,
):
    """Another checkpoint with other random weights, recorded as the best one."""
    cfg = cfg or load_config(run_dir / "config.yaml")
    torch.manual_seed(init_seed)
    den = build_denoiser(cfg, num_classes)
    weights = den.state_dict()
    state = {
        "step": step,
        "data": {
            "num_classes": num_classes,
            "class_names": class_names or (CLASSES[:num_classes] if num_classes else None),
        },
    }
    root = run_dir / "checkpoints"
    path = write_checkpoint(root, step, {"model": weights, "ema": weights}, state)
    best = {
        "metric": "val/loss",
        "best": [{"step": step, "value": 1.0 / step, "checkpoint": path.name}],
    }
    (root / "best.json").write_text(json.dumps(best))
    return path
