"""Backbones and their size presets. Never imports diffusion/."""

from difftrain.models.presets import PRESETS, UNetPreset, resolve_preset
from difftrain.models.unet import UNetBackbone

__all__ = ["PRESETS", "UNetBackbone", "UNetPreset", "resolve_preset"]
