"""Fine-tuning SD3 and FLUX pipeline folders: their FlowMatchEulerDiscreteScheduler config →
difftrain's `flow` objective, checks of the folder against the run, and the backbone.

Rectified flow as diffusers trains these models: x_t = (1−t)·x0 + t·ε, velocity target ε − x0,
training times from the logit-normal density shifted by the scheduler's `shift` (SD3: 3.0). A
scheduler with `use_dynamic_shifting` (FLUX) shifts by exp(μ), μ interpolated from the image's
token count as `FluxPipeline` does at inference; difftrain fixes it at data.resolution, for
training and sampling alike (`diffusion.flow_shift` in the run's saved config).
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from difftrain.config import Config, ConfigError
from difftrain.models.families import Family
from difftrain.models.pretrained import PretrainedError, add_lora, read_json

T5_DEFAULT_LENGTH = {"sd3": 256, "flux": 512}  # the pipelines' max_sequence_length defaults
SIGMA_MAX = 9999.0  # t_max = 1 − 1e-4: sampling starts (all but) at pure noise, as diffusers


def _read(path: Path, sub: str) -> dict:
    try:
        return read_json(path / sub)
    except PretrainedError as err:
        raise ConfigError(f"model.pretrained: {err}") from None


def vae_downsample(path: Path) -> int:
    """Pixel side / latent side of the pipeline's vae/."""
    blocks = _read(path, "vae/config.json").get("block_out_channels")
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 8:
        raise ConfigError(f"{path}/vae/config.json: no usable block_out_channels")
    return 2 ** (len(blocks) - 1)


def flow_shift(s: dict, tokens: int) -> float:
    """The scheduler's time shift: `shift`, or exp(μ) (linear: μ) at `tokens` image tokens."""
    if not s.get("use_dynamic_shifting"):
        return float(s.get("shift", 1.0))
    lo, hi = int(s.get("base_image_seq_len", 256)), int(s.get("max_image_seq_len", 4096))
    base, top = float(s.get("base_shift", 0.5)), float(s.get("max_shift", 1.15))
    mu = base + (top - base) * (tokens - lo) / (hi - lo)  # diffusers' calculate_shift
    return math.exp(mu) if s.get("time_shift_type", "exponential") == "exponential" else mu


def flow_diffusion(path: Path, resolution: int) -> dict:
    """diffusion.* values equivalent to the pipeline's flow-matching scheduler config."""
    file = path / "scheduler" / "scheduler_config.json"
    s = _read(path, "scheduler/scheduler_config.json")
    if s.get("_class_name") != "FlowMatchEulerDiscreteScheduler":
        raise ConfigError(
            f"{file}: _class_name {s.get('_class_name')!r}; a transformer pipeline needs "
            "FlowMatchEulerDiscreteScheduler (rectified flow)"
        )
    if s.get("invert_sigmas") or s.get("shift_terminal"):
        raise ConfigError(f"{file}: invert_sigmas / shift_terminal are not supported")
    side = resolution // vae_downsample(path) // 2  # 2×2 patches (SD3 patch_size 2, FLUX packs)
    shift = flow_shift(s, side * side)
    n = int(s.get("num_train_timesteps", 1000))
    t_min = shift * (1 / n) / (1 + (shift - 1) / n)  # the smallest training time of diffusers
    return {
        "objective": "flow",
        "flow_shift": round(shift, 6),
        "sigma_min": t_min / (1 - t_min),
        "sigma_max": SIGMA_MAX,
    }


def t5_length(path: Path, family: Family) -> int:
    """Default text.max_length (the T5 tokens): the pipeline's default, within the tokenizer's."""
    conf = path / family.tokenizers[-1] / "tokenizer_config.json"
    most = read_json(conf).get("model_max_length", 512) if conf.is_file() else 512
    most = most if isinstance(most, int) and most >= 3 else 512
    return min(T5_DEFAULT_LENGTH[family.name], most, 512)


def check_flow(cfg: Config, path: Path, family: Family) -> int:
    """Checks of an SD3/FLUX run; returns the latent downsampling the transformer needs (2)."""
    if cfg.diffusion.objective != "flow":
        raise ConfigError(
            f"{family.pipeline} runs use diffusion.objective = 'flow' (rectified flow)"
        )
    ft = cfg.finetune
    if ft.train_text_encoder:
        raise ConfigError(
            f"finetune.train_text_encoder with a {family.pipeline}: not supported yet (its text "
            "encoders stay frozen); set finetune.train_text_encoder = false"
        )
    t = _read(path, "transformer/config.json")
    latent = int(_read(path, "vae/config.json").get("latent_channels", 0))
    need = latent * (4 if family.name == "flux" else 1)  # FLUX packs 2×2 patches into channels
    patch = int(t.get("patch_size", 1))
    if int(t.get("in_channels", -1)) != need or (family.name == "sd3" and patch != 2):
        raise ConfigError(
            f"model.pretrained = '{path}': transformer in_channels {t.get('in_channels')} / "
            f"patch_size {patch} do not fit the vae's {latent} latent channels"
        )
    return 2


def build_flow_backbone(cfg: Config, path: Path, family: Family, text: nn.Module) -> nn.Module:
    """The pipeline's transformer (LoRA adapters or full weights) with its frozen text encoders."""
    from difftrain.models.pretrained_flow import FluxBackbone, SD3Backbone, load_transformer

    ft = cfg.finetune
    try:
        transformer = load_transformer(path, family.name)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.pretrained = '{path}': cannot load transformer/ ({err})"
        ) from None
    if ft.method == "lora":
        lora = ft.lora
        try:
            add_lora(transformer, lora.rank, lora.alpha, lora.dropout, lora.target_modules)
        except PretrainedError as err:
            raise ConfigError(f"finetune.lora: {err}") from None
    else:
        transformer.requires_grad_(True)
    if ft.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    if family.name == "flux":
        return FluxBackbone(transformer, text, ft.flux_guidance, ft.cache_text_embeddings)
    return SD3Backbone(transformer, text, ft.cache_text_embeddings)
