"""Open a run directory: its resolved config and the weights of a checkpoint, ready to sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from difftrain.config import Config, ConfigError, load_config
from difftrain.pipeline.build import build_denoiser
from difftrain.pipeline.checkpoint import CheckpointError, latest_good_checkpoint, read_checkpoint


@dataclass
class LoadedRun:
    config: Config
    denoiser: nn.Module  # D(x, sigma, cond) for the run's objective
    checkpoint: Path
    state: dict

    @property
    def num_classes(self) -> int | None:
        return self.state["data"]["num_classes"]

    @property
    def class_names(self) -> list[str] | None:
        return self.state["data"]["class_names"]


def load_run(
    run_dir: str | Path, weights: str = "ema", checkpoint: str | Path | None = None
) -> LoadedRun:
    """Load config + denoiser from a run directory. `weights` is 'ema' or 'model'."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{run_dir}: not a run directory (no config.yaml); pass the train.run_dir"
        )
    cfg = load_config(run_dir / "config.yaml")
    path = Path(checkpoint) if checkpoint else latest_good_checkpoint(run_dir / "checkpoints")
    if path is None:
        raise CheckpointError(f"{run_dir}: no complete checkpoint under checkpoints/; train first")
    tensors, state = read_checkpoint(path, [weights])
    if weights not in tensors:
        raise CheckpointError(f"{path}: has no {weights}.safetensors")
    denoiser = build_denoiser(cfg, state["data"]["num_classes"])
    denoiser.load_state_dict(tensors[weights])
    denoiser.eval()
    return LoadedRun(cfg, denoiser, path, state)
