"""The run being exported: its loaded denoiser, unwrapped to the plain preconditioned network."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from difftrain.config import ConfigError
from difftrain.diffusion import Preconditioned, WithLogVar
from difftrain.pipeline.run import LoadedRun, load_run


def load_source(run_dir: Path, weights: str = "ema") -> LoadedRun:
    """Load a run for export (the latest good checkpoint, EMA weights by default)."""
    if weights not in ("ema", "model"):
        raise ConfigError(f"--weights {weights!r}: allowed 'ema' or 'model'")
    return load_run(run_dir, weights=weights)


def plain_denoiser(run: LoadedRun) -> Preconditioned:
    """D(x, σ, cond) without EDM2's log-variance head (a training-only output)."""
    den: nn.Module = run.denoiser
    if isinstance(den, WithLogVar):
        den = den.denoiser
    if not isinstance(den, Preconditioned):
        raise ConfigError(f"{type(den).__name__}: not a preconditioned denoiser; cannot export")
    return den


def source_info(run: LoadedRun, run_dir: Path, weights: str) -> dict:
    """Where an export came from (recorded in export.json)."""
    return {
        "run_dir": str(Path(run_dir).resolve()),
        "checkpoint": run.checkpoint.name,
        "step": run.state.get("step"),
        "weights": weights,
    }
