"""Build the pieces a run needs from its config: cross-section checks, denoiser, objective."""

from __future__ import annotations

from difftrain.config import Config, ConfigError
from difftrain.diffusion import EDMLoss, EDMPrecond
from difftrain.models import PRESETS, UNetBackbone, resolve_preset


def check_config(cfg: Config) -> None:
    """Checks that span sections or touch the file system; run before any data or model loads."""
    if cfg.model.preset not in PRESETS:
        raise ConfigError(
            f"model.preset = {cfg.model.preset!r}: unknown preset (allowed: {', '.join(PRESETS)})"
        )
    preset = resolve_preset(
        cfg.model.preset, cfg.model.block_out_channels, cfg.model.layers_per_block,
        cfg.model.attention_levels,
    )  # fmt: skip
    factor = preset.downsample_factor
    if cfg.data.resolution % factor:
        raise ConfigError(
            f"data.resolution = {cfg.data.resolution}: must be divisible by {factor}, the "
            f"downsampling of model.preset {cfg.model.preset!r} "
            f"({len(preset.block_out_channels)} levels); try {cfg.data.resolution // factor * factor or factor}"
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
    if cfg.data.source != "digits":
        if cfg.data.path is None:
            raise ConfigError(f"data.path is required for data.source = {cfg.data.source!r}")
        if not cfg.data.path.exists():
            raise ConfigError(
                f"data.path = '{cfg.data.path}': does not exist (source {cfg.data.source!r}); "
                "set data.path to an existing folder or file"
            )
    if cfg.data.source == "npz" and cfg.data.path.is_dir():
        raise ConfigError(f"data.path = '{cfg.data.path}': source 'npz' needs an .npz file")
    if cfg.data.source in ("folder", "idx") and not cfg.data.path.is_dir():
        raise ConfigError(f"data.path = '{cfg.data.path}': source {cfg.data.source!r} needs a directory")


def build_denoiser(cfg: Config, num_classes: int | None) -> EDMPrecond:
    """The backbone wrapped in its preconditioning: the D(x, sigma, cond) the rest sees."""
    preset = resolve_preset(
        cfg.model.preset, cfg.model.block_out_channels, cfg.model.layers_per_block,
        cfg.model.attention_levels,
    )  # fmt: skip
    backbone = UNetBackbone(
        preset, cfg.data.resolution, cfg.data.channels, num_classes, cfg.model.dropout
    )
    return EDMPrecond(backbone, sigma_data=cfg.diffusion.sigma_data)


def build_objective(cfg: Config) -> EDMLoss:
    """The training loss named by diffusion.objective."""
    d = cfg.diffusion
    return EDMLoss(p_mean=d.p_mean, p_std=d.p_std, sigma_data=d.sigma_data)
