"""A fine-tuned Stable Diffusion run (model.pretrained) → a `StableDiffusionPipeline` folder:
the run's U-Net and text encoder with every LoRA adapter merged into its base weights, the
base pipeline's tokenizer and scheduler, the run's autoencoder copy. Loads with unmodified
`StableDiffusionPipeline.from_pretrained`; no LoRA machinery is needed to use it."""

from __future__ import annotations

import copy
from pathlib import Path

import diffusers
from diffusers import SchedulerMixin, StableDiffusionPipeline

from difftrain.config import ConfigError
from difftrain.export.source import plain_denoiser
from difftrain.models.pretrained import PretrainedError, merge_lora, read_json
from difftrain.pipeline.run import LoadedRun


def base_scheduler(base: Path):
    """The base pipeline's scheduler, its class checked against diffusers' schedulers."""
    try:
        name = read_json(base / "scheduler" / "scheduler_config.json").get("_class_name")
    except PretrainedError as err:
        raise ConfigError(f"model.pretrained: {err}") from None
    cls = getattr(diffusers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ConfigError(f"{base}/scheduler: _class_name {name!r} is not a diffusers scheduler")
    return cls.from_pretrained(base, subfolder="scheduler", local_files_only=True)


def write_finetuned(run: LoadedRun, stage: Path) -> str:
    """Write the merged pipeline into `stage`; returns the pipeline class name."""
    base = Path(run.config.model.pretrained)
    if not base.is_dir():
        raise ConfigError(
            f"model.pretrained = '{base}': the base pipeline folder is gone; its tokenizer and "
            "scheduler are needed for the export"
        )
    from difftrain.models.families import detect_family

    try:
        family = detect_family(base)
    except ValueError as err:
        raise ConfigError(f"model.pretrained: {err}") from None
    if family.name != "sd":
        raise ConfigError(
            f"--format diffusers of a {family.pipeline} fine-tune (adapters merged) is not "
            f"supported yet; load RUN/lora/ with {family.pipeline}.load_lora_weights instead"
        )
    backbone = plain_denoiser(run).backbone
    unet = merge_lora(copy.deepcopy(backbone.unet))
    text = merge_lora(copy.deepcopy(backbone.text.model))
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=run.autoencoder,
        text_encoder=text,
        tokenizer=run.text.tokenizer.tokenizer,
        scheduler=base_scheduler(base),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(stage, safe_serialization=True)
    return "StableDiffusionPipeline (fine-tuned; any LoRA merged into the base weights)"
