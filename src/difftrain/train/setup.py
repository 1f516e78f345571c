"""What the loop needs around it: precision choice, data preparation, sample grids, environment."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from difftrain.config import Config
from difftrain.data import ImageData, load_data, to_uint8, write_bad_files
from difftrain.pipeline.build import sampling_kwargs
from difftrain.pipeline.generate import default_labels, generate, make_grid, save_image
from difftrain.pipeline.latent import sample_shape


def resolve_precision(requested: str) -> str:
    """'auto' → bf16 on a GPU that has it, fp16 on other GPUs, full precision on the CPU."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def prepare_data(cfg: Config, run_dir: Path | None) -> tuple[ImageData, ImageData]:
    """Load the configured data, record skipped files in the run directory, split off validation."""
    full = load_data(cfg.data)
    if run_dir is not None and full.skipped:
        write_bad_files(run_dir, full.bad)
    return full.split(cfg.data.val_fraction, cfg.train.seed)


def describe(
    cfg: Config, data, val: ImageData, n_params: int, n_trainable: int | None = None
) -> dict:
    """What a dry run prints: sizes and step counts (trainable weights: LoRA, frozen encoders)."""
    steps_per_epoch = len(data) / cfg.train.batch_size
    return {
        "train_images": len(data),
        "val_images": len(val),
        "num_classes": data.num_classes,
        "parameters": n_params,
        "trainable_parameters": n_params if n_trainable is None else n_trainable,
        "steps_per_epoch": round(steps_per_epoch, 2),
        "total_steps": cfg.train.max_steps,
        "epochs": round(cfg.train.max_steps / steps_per_epoch, 2),
        "skipped_files": {k: len(v) for k, v in data.bad.by_reason.items()},
        **(
            {
                "time_limit": f"{cfg.train.time_limit}: total_steps is the upper bound; the "
                "step count is fixed from the step rate of steps 3-12"
            }
            if cfg.train.time_limit
            else {}
        ),
    }


def write_samples(
    denoiser, cfg: Config, num_classes: int | None, path: Path, device, latents=None
) -> None:
    """A grid of at most sample.num samples from fixed seeds, whatever the number of classes.

    Class-conditional: one row per class when sample.num covers every class (num // k each);
    with more classes than sample.num, one image each of a fixed, evenly spaced subset of
    sample.num classes (a grid event must not cost num_classes images).
    `latents` (a pipeline.latent.Latents) decodes a latent model's samples to pixels.
    """
    num, k = cfg.sample.num, num_classes
    if k and k <= num:
        num = k * (num // k)  # whole rows per class, never more than sample.num
    images = generate(
        denoiser,
        num=num,
        shape=sample_shape(cfg),
        seed=cfg.sample.seed,
        labels=default_labels(num, k),
        null_class=k,
        guidance=cfg.sample.guidance,
        device=device,
        **sampling_kwargs(cfg),  # the configured sampler, schedule and options
    )
    if latents is not None:
        images = latents.to_images(images)
    cols = num // k if k and k <= num else None  # a row per class, else a square-ish grid
    save_image(make_grid(to_uint8(images), cols), path, min_side=256)


def environment(precision: str, world: int) -> dict:
    """Library versions and hardware, recorded in the run directory for reproducibility."""
    import accelerate
    import diffusers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "accelerate": accelerate.__version__,
        "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else platform.processor(),
        "mixed_precision": precision,
        "processes": world,
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None
