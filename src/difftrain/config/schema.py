"""Typed configuration: one pydantic model per section, validated before anything loads."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Upper bounds for values that type-check but would fail later (an overflow deep in torch, an
# allocation of tens of GB) or that are typos (1e9 for 1e3). Each is far above real use.
# Seeds: torch.Generator.manual_seed takes integers below 2**64, and our seed mixers
# (data.order.mix_seed, samplers.noise) work in 63 bits, so a seed is a 63-bit integer.
MAX_SEED = 2**63 - 1
MAX_RESOLUTION = 4096  # pixels per side
MAX_BATCH = 65_536  # images per optimizer step or per feature-network batch
MAX_GRID = 1024  # images in one training-time sample grid (held in memory at once)
MAX_EVAL_IMAGES = 100_000  # FID-50k, the largest standard protocol, uses 50,000
MAX_SAMPLER_STEPS = 10_000
MAX_TIMESTEPS = 100_000  # discrete diffusion steps T (1000 is usual)
MAX_WIDTH = 8192  # channels of one network level
MAX_LEVELS = 8  # U-Net levels: 2**7 downsampling already needs 128 px
MAX_SHUFFLE_BUFFER = 1_000_000  # samples held in memory for shuffling


class Section(BaseModel):
    """Base for every section: unknown keys are errors, assignments are validated.

    allow_inf_nan=False: no float key means anything as inf or NaN (`lr: .inf` trained NaNs).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class AugmentConfig(Section):
    """Training-time augmentations; each applies to an image with its own probability."""

    hflip: float = Field(0.0, ge=0, le=1, description="probability of a left-right flip")
    rotate: float = Field(0.0, ge=0, le=1, description="probability of a small rotation")
    rotate_degrees: float = Field(10.0, gt=0, le=45, description="rotation drawn from ±this")
    resized_crop: float = Field(0.0, ge=0, le=1, description="probability of a random resized crop")
    resized_crop_scale: tuple[float, float] = Field(
        (0.8, 1.0), description="crop area range as a share of the image (min, max)"
    )
    color_jitter: float = Field(0.0, ge=0, le=1, description="probability of color jitter")
    brightness: float = Field(0.1, ge=0, le=1, description="jitter factor range 1 ± this")
    contrast: float = Field(0.1, ge=0, le=1, description="jitter factor range 1 ± this")
    saturation: float = Field(0.1, ge=0, le=1, description="jitter factor range 1 ± this")

    @model_validator(mode="after")
    def _scale_order(self) -> AugmentConfig:
        lo, hi = self.resized_crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(
                f"resized_crop_scale = {list(self.resized_crop_scale)}: need 0 < min <= max <= 1"
            )
        return self


class BucketConfig(Section):
    """Aspect-ratio bucketing: each batch has one shape; images keep their aspect ratio."""

    enabled: bool = Field(False, description="group images into aspect-ratio buckets")
    resolutions: list[int] | None = Field(
        None,
        description="bucket areas as side lengths (several = multi-resolution); "
        "null = [data.resolution]",
    )
    step: int = Field(8, gt=0, description="bucket sides are multiples of this (model stride)")
    max_ratio: float = Field(2.0, ge=1, le=8, description="widest long/short side ratio")
    upscale: bool = Field(False, description="put small images in the largest resolution's buckets")

    @model_validator(mode="after")
    def _resolution_range(self) -> BucketConfig:
        res = self.resolutions
        if res is not None and not all(0 < r <= MAX_RESOLUTION for r in res):
            raise ValueError(
                f"data.buckets.resolutions = {res}: each must lie in 1..{MAX_RESOLUTION} pixels"
            )
        return self


class DataConfig(Section):
    source: Literal["folder", "idx", "digits", "npz", "hf", "webdataset", "sequence"] = Field(
        "folder",
        description="where images come from (see data.registry.SOURCES); sequence = a numeric "
        "series from a .csv/.npz at data.path, cut into windows (see the sequence section)",
    )
    path: Path | None = Field(
        None, description="image folder, IDX dir, .npz, save_to_disk folder or parquet, tar shards"
    )
    split: str = Field("train", description="IDX split (train|test) or Hugging Face split name")
    resolution: int = Field(
        32, gt=0, le=MAX_RESOLUTION, description="square side in pixels after preprocessing"
    )
    channels: Literal[1, 3] = Field(3, description="1 = grayscale, 3 = RGB")
    resize: Literal["pad", "crop", "random_crop", "stretch"] = Field(
        "crop",
        description="reach the size by: shorter side then center 'crop' or 'random_crop' "
        "(stream loader), 'pad' (with white) or 'stretch'",
    )
    hflip: bool = Field(False, description="random horizontal flip during training (p = 0.5)")
    augment: AugmentConfig = AugmentConfig()
    buckets: BucketConfig = BucketConfig()
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="held-out validation share")
    max_images: int | None = Field(None, gt=0, description="use only the first N images")
    class_conditional: bool = Field(True, description="use labels when the source has them")
    loader: Literal["memory", "stream"] = Field(
        "memory", description="decode everything once into memory, or decode on demand in workers"
    )
    workers: int | None = Field(None, ge=0, le=64, description="decoder processes; null = auto")
    prefetch: int = Field(2, gt=0, le=64, description="batches each worker prepares ahead")
    shuffle_buffer: int = Field(
        1000, gt=0, le=MAX_SHUFFLE_BUFFER, description="webdataset sample shuffle buffer size"
    )
    image_column: str | None = Field(None, description="Hugging Face image column; null = detect")
    label_column: str | None = Field(None, description="Hugging Face label column; null = detect")
    caption_column: str | None = Field(
        None, description="caption column (HF or metadata.jsonl/csv); null = text|caption|prompt"
    )
    caption_ext: str = Field(
        ".txt", pattern=r"^\.[A-Za-z0-9_]+$", description="side-car caption suffix"
    )
    caption_policy: Literal["empty", "filename", "error"] = Field(
        "empty", description="a missing/empty caption becomes '', the file name, or an error"
    )
    verify: Literal["header", "full", "none"] = Field(
        "header", description="check every file at start: header only, full decode, or not at all"
    )
    max_pixels: int = Field(
        64_000_000, gt=0, description="refuse images with more pixels (decompression bombs)"
    )
    max_bad_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="abort (at start or while training) when a larger share of files is unusable",
    )
    max_member_bytes: int = Field(
        64 * 2**20,
        gt=0,
        description="webdataset: largest tar member read; a larger one makes its sample bad",
    )


class ModelConfig(Section):
    kind: Literal["diffusion", "autoencoder"] = Field(
        "diffusion",
        description="what the run trains: a diffusion model, or a KL autoencoder (see autoencoder)",
    )
    preset: str = Field("unet-small", description="named size preset (see models.presets)")
    block_out_channels: list[int] | None = Field(None, description="override the preset widths")
    layers_per_block: int | None = Field(None, gt=0, le=16)
    attention_levels: list[int] | None = Field(
        None, description="levels (0 = highest res) with attention"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    pretrained: Path | None = Field(
        None,
        description="fine-tune a local diffusers Stable Diffusion pipeline dir (unet/, vae/, "
        "text_encoder/, tokenizer/, scheduler/) or a single-file .safetensors; null = scratch",
    )
    allow_pickle: bool = Field(
        False, description="accept a pickled .ckpt/.bin model.pretrained (loaded weights_only)"
    )

    @model_validator(mode="after")
    def _widths(self) -> ModelConfig:
        widths = self.block_out_channels
        if widths is not None and (
            not 1 <= len(widths) <= MAX_LEVELS or not all(0 < w <= MAX_WIDTH for w in widths)
        ):
            raise ValueError(
                f"model.block_out_channels = {widths}: 1 to {MAX_LEVELS} levels, each width "
                f"between 1 and {MAX_WIDTH} channels (e.g. [64, 128, 256]); null = the preset's"
            )
        return self


# Keys that only one family of objectives reads; setting one for another objective is an error.
_OBJECTIVE_KEYS = {
    "p_mean": ("edm",),
    "p_std": ("edm",),
    "prediction": ("vp", "iddpm"),
    "beta_schedule": ("vp", "iddpm"),
    "beta_start": ("vp", "iddpm"),
    "beta_end": ("vp", "iddpm"),
    "num_train_timesteps": ("vp", "iddpm"),
    "zero_terminal_snr": ("vp", "iddpm"),
    "logit_mean": ("flow",),
    "logit_std": ("flow",),
    "flow_shift": ("flow",),
    "vlb_weight": ("iddpm",),
}


class DiffusionConfig(Section):
    objective: Literal["edm", "vp", "flow", "iddpm"] = Field(
        "edm",
        description="edm (Karras 2022), vp (DDPM, Ho 2020), flow (rectified flow), "
        "iddpm (VP + learned variance, hybrid loss; Nichol & Dhariwal 2021)",
    )
    sigma_data: float = Field(0.5, gt=0)
    p_mean: float = Field(-1.2, description="edm: mean of log-sigma during training")
    p_std: float = Field(1.2, gt=0, description="edm: std of log-sigma during training")
    sigma_min: float = Field(0.002, gt=0, description="sampling: smallest nonzero sigma")
    sigma_max: float = Field(80.0, gt=0, le=1e4, description="sampling: largest sigma")
    prediction: Literal["eps", "v", "x0"] | None = Field(
        None, description="vp/iddpm network target; null = eps"
    )
    beta_schedule: Literal["linear", "scaled-linear", "cosine"] = "linear"
    beta_start: float = Field(1e-4, gt=0, lt=1, description="linear/scaled-linear beta_0")
    beta_end: float = Field(0.02, gt=0, lt=1, description="linear/scaled-linear beta_(T-1)")
    num_train_timesteps: int = Field(1000, gt=1, le=MAX_TIMESTEPS)
    zero_terminal_snr: bool = Field(False, description="rescale betas to SNR 0 at T (Lin 2024)")
    offset_noise: float = Field(0.0, ge=0, description="per-channel noise offset (0 = off)")
    weighting: Literal["uniform", "min-snr", "soft-min-snr", "edm", "learned"] = Field(
        "uniform", description="loss weighting over noise levels (uniform = objective's own)"
    )
    min_snr_gamma: float = Field(5.0, gt=0, description="gamma of (soft-)min-snr")
    logit_mean: float = Field(0.0, description="flow: mean of logit(t)")
    logit_std: float = Field(1.0, gt=0, description="flow: std of logit(t)")
    flow_shift: float = Field(
        1.0,
        gt=0,
        le=100,
        description="flow: time shift t -> s*t/(1+(s-1)*t) in training and sampling (SD3: 3)",
    )
    vlb_weight: float = Field(0.001, ge=0, description="iddpm: lambda of L_simple + lambda*L_vlb")

    @model_validator(mode="after")
    def _sigma_order(self) -> DiffusionConfig:
        if self.sigma_min >= self.sigma_max:
            raise ValueError(
                f"sigma_min ({self.sigma_min}) must be below sigma_max ({self.sigma_max})"
            )
        return self

    @model_validator(mode="after")
    def _combinations(self) -> DiffusionConfig:
        obj = self.objective
        for key, objectives in _OBJECTIVE_KEYS.items():
            value = getattr(self, key)
            if obj not in objectives and value != type(self).model_fields[key].default:
                raise ValueError(
                    f"diffusion.{key} = {value!r} is only used by diffusion.objective "
                    f"{' or '.join(objectives)}, not {obj!r}; remove diffusion.{key}"
                )
        if self.beta_schedule == "cosine" and (self.beta_start, self.beta_end) != (1e-4, 0.02):
            raise ValueError(
                "diffusion.beta_start/beta_end are not used by diffusion.beta_schedule = 'cosine'; "
                "remove them"
            )
        if self.beta_start >= self.beta_end:
            raise ValueError(
                f"diffusion.beta_start ({self.beta_start}) must be below "
                f"diffusion.beta_end ({self.beta_end})"
            )
        if self.zero_terminal_snr and (self.prediction or "eps") == "eps":
            raise ValueError(
                "diffusion.zero_terminal_snr = true needs diffusion.prediction = 'v' (or 'x0'): "
                "an eps-prediction cannot recover x0 at SNR 0 (Lin et al. 2024)"
            )
        if self.min_snr_gamma != 5.0 and self.weighting not in ("min-snr", "soft-min-snr"):
            raise ValueError(
                f"diffusion.min_snr_gamma is only used by diffusion.weighting = 'min-snr' or "
                f"'soft-min-snr', not {self.weighting!r}; remove it or change the weighting"
            )
        if self.weighting == "learned" and obj == "iddpm":
            raise ValueError(
                "diffusion.weighting = 'learned' does not combine with diffusion.objective = "
                "'iddpm' (its hybrid loss already learns a variance); choose another weighting"
            )
        return self


class OptimConfig(Section):
    name: Literal["adamw", "adam", "rmsprop", "sgd", "adamw8bit"] = Field(
        "adamw", description="adamw8bit = bitsandbytes AdamW8bit (needs bitsandbytes)"
    )
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD and RMSprop momentum")
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "constant"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a share of lr")
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad norm; null = off")
    fused: bool = Field(False, description="fused Adam/AdamW kernel (GPU speed; CPU allowed)")

    @model_validator(mode="after")
    def _betas_range(self) -> OptimConfig:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(
                f"optim.betas = {list(self.betas)}: each must lie in [0, 1) (Adam's moment "
                "decay rates; the usual value is [0.9, 0.999])"
            )
        return self


class ResolutionStage(Section):
    """Train at `resolution` px while step < `until_step` (then the next stage, finally data.resolution)."""

    until_step: int = Field(..., gt=0, le=10**9, description="first step of the next stage")
    resolution: int = Field(..., gt=0, le=MAX_RESOLUTION, description="square side in pixels")


class NoiseStage(Section):
    """The training σ distribution at `step`; between stages it is interpolated linearly."""

    step: int = Field(..., ge=0, le=10**9)
    p_mean: float | None = Field(None, ge=-10, le=10, description="edm; null = diffusion.p_mean")
    p_std: float | None = Field(None, gt=0, le=10, description="edm; null = diffusion.p_std")
    logit_mean: float | None = Field(None, ge=-10, le=10, description="flow; null = diffusion's")
    logit_std: float | None = Field(None, gt=0, le=10, description="flow; null = diffusion's")


class OrderConfig(Section):
    """Easy-to-hard data order: difficulty = per-sample loss of a short probe run (cached)."""

    probe_steps: int = Field(50, gt=0, le=100_000, description="training steps of the probe")
    probe_batch_size: int = Field(64, gt=0, le=MAX_BATCH, description="probe batch size")
    start_fraction: float = Field(
        0.25, gt=0, le=1, description="share of the training set (easiest first) used at step 0"
    )
    until_step: int = Field(
        ..., gt=0, le=10**9, description="step from which the whole set is used (linear pacing)"
    )


class CurriculumConfig(Section):
    """Curriculum stages; each is a pure function of the step, so --resume is exact."""

    resolution: list[ResolutionStage] = Field(
        [], description="progressive resolution: lower-resolution stages before data.resolution"
    )
    noise: list[NoiseStage] = Field(
        [], description="σ-distribution points (edm p_mean/p_std, flow logit_mean/logit_std)"
    )
    order: OrderConfig | None = Field(None, description="easy-to-hard data order; null = off")

    @model_validator(mode="after")
    def _stage_order(self) -> CurriculumConfig:
        until = [s.until_step for s in self.resolution]
        res = [s.resolution for s in self.resolution]
        if until != sorted(set(until)) or res != sorted(set(res)):
            raise ValueError(
                f"resolution: until_step {until} and resolution {res} must both "
                "strictly increase from stage to stage"
            )
        steps = [s.step for s in self.noise]
        if steps != sorted(set(steps)):
            raise ValueError(f"noise: step {steps} must strictly increase")
        return self


class TrainConfig(Section):
    run_dir: Path = Path("runs/default")
    batch_size: int = Field(
        64, gt=0, le=MAX_BATCH, description="images per optimizer step (all processes)"
    )
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    max_steps: int = Field(1000, gt=0)
    time_limit: str | None = Field(
        None,
        description="wall-clock budget, e.g. '10m', '2h': the step count is fixed from the step "
        "rate of the first steps (at most max_steps); null = off",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)
    checkpoint_every: int = Field(500, gt=0)
    val_images: int = Field(
        512,
        gt=0,
        le=MAX_EVAL_IMAGES,
        description="held-out images scored by the validation at each checkpoint (the first N)",
    )
    keep_checkpoints: int = Field(2, gt=0, description="how many recent checkpoints to keep")
    sample_every: int = Field(500, gt=0, description="write a sample grid every N steps")
    log_every: int = Field(10, gt=0)
    ema_halflife_kimg: float = Field(10.0, ge=0, description="EMA half-life in thousands of images")
    ema_rampup: float | None = Field(
        0.05, gt=0, description="cap half-life at this share of images seen (EDM); null = off"
    )
    ema_halflives_kimg: list[float] = Field(
        [], description="extra classic EMAs (half-lives in kimg), checkpoint groups ema_hl<H>"
    )
    # Post-hoc EMA (EDM2): power-function EMAs snapshotted during training, any length later.
    posthoc_ema_sigma_rels: list[float] = Field(
        [0.05, 0.10], description="tracked power-EMA profiles as relative std σ_rel; [] = off"
    )
    posthoc_snapshot_every: int | None = Field(
        None, gt=0, description="snapshot the power EMAs every N steps; null = max_steps // 20"
    )
    label_dropout: float = Field(0.1, ge=0, lt=1, description="share of labels replaced by null")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    channels_last: bool = Field(False, description="NHWC weights and activations (GPU speed)")
    compile: bool = Field(False, description="torch.compile the backbone (needs a C++ compiler)")
    guard_on_device: bool = Field(
        False,
        description="decide guard skips on the device (needs optim.fused): no per-step host "
        "sync; counters are read every log_every steps, so a rollback waits until then",
    )
    # Data parallelism: ddp replicates the model; fsdp shards weights, gradients, optimizer state.
    distributed: Literal["ddp", "fsdp"] = "ddp"
    fsdp_min_params: int = Field(
        1_000_000, gt=0, description="fsdp: submodules with at least this many weights are "
        "sharded as their own unit (all-gathered one at a time)",
    )  # fmt: skip
    # Guards: skip non-finite or spiking steps; roll back after a streak; stop after repeats.
    max_bad_steps: int = Field(5, gt=0, description="consecutive skipped steps before a rollback")
    max_rollbacks: int = Field(3, ge=0, description="rollbacks before stopping with a report")
    rollback_lr_factor: float = Field(0.5, gt=0, le=1, description="LR multiplier per rollback")
    spike_factor: float = Field(
        10.0, gt=1, description="a loss/grad-norm this many × the median is a spike"
    )
    spike_window: int = Field(200, ge=10, description="steps in the rolling window for spikes")
    # Validation (at every checkpoint), best checkpoints and early stopping.
    keep_best: int = Field(1, ge=0, description="also keep this many best checkpoints by val/loss")
    early_stopping_patience: int | None = Field(
        None, gt=0, description="stop after this many validations without improvement; null = off"
    )
    early_stopping_min_delta: float = Field(0.0, ge=0)
    best_metric: str = Field(
        "val/loss",
        description="lower-is-better metric for best checkpoints and early stopping: val/loss or "
        "an in-training eval metric such as eval/fid_domain (needs eval.every)",
    )
    curriculum: CurriculumConfig = Field(
        CurriculumConfig(), description="resolution / noise / data-order stages (README Curriculum)"
    )

    @model_validator(mode="after")
    def _time_limit(self) -> TrainConfig:
        if self.time_limit is not None:
            from difftrain.config.duration import parse_duration

            try:
                parse_duration(self.time_limit)
            except ValueError as err:
                raise ValueError(f"train.time_limit = {err}") from None
        return self

    @model_validator(mode="after")
    def _accum_divides(self) -> TrainConfig:
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})"
            )
        return self

    @model_validator(mode="after")
    def _ema_lists(self) -> TrainConfig:
        max_rel = (1 / 12) ** 0.5  # σ_rel of γ = 0, a uniform average over the whole run
        rels, hls = self.posthoc_ema_sigma_rels, self.ema_halflives_kimg
        if any(not 0 < s < max_rel for s in rels):
            raise ValueError(
                f"train.posthoc_ema_sigma_rels = {rels}: each must lie in (0, {max_rel:.4f}) "
                "(EDM2 uses 0.05 and 0.10); [] turns post-hoc EMA off"
            )
        if len({round(s, 4) for s in rels}) != len(rels):
            raise ValueError(f"train.posthoc_ema_sigma_rels = {rels}: values must be distinct")
        if any(not h > 0 for h in hls) or len(set(hls)) != len(hls):
            raise ValueError(
                f"train.ema_halflives_kimg = {hls}: each half-life must be > 0 and distinct"
            )
        return self


class SampleConfig(Section):
    # The names of difftrain.samplers.SAMPLERS (a test keeps the two lists equal).
    sampler: Literal[
        "euler",
        "heun",
        "edm-stochastic",
        "ddim",
        "ddpm",
        "dpmpp-2m",
        "dpmpp-3m",
        "dpmpp-3m-exact",
        "unipc",
    ] = "heun"
    steps: int = Field(18, gt=0, le=MAX_SAMPLER_STEPS)
    schedule: Literal["karras", "uniform", "training"] = Field(
        "karras",
        description="karras (rho), uniform (in t; vp/iddpm/flow) or training (all T "
        "timesteps; vp/iddpm)",
    )
    rho: float = Field(7.0, gt=0)
    eta: float = Field(0.0, ge=0, le=1, description="ddim: noise (0 = deterministic, 1 = ddpm)")
    s_churn: float = Field(40.0, ge=0, description="edm-stochastic: S_churn")
    guidance_interval: tuple[float, float] | None = Field(
        None, description="apply guidance only for sigma in (lo, hi] (Kynkaanniemi 2024)"
    )
    guidance: float = Field(1.0, ge=0, description="classifier-free guidance weight; 1 = off")
    num: int = Field(64, gt=0, le=MAX_GRID, description="images in each training-time grid")
    prompts: list[str] = Field(
        [], description="text models: grid prompts (one row each); [] = first validation captions"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _sampler_options(self) -> SampleConfig:
        if self.eta != 0.0 and self.sampler != "ddim":
            raise ValueError(
                f"sample.eta is only used by sample.sampler = 'ddim', not {self.sampler!r}"
            )
        if self.s_churn != 40.0 and self.sampler != "edm-stochastic":
            raise ValueError(
                "sample.s_churn is only used by sample.sampler = 'edm-stochastic', "
                f"not {self.sampler!r}"
            )
        interval = self.guidance_interval
        if interval is not None and not 0 <= interval[0] < interval[1]:
            raise ValueError(f"sample.guidance_interval = {list(interval)}: needs 0 <= lo < hi")
        return self


class FeaturesConfig(Section):
    """The domain feature network of `difftrain features train` (a small CNN classifier)."""

    out: Path | None = Field(None, description="output directory; null = <train.run_dir>/features")
    width: int = Field(32, gt=0, le=MAX_WIDTH, description="channels of the first conv level")
    feature_dim: int = Field(128, gt=1, le=MAX_WIDTH, description="size of the feature vector")
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(128, gt=0, le=MAX_BATCH)
    lr: float = Field(2e-3, gt=0)
    seed: int = Field(0, ge=0, le=MAX_SEED)


class EvalConfig(Section):
    """Sample-quality evaluation during training (from the EMA weights) and by default on demand."""

    every: int = Field(
        0, ge=0, description="evaluate every N steps (and at the end); 0 = off; needs a feature net"
    )
    metrics: list[Literal["fid", "kid", "pr", "acc", "nll"]] = Field(
        ["fid", "kid", "pr", "acc"], description="fid, kid, pr (precision/recall), acc, nll"
    )
    num: int = Field(
        300, gt=3, le=MAX_EVAL_IMAGES, description="generated (and reference) images per evaluation"
    )
    # One denoiser call per step: 12 calls per image keeps two evaluations of the Fashion-MNIST
    # demo under 10% of its training time (bench/eval_speed.py).
    steps: int = Field(
        12, gt=0, le=MAX_SAMPLER_STEPS, description="sampler steps for evaluation samples"
    )
    sampler: str = Field("dpmpp-2m", description="sampler name (see difftrain.samplers.SAMPLERS)")
    seed: int = Field(
        1, ge=0, le=MAX_SEED, description="generation seed (sample i depends on (seed, i))"
    )
    features: Literal["domain", "inception"] = "domain"
    feature_net: Path | None = Field(None, description="domain net dir; null = <run_dir>/features")
    inception_weights: Path | None = Field(None, description="FID Inception-v3 weight file")
    nll_num: int = Field(
        32, gt=0, le=MAX_EVAL_IMAGES, description="validation images for the likelihood"
    )
    nll_steps: int = Field(
        32, gt=1, le=MAX_SAMPLER_STEPS, description="ODE steps for the likelihood"
    )


class LatentConfig(Section):
    """Latent diffusion: train the denoiser on an autoencoder's latents (null = pixel space)."""

    autoencoder: Path | None = Field(
        None,
        description="difftrain autoencoder run dir or diffusers AutoencoderKL dir; null = pixels",
    )
    cache: bool = Field(
        True,
        description="encode the data once into an on-disk cache (false = encode every step, "
        "which also allows every pixel augmentation)",
    )
    cache_dir: Path | None = Field(
        None,
        description="where latent caches live (one subfolder per key); null = <run_dir>/latents",
    )
    scaling_factor: float | None = Field(
        None, gt=0, description="x0 = latent × this; null = the autoencoder's config value"
    )
    sample_posterior: bool = Field(
        True, description="each step draws z = mean + std·ε (seeded); false = the posterior mean"
    )
    shard_size: int = Field(4096, gt=0, description="images per cache shard file")
    encode_batch_size: int = Field(32, gt=0, description="images per autoencoder call")


class TextConfig(Section):
    """Text conditioning: captions → token ids → a text encoder the backbone cross-attends to."""

    encoder: Literal["none", "scratch", "path"] = Field(
        "none",
        description="none = no text; scratch = a small CLIP text model trained with the "
        "denoiser; path = a frozen pretrained CLIP text encoder + tokenizer from text.path",
    )
    path: Path | None = Field(None, description="local pretrained model dir (encoder: path)")
    tokenizer: Literal["bpe", "byte"] = Field(
        "bpe",
        description="scratch encoder: byte-level BPE trained on the training captions (saved "
        "as <run_dir>/text/tokenizer.json) or raw UTF-8 bytes",
    )
    vocab_size: int = Field(2048, ge=300, le=65536, description="BPE vocabulary size (at most)")
    lowercase: bool = Field(True, description="lower-case captions and prompts (scratch)")
    width: int = Field(128, gt=0, description="scratch encoder hidden size")
    layers: int = Field(2, gt=0, le=48, description="scratch encoder transformer layers")
    heads: int = Field(4, gt=0, description="scratch encoder attention heads")
    max_length: int = Field(24, ge=3, le=512, description="tokens per caption incl. begin/end")
    caption_dropout: float = Field(
        0.1, ge=0, lt=1, description="share of captions replaced by '' (the guidance null)"
    )
    tag_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of a caption's comma-separated tags dropped in training, at least one "
        "kept (kohya's caption_tag_dropout_rate): 'slice of pizza, pizza' also teaches 'pizza'",
    )
    pooled: bool = Field(
        False,
        description="cross-attention U-Nets: also add an attention-pooled text embedding to the "
        "timestep embedding (Imagen; diffusers addition_embed_type='text'), so every level, not "
        "only the cross-attention ones, reads the prompt",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TextConfig:
        if self.encoder == "path" and self.path is None:
            raise ValueError("text.encoder = 'path' needs text.path (a local model directory)")
        if self.encoder != "path" and self.path is not None:
            raise ValueError("text.path is only used by text.encoder = 'path'; remove it")
        if self.width % self.heads:
            raise ValueError(f"text.width ({self.width}) must be divisible by text.heads")
        return self


class AutoencoderConfig(Section):
    """Loss of a model.kind = autoencoder run (Rombach et al. 2022; LDM LPIPSWithDiscriminator)."""

    recon_loss: Literal["l1", "l2"] = Field("l1", description="per-pixel reconstruction loss")
    kl_weight: float = Field(
        1e-6, ge=0, description="weight of KL(q(z|x) || N(0, I)), normalised as in LDM configs"
    )
    sample_posterior: bool = Field(True, description="decode z ~ q(z|x) (false = its mean)")
    lpips_weight: float = Field(0.0, ge=0, description="LPIPS term weight (0 = off)")
    lpips_weights: Path | None = Field(
        None, description="LPIPS-VGG weights as safetensors (needed when lpips_weight > 0)"
    )
    disc_weight: float = Field(
        0.0, ge=0, description="adversarial term weight × the adaptive weight (0 = no GAN)"
    )
    disc_start: int = Field(0, ge=0, description="step at which the GAN term and its updates start")
    disc_layers: int = Field(3, ge=1, le=6, description="PatchGAN stride-2 layers")
    disc_channels: int = Field(64, gt=0, description="PatchGAN width of the first layer")
    disc_lr: float | None = Field(None, gt=0, description="discriminator LR; null = optim.lr")
    adaptive_weight_max: float = Field(1e4, gt=0, description="clamp of the adaptive GAN weight")
    scaling_images: int = Field(
        256, gt=0, description="training images whose latents set the scaling factor (1/std)"
    )


class LoraSection(Section):
    """LoRA adapters (Hu et al. 2021) through peft: W + (alpha/rank)·B·A on the target layers."""

    rank: int = Field(4, gt=0, le=1024, description="rank r of each adapter")
    alpha: float | None = Field(None, gt=0, description="scale alpha / rank; null = rank (×1)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] = Field(
        ["to_q", "to_k", "to_v", "to_out.0"], min_length=1,
        description="U-Net attention projections that get adapters",
    )  # fmt: skip
    text_target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "out_proj"], min_length=1,
        description="text-encoder layers that get adapters (finetune.train_text_encoder)",
    )  # fmt: skip


class DreamBoothSection(Section):
    """DreamBooth (Ruiz et al. 2023): a subject bound to a rare token, with prior preservation."""

    instance_prompt: str = Field(
        ..., min_length=1, description="prompt of every training image, with a rare token"
    )
    class_prompt: str | None = Field(
        None, description="prompt of the subject's class (prior preservation); null = off"
    )
    num_class_images: int = Field(
        50, gt=0, le=MAX_EVAL_IMAGES, description="class images generated by the base model"
    )
    prior_loss_weight: float = Field(1.0, ge=0, description="lambda of L_instance + λ·L_prior")
    class_steps: int = Field(25, gt=0, le=MAX_SAMPLER_STEPS, description="sampler steps")
    class_guidance: float = Field(5.0, ge=0, description="CFG weight of the class images")
    class_seed: int = Field(0, ge=0, le=MAX_SEED, description="class image i uses (seed, i)")
    drift_images: int = Field(
        4, ge=0, le=MAX_GRID, description="class seeds regenerated to measure val/prior_drift"
    )


class FinetuneConfig(Section):
    """Fine-tuning a pretrained pipeline (model.pretrained): what trains, and how."""

    method: Literal["full", "lora"] = Field(
        "lora", description="full = every U-Net weight; lora = peft adapters only"
    )
    train_text_encoder: bool = Field(
        False, description="also train the text encoder (full weights, or LoRA adapters)"
    )
    lora: LoraSection = LoraSection()
    dreambooth: DreamBoothSection | None = None
    gradient_checkpointing: bool = Field(
        False, description="recompute U-Net activations in backward (less memory, ~30% slower)"
    )
    cache_text_embeddings: bool = Field(
        True, description="frozen text encoder: reuse the states of repeated token rows"
    )
    flux_guidance: float = Field(
        3.5,
        ge=0,
        le=100,
        description="FLUX with a guidance embedding (FLUX.1-dev): the distilled guidance value "
        "fed to the transformer in training and sampling (diffusers' default 3.5)",
    )


class SequenceConfig(Section):
    """1-D sequence data (data.source = sequence): windows of a numeric series (CSV or npz)."""

    length: int = Field(64, ge=4, le=100_000, description="time steps per training window")
    stride: int = Field(1, gt=0, description="steps between the starts of consecutive windows")
    columns: list[str] | None = Field(None, description="CSV columns to use; null = all")
    npz_key: str | None = Field(None, description="array name in an .npz; null = its only array")
    missing: Literal["mask", "interpolate", "error"] = Field(
        "mask",
        description="missing values: mask (left out of the loss), interpolate (linear in time, "
        "edges nearest), or error",
    )
    min_observed: float = Field(
        0.5, gt=0, le=1, description="drop windows with a smaller share of observed entries"
    )


class RewardConfig(Section):
    """Reward fine-tuning (`difftrain finetune-reward`): DDPO or DRaFT-K on the model's samples."""

    source: Path = Field(..., description="run directory whose weights start the fine-tuning")
    checkpoint: Path | None = Field(
        None, description="source checkpoint (its EMA weights); null = its latest good one"
    )
    name: str = Field(
        "class-prob",
        description="class-prob, jpeg-compressibility, jpeg-incompressibility, mlp or python",
    )
    scorer: Path | None = Field(None, description="mlp: safetensors MLP over domain features")
    callable: str | None = Field(
        None, description="python: 'module.path:function' (imports and runs trusted code)"
    )
    method: Literal["ddpo", "draft"] = Field("ddpo", description="DDPO or DRaFT-K")
    steps: int = Field(10, ge=2, le=1000, description="ancestral sampler steps per trajectory")
    eta: float = Field(1.0, ge=0, le=1, description="ancestral noise (ddpo needs > 0)")
    sigma_min: float = Field(
        0.02,
        gt=0,
        description="smallest nonzero σ of the reward sampler (karras schedule); "
        "DDPO's gradient noise grows as its last step's σ shrinks",
    )
    draft_k: int = Field(1, gt=0, description="draft: backpropagate through the last K steps")
    clip_range: float = Field(1e-4, gt=0, lt=1, description="ddpo: importance-ratio clip range")
    reuse: int = Field(
        1, gt=0, le=64, description="ddpo: optimizer steps per sampled batch (ratios leave 1)"
    )
    timestep_fraction: float = Field(
        1.0, gt=0, le=1, description="ddpo: share of policy steps trained per optimizer step"
    )
    adv_clip: float = Field(5.0, gt=0, description="ddpo: advantages clipped to ±this")
    penalty: float = Field(
        0.0, ge=0, description="λ of λ·‖θ − θ_start‖² (distance to the starting weights)"
    )
    data_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the ordinary diffusion loss on the real training batch, added to "
        "the reward loss (ReFL-style regularisation, Xu et al. 2023): keeps samples diverse",
    )
    val_num: int = Field(
        64, ge=0, le=MAX_EVAL_IMAGES, description="samples scored at each validation (eval/reward)"
    )
    jpeg_quality: int = Field(95, ge=1, le=100, description="jpeg rewards: PIL quality")


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
    eval: EvalConfig = EvalConfig()
    features: FeaturesConfig = FeaturesConfig()
    logging: LoggingConfig = LoggingConfig()
    latent: LatentConfig = LatentConfig()
    text: TextConfig = TextConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    sequence: SequenceConfig = SequenceConfig()
    reward: RewardConfig | None = None
