"""Choose and check the backbone for a config: U-Net, cross-attention U-Net or DiT (class/text)."""

from __future__ import annotations

from torch import nn

from difftrain.config import Config, ConfigError
from difftrain.models import UNetBackbone, resolve_preset
from difftrain.models.conditioned import CondUNetBackbone, DiTBackbone, TextDiTBackbone
from difftrain.models.presets import PRESETS, DiTPreset, Seq1DPreset, UNetPreset
from difftrain.pipeline.text import build_text_encoder, uses_text


def model_preset(cfg: Config) -> UNetPreset | DiTPreset:
    """model.preset with its overrides; unknown names or misplaced overrides are ConfigErrors."""
    m = cfg.model
    if m.preset not in PRESETS:
        raise ConfigError(
            f"model.preset = {m.preset!r}: unknown preset (allowed: {', '.join(PRESETS)})"
        )
    try:
        return resolve_preset(
            m.preset, m.block_out_channels, m.layers_per_block, m.attention_levels
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_model(cfg: Config, preset: UNetPreset | DiTPreset) -> None:
    """Preset internals (levels, group norm) and that the preset fits the conditioning."""
    name, text = cfg.model.preset, uses_text(cfg)
    if cfg.text.pooled and not text:
        raise ConfigError(
            "text.pooled = true, but the model reads no text (text.encoder = 'none'): set "
            "text.encoder (scratch or path) or remove text.pooled"
        )
    if text and cfg.eval.every:
        # The in-training evaluator conditions samples on class labels, which a text model
        # cannot read; fail here rather than at the first evaluation, hours in.
        raise ConfigError(
            f"eval.every = {cfg.eval.every}: in-training evaluation does not support text "
            "conditioning yet; set eval.every = 0"
        )
    if isinstance(preset, Seq1DPreset):
        raise ConfigError(
            f"model.preset {name!r} is a 1-D sequence network: set data.source = sequence, or "
            "choose a unet-* or dit-* preset for images"
        )
    if isinstance(preset, DiTPreset):
        if text and cfg.text.pooled:
            raise ConfigError(
                f"text.pooled = true: model.preset {name!r} is a DiT, which reads text through "
                "cross-attention only; set text.pooled = false or choose a unet-cond-* preset"
            )
        return  # class or text: DiT serves both
    if preset.cross_attention and not text:
        raise ConfigError(
            f"model.preset {name!r} cross-attends to text: set text.encoder (scratch or path), "
            "or choose a unet-* or dit-* preset"
        )
    if text and not preset.cross_attention:
        cond = [n for n, p in PRESETS.items() if getattr(p, "cross_attention", False)]
        raise ConfigError(
            f"model.preset {name!r} has no cross-attention, so it cannot read text "
            f"(text.encoder = {cfg.text.encoder!r}); choose one of {', '.join(cond)} or a dit-* preset"
        )
    levels = len(preset.block_out_channels)
    bad = [a for a in preset.attention_levels if not 0 <= a < levels]
    if bad:
        raise ConfigError(f"model.attention_levels = {bad}: levels run from 0 to {levels - 1}")
    groups = preset.norm_num_groups
    if any(c % groups for c in preset.block_out_channels):
        raise ConfigError(
            f"model.block_out_channels = {list(preset.block_out_channels)}: each must be a "
            f"multiple of {groups} (the preset's group-norm groups)"
        )


def build_backbone(
    cfg: Config, num_classes: int | None, channels: int, resolution: int, out_channels: int
) -> nn.Module:
    """F(x, noise_cond, cond) for model.preset; text models own their text encoder."""
    if cfg.model.pretrained is not None:  # a pipeline folder's U-Net, LoRA/full per finetune
        from difftrain.pipeline.pretrained import build_pretrained_backbone

        return build_pretrained_backbone(cfg)
    preset = model_preset(cfg)
    dropout = cfg.model.dropout
    if isinstance(preset, Seq1DPreset):  # windows C×1×L; `resolution` is unused
        from difftrain.models.seq1d import Seq1DBackbone

        return Seq1DBackbone(preset, channels, dropout, out_channels=out_channels)
    if uses_text(cfg):
        text = build_text_encoder(cfg)
        cls = TextDiTBackbone if isinstance(preset, DiTPreset) else CondUNetBackbone
        if cls is CondUNetBackbone:
            return cls(preset, resolution, channels, text, dropout, out_channels, cfg.text.pooled)
        return cls(preset, resolution, channels, text, dropout, out_channels=out_channels)
    cls = DiTBackbone if isinstance(preset, DiTPreset) else UNetBackbone
    return cls(preset, resolution, channels, num_classes, dropout, out_channels=out_channels)
