"""Typed configuration: one pydantic model per section, validated before anything loads."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """Base for every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    source: Literal["folder", "idx", "digits", "npz"] = Field(
        "folder", description="where images come from"
    )
    path: Path | None = Field(None, description="folder, IDX directory or .npz file")
    split: Literal["train", "test"] = Field("train", description="IDX split to read")
    resolution: int = Field(32, gt=0, description="square side in pixels after preprocessing")
    channels: Literal[1, 3] = Field(3, description="1 = grayscale, 3 = RGB")
    resize: Literal["pad", "crop", "stretch"] = Field(
        "crop", description="how to reach the square resolution: pad, center-crop or stretch"
    )
    hflip: bool = Field(False, description="random horizontal flip during training")
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="held-out validation share")
    max_images: int | None = Field(None, gt=0, description="use only the first N images")
    class_conditional: bool = Field(True, description="use labels when the source has them")


class ModelConfig(Section):
    preset: str = Field("unet-small", description="named size preset (see models.presets)")
    block_out_channels: list[int] | None = Field(None, description="override the preset widths")
    layers_per_block: int | None = Field(None, gt=0)
    attention_levels: list[int] | None = Field(None, description="levels (0 = highest res) with attention")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class DiffusionConfig(Section):
    objective: Literal["edm"] = "edm"
    sigma_data: float = Field(0.5, gt=0)
    p_mean: float = Field(-1.2, description="mean of log-sigma during training")
    p_std: float = Field(1.2, gt=0, description="std of log-sigma during training")
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)

    @model_validator(mode="after")
    def _sigma_order(self) -> DiffusionConfig:
        if self.sigma_min >= self.sigma_max:
            raise ValueError(
                f"sigma_min ({self.sigma_min}) must be below sigma_max ({self.sigma_max})"
            )
        return self


class OptimConfig(Section):
    name: Literal["adamw", "adam", "rmsprop", "sgd"] = "adamw"
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD and RMSprop momentum")
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "constant"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a share of lr")
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad norm; null = off")


class TrainConfig(Section):
    run_dir: Path = Path("runs/default")
    batch_size: int = Field(64, gt=0, description="images per optimizer step (all processes)")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    max_steps: int = Field(1000, gt=0)
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(500, gt=0)
    keep_checkpoints: int = Field(2, gt=0, description="how many recent checkpoints to keep")
    sample_every: int = Field(500, gt=0, description="write a sample grid every N steps")
    log_every: int = Field(10, gt=0)
    ema_halflife_kimg: float = Field(10.0, ge=0, description="EMA half-life in thousands of images")
    ema_rampup: float | None = Field(
        0.05, gt=0, description="cap half-life at this share of images seen (EDM); null = off"
    )
    label_dropout: float = Field(0.1, ge=0, lt=1, description="share of labels replaced by null")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"

    @model_validator(mode="after")
    def _accum_divides(self) -> TrainConfig:
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})"
            )
        return self


class SampleConfig(Section):
    sampler: Literal["heun"] = "heun"
    steps: int = Field(18, gt=0)
    rho: float = Field(7.0, gt=0)
    guidance: float = Field(1.0, ge=0, description="classifier-free guidance weight; 1 = off")
    num: int = Field(64, gt=0, description="images in each training-time grid")
    seed: int = Field(0, ge=0)


class LoggingConfig(Section):
    tensorboard: bool = True
    progress: bool = True


class Config(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    logging: LoggingConfig = LoggingConfig()
