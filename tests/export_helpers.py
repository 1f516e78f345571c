"""Real run directories for the export tests: tiny config + randomly initialised weights,
written by the same checkpoint writer training uses (training would only change the numbers)."""

from __future__ import annotations

from pathlib import Path

import torch

from difftrain.config import dump_config, load_config
from difftrain.pipeline.build import build_denoiser
from difftrain.pipeline.checkpoint import write_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def make_run(run_dir: Path, num_classes: int | None = None, seed: int = 0, **sets) -> Path:
    """config.yaml + checkpoints/step-0000001 (model = ema) for the tiny 8×8 digits config."""
    overrides = [f"train.run_dir={run_dir}"] + [f"{k}={v}" for k, v in sets.items()]
    cfg = load_config(TINY, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    torch.manual_seed(seed)
    den = build_denoiser(cfg, num_classes)
    with torch.no_grad():  # diffusers zero-inits nothing here, but make outputs clearly non-trivial
        for p in den.parameters():
            p.add_(0.02 * torch.randn_like(p))
    weights = den.state_dict()
    names = [f"class {i}" for i in range(num_classes)] if num_classes else None
    state = {"step": 1, "data": {"num_classes": num_classes, "class_names": names}}
    write_checkpoint(run_dir / "checkpoints", 1, {"model": weights, "ema": weights}, state)
    return run_dir
