"""Config checks for model.kind = autoencoder (and that diffusion runs leave its section alone)."""

from __future__ import annotations

from difftrain.config import Config, ConfigError
from difftrain.config.schema import AutoencoderConfig
from difftrain.data.checks import check_data
from difftrain.models.autoencoder import resolve_ae_preset
from difftrain.models.discriminator import patch_output_side

# Keys that only the adversarial term reads: setting one without disc_weight > 0 is an error.
_DISC_KEYS = ("disc_start", "disc_layers", "disc_channels", "disc_lr", "adaptive_weight_max")


def check_autoencoder_config(cfg: Config) -> bool:
    """Validate an autoencoder run's config; returns False (after a check) for diffusion runs."""
    a = cfg.autoencoder
    if cfg.model.kind != "autoencoder":
        changed = _changed(a, AutoencoderConfig.model_fields)
        if changed:
            raise ConfigError(
                f"autoencoder.{changed[0]} is only used when model.kind = 'autoencoder' "
                f"(it is {cfg.model.kind!r}); remove the autoencoder section"
            )
        return False
    preset = resolve_ae_preset(
        cfg.model.preset, cfg.model.block_out_channels, cfg.model.layers_per_block
    )
    for key, default in (("attention_levels", None), ("dropout", 0.0)):
        if getattr(cfg.model, key) != default:
            raise ConfigError(
                f"model.{key} is not used by autoencoder presets (attention sits in the middle "
                "block); remove it"
            )
    groups = preset.norm_num_groups
    if any(c % groups for c in preset.block_out_channels):
        raise ConfigError(
            f"model.block_out_channels = {list(preset.block_out_channels)}: each must be a "
            f"multiple of {groups} (the preset's group-norm groups)"
        )
    factor = preset.downsample_factor
    res = cfg.data.resolution
    if res % factor:
        raise ConfigError(
            f"data.resolution = {res}: must be divisible by {factor}, the downsampling of "
            f"model.preset {cfg.model.preset!r}; try {max(factor, res // factor * factor)}"
        )
    check_data(cfg.data, factor)
    if cfg.eval.every:
        raise ConfigError(
            "eval.every > 0: sample-quality evaluation is for diffusion models; an autoencoder "
            "run reports val/psnr at every checkpoint. Set eval.every = 0"
        )
    if cfg.train.best_metric != "val/loss":
        raise ConfigError(
            f"train.best_metric = {cfg.train.best_metric!r}: autoencoder runs rank checkpoints "
            "by val/loss; remove it"
        )
    if cfg.latent.autoencoder is not None:
        raise ConfigError(
            "latent.autoencoder is set but model.kind = 'autoencoder': an autoencoder trains on "
            "pixels; remove latent.autoencoder"
        )
    _check_loss_terms(a, res)
    return True


def _changed(a: AutoencoderConfig, keys) -> list[str]:
    """Keys whose value differs from the default (a resolved config.yaml lists every key)."""
    fields = AutoencoderConfig.model_fields
    return [k for k in keys if getattr(a, k) != fields[k].default]


def _check_loss_terms(a: AutoencoderConfig, resolution: int) -> None:
    if a.lpips_weight > 0 and a.lpips_weights is None:
        raise ConfigError(
            "autoencoder.lpips_weight > 0 needs autoencoder.lpips_weights (a local LPIPS-VGG "
            "safetensors file; the lpips package's download does not work offline); set it or "
            "set autoencoder.lpips_weight = 0"
        )
    if a.lpips_weights is not None and a.lpips_weight == 0:
        raise ConfigError(
            "autoencoder.lpips_weights is set but autoencoder.lpips_weight = 0; set a weight "
            "(LDM uses 1.0) or remove lpips_weights"
        )
    if a.lpips_weights is not None and not a.lpips_weights.is_file():
        raise ConfigError(
            f"autoencoder.lpips_weights = '{a.lpips_weights}': no such file; see "
            "difftrain.models.lpips for how to make it, or set autoencoder.lpips_weight = 0"
        )
    if a.disc_weight == 0:
        set_keys = _changed(a, _DISC_KEYS)
        if set_keys:
            raise ConfigError(
                f"autoencoder.{set_keys[0]} is only used with autoencoder.disc_weight > 0 "
                "(the adversarial term is off); set disc_weight (LDM uses 0.5) or remove it"
            )
        return
    if patch_output_side(resolution, a.disc_layers) < 1:
        fit = max(n for n in range(0, 7) if n == 0 or patch_output_side(resolution, n) >= 1)
        raise ConfigError(
            f"autoencoder.disc_layers = {a.disc_layers}: a {resolution}px image is too small for "
            f"that many stride-2 layers; use disc_layers <= {fit}"
            if fit
            else f"data.resolution = {resolution} is too small for the PatchGAN discriminator"
        )
