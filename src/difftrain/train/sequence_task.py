"""Sequence runs in the one loop: windows of a numeric series as batches, a masked objective.

Windows are C×1×L tensors in normalised units with NaN where a value is missing; the objective
is the configured one wrapped in `MaskedObjective`, so missing entries never reach the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from difftrain.config import Config
from difftrain.data.decode import BadFiles
from difftrain.data.loader import Batch, rank_rows
from difftrain.data.order import split_indices
from difftrain.data.sequence import apply_missing_rule, channel_stats, read_series, windows
from difftrain.diffusion.masked import MaskedObjective
from difftrain.eval.validation import sigma_grid
from difftrain.pipeline.build import build_denoiser, build_objective, sampling_kwargs
from difftrain.pipeline.generate import generate
from difftrain.pipeline.sequence import SequenceInfo, plot_windows
from difftrain.train.stream import BatchStream
from difftrain.train.task import Task


@dataclass
class SequenceVal:
    """Held-out windows (N×C×1×L, NaN = missing); no labels."""

    x: torch.Tensor
    labels: None = None
    captions: None = None

    def __len__(self) -> int:
        return len(self.x)


class SequenceBatches:
    """Windows through the same seeded BatchStream as in-memory images (resume needs no RNG)."""

    def __init__(self, x: torch.Tensor, info: SequenceInfo, cfg: Config, rank, world, state):
        self.x, self.info, self.cfg = x, info, cfg
        self.rows = torch.tensor(rank_rows(cfg.train.batch_size, cfg.train.grad_accum, rank, world))
        self.stream = BatchStream(len(x), cfg.train.seed, **state)
        self.bad = BadFiles()
        self.num_classes = self.class_names = self.captions = None

    def __len__(self) -> int:
        return len(self.x)

    def next(self) -> Batch:
        idx = self.stream.next(self.cfg.train.batch_size)[self.rows]
        return Batch(self.x[idx], None, None, [str(int(i)) for i in idx])

    def state(self) -> dict:
        return self.stream.state()

    def restore(self, state: dict) -> None:
        self.stream = BatchStream(len(self.x), self.cfg.train.seed, **state)

    def close(self) -> None:
        pass


def open_sequence_batches(cfg: Config, rank: int, world: int, state: dict, run_dir):
    """(training batches, SequenceVal); writes RUN/sequence.json (main process) on the way."""
    sc = cfg.sequence
    series = read_series(cfg.data.path, sc.columns, sc.npz_key)
    series = apply_missing_rule(series, sc.missing, cfg.data.path)
    mean, std = channel_stats(series.values)
    info = SequenceInfo(series.columns, mean.tolist(), std.tolist(), sc.length)
    normed = (series.values - mean) / std  # NaN stays NaN
    x, dropped = windows(normed, sc.length, sc.stride, sc.min_observed)
    if run_dir is not None:
        info.save(Path(run_dir))
        if dropped:
            print(f"sequence: dropped {dropped} windows with < {sc.min_observed:.0%} observed")
    train_rows, val_rows = split_indices(len(x), cfg.data.val_fraction, cfg.train.seed)
    batches = SequenceBatches(x[train_rows], info, cfg, rank, world, state)
    return batches, SequenceVal(x[val_rows])


@torch.no_grad()
def masked_validation_loss(denoiser, x: torch.Tensor, sigmas: list[float], sigma_data: float,
                           seed: int, device) -> dict[str, float]:  # fmt: skip
    """λ(σ)-weighted denoising error over observed entries per σ, on fixed noise."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    observed = torch.isfinite(x)
    x0 = torch.where(observed, x, torch.zeros_like(x)).to(device)
    obs = observed.to(device)
    out = {}
    for s in sigmas:
        sig = torch.full((len(x0),), s, device=device)
        d = denoiser(x0 + s * noise.to(device), sig, None)
        err = torch.where(obs, (d - x0) ** 2, torch.zeros_like(d)).flatten(1).sum(1)
        per = err / obs.flatten(1).sum(1).clamp_min(1)
        out[f"val/loss_sigma_{s:.3g}"] = ((s**2 + sigma_data**2) / (s * sigma_data) ** 2
                                          * per.mean().item())  # fmt: skip
    out["val/loss"] = sum(out.values()) / len(sigmas)
    return out


class SequenceTask(Task):
    """An unconditional 1-D denoiser on windows; the loss is over observed entries only."""

    def __init__(self, cfg: Config, data: SequenceBatches):
        self.cfg, self.info = cfg, data.info
        self.model = build_denoiser(cfg, None, self.info.shape)
        self.objective = MaskedObjective(build_objective(cfg))
        self.sigmas = sigma_grid(n=8)
        self.real = data.x[:6]

    def validate(self, model, x, y, device) -> dict[str, float]:
        c = self.cfg
        return masked_validation_loss(model, x, self.sigmas, c.diffusion.sigma_data, c.train.seed,
                                      device)  # fmt: skip

    def write_samples(self, model, path: Path, device) -> None:
        """A plot of real and generated windows (first channel, data units)."""
        x = generate(model, num=6, shape=self.info.shape, seed=self.cfg.sample.seed,
                     device=device, **sampling_kwargs(self.cfg))  # fmt: skip
        as_nlc = lambda t: self.info.denormalise(t)[:, :, 0, :].permute(0, 2, 1).numpy()  # noqa: E731
        plot_windows(as_nlc(self.real), as_nlc(x), path, self.info.columns)
