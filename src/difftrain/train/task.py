"""What a run trains, seen by the one training loop: model, objective, validation, grids, extras.

The loop owns the step (micro-batches, guards, optimizer, EMA, checkpoints, resume, logging);
a task says what the model and loss are, what to validate, what grid to draw, and any extra
update after the optimizer step (the autoencoder's discriminator) with its checkpointed state.
A new kind of run is one more `Task` subclass and one more branch in `build_task`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from difftrain.config import Config
from difftrain.data import ImageData, to_model_range
from difftrain.eval.validation import sigma_grid, training_sigma_loss, validation_loss
from difftrain.pipeline.build import build_denoiser, build_objective
from difftrain.samplers import nfe
from difftrain.train.setup import write_samples


class Task:
    """Defaults shared by every task: no extra step, no extra state, nothing to export."""

    model: nn.Module
    objective: object
    aux_groups: tuple[str, ...] = ()  # extra tensor groups in each checkpoint

    def begin_step(self, step: int) -> None:
        """Called before each step with its index (0-based)."""

    def aux_step(self) -> dict[str, float]:
        """Called after each applied optimizer step; returns metrics to log."""
        return {}

    def log_metrics(self) -> dict[str, float]:
        """Extra scalars for the loop's periodic log row."""
        return {}

    def aux_state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """(tensor groups, JSON state) that the checkpoint must also hold."""
        return {}, {}

    def load_aux_state(self, groups: dict[str, dict[str, torch.Tensor]], state: dict) -> None:
        """Inverse of aux_state (resume and rollback)."""

    def validate(self, model, x: torch.Tensor, y, device) -> dict[str, float]:
        raise NotImplementedError

    def event_forwards(self, val_n: int) -> tuple[int, int] | None:
        """Denoiser forwards (images × calls) of one validation and one grid; None = unknown.

        The time budget (train/time_budget.py) prices them; unknown costs are left to its margin.
        """
        return None

    def write_samples(self, model, path: Path, device) -> None:
        raise NotImplementedError

    def export(self, ema_model, run_dir: Path) -> None:
        """Called after each checkpoint (main process) with the EMA weights."""

    def condition(self, batch, rows: slice, gen: torch.Generator) -> torch.Tensor | None:
        """A micro-batch's condition when the task makes it (text: token ids), else None."""
        return None


class DiffusionTask(Task):
    """A denoiser D(x, σ, cond) and its diffusion objective; validation loss at 8 noise levels."""

    def __init__(self, cfg: Config, num_classes: int | None, latents=None):
        self.cfg, self.num_classes = cfg, num_classes
        self.latents = latents  # a latent run's codec: grids decode to pixels
        self.model = build_denoiser(cfg, num_classes)
        self.objective = build_objective(cfg)
        self.sigmas = sigma_grid(n=8)

    def validate(self, model, x, y, device) -> dict[str, float]:
        out = validation_loss(
            model, x, y, self.sigmas, self.cfg.diffusion.sigma_data, seed=self.cfg.train.seed,
            device=device,
        )  # fmt: skip
        # Comparable with train/loss: σ from the training distribution (fixed draw).
        out["val/loss_train_sigma"] = training_sigma_loss(
            model, self.objective, x, y, seed=self.cfg.train.seed, device=device
        )
        return out

    def event_forwards(self, val_n: int) -> tuple[int, int]:
        s = self.cfg.sample
        calls = nfe(s.sampler, s.steps) * (2 if s.guidance != 1.0 else 1)
        return (len(self.sigmas) + 1) * val_n, s.num * calls  # 8 σ + the training σ mix

    def write_samples(self, model, path: Path, device) -> None:
        extra = {} if self.latents is None else {"latents": self.latents}
        write_samples(model, self.cfg, self.num_classes, path, device, **extra)


def build_task(cfg: Config, data, val: ImageData, device: torch.device | str = "cpu") -> Task:
    """The task for `model.kind`; `data` is the loop's training batches (for class count, images)."""
    if cfg.model.kind == "autoencoder":
        from difftrain.train.autoencoder_task import AutoencoderTask

        reference = getattr(data, "data", val)  # in-memory training images; streamed: validation
        return AutoencoderTask(cfg, to_model_range(reference.images[: cfg.autoencoder.scaling_images]),
                               val, device)  # fmt: skip
    if getattr(cfg, "reward", None) is not None:  # reward fine-tuning: DDPO / DRaFT-K step
        from difftrain.train.reward_task import RewardTask

        return RewardTask(cfg, data.num_classes)
    if cfg.data.source == "sequence":  # 1-D windows, missing values masked in the loss
        from difftrain.train.sequence_task import SequenceTask

        return SequenceTask(cfg, data)
    if getattr(cfg.model, "pretrained", None) is not None:  # SD fine-tuning: LoRA, DreamBooth
        from difftrain.train.finetune_task import FinetuneTask

        return FinetuneTask(cfg, data, val, getattr(data, "latents", None), device)
    if cfg.text.encoder != "none":  # captions → token ids; the backbone owns the text encoder
        from difftrain.train.text_task import TextDiffusionTask

        return TextDiffusionTask(cfg, data, val, getattr(data, "latents", None))
    return DiffusionTask(cfg, data.num_classes, getattr(data, "latents", None))
