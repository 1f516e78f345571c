"""Build the pieces a run needs from its config: cross-section checks, denoiser, objective."""

from __future__ import annotations

import torch
from torch import nn

from difftrain.config import Config, ConfigError
from difftrain.data.checks import check_data
from difftrain.diffusion import (
    EDMLoss,
    EDMPrecond,
    FlowLoss,
    FlowPrecond,
    IDDPMLoss,
    IDDPMPrecond,
    VPLoss,
    VPPrecond,
    Weighting,
    WithLogVar,
    make_alphas_cumprod,
    vp_sigmas,
)
from difftrain.pipeline.autoencoder_checks import check_autoencoder_config
from difftrain.pipeline.backbone import build_backbone, check_model, model_preset
from difftrain.pipeline.latent import check_latent_config, sample_shape
from difftrain.samplers import flow_sigmas, karras_sigmas, training_sigmas, uniform_sigmas


def check_config(cfg: Config) -> None:
    """Checks that span sections or touch the file system; run before any data or model loads."""
    if check_autoencoder_config(cfg):  # model.kind = autoencoder: its own presets and checks
        return
    if cfg.data.source == "sequence":  # 1-D windows: their own checks (pipeline/sequence.py)
        from difftrain.pipeline.sequence import check_sequence_config

        check_sequence_config(cfg, model_preset(cfg))
        return
    if cfg.model.pretrained is not None:  # a pipeline folder's U-Net (pipeline/pretrained.py)
        from difftrain.pipeline.pretrained import check_pretrained

        factor, preset = check_pretrained(cfg), None
    else:
        preset = model_preset(cfg)  # unknown names and misplaced overrides are ConfigErrors
        factor = preset.downsample_factor
    check_latent_config(cfg, factor)  # resolution vs AE × U-Net downsampling, cacheable augments
    if cfg.data.resolution % factor:
        raise ConfigError(
            f"data.resolution = {cfg.data.resolution}: must be divisible by {factor}, the "
            f"downsampling of model.preset {cfg.model.preset!r}; "
            f"try {cfg.data.resolution // factor * factor or factor}"
        )
    if preset is not None:
        check_model(cfg, preset)  # levels, group norm, and text vs cross-attention
    check_data(cfg.data, factor)
    best = cfg.train.best_metric
    if best not in ("val/loss", "val/prior_drift") and not best.startswith("eval/"):
        raise ConfigError(
            f"train.best_metric = {best!r}: use val/loss, val/prior_drift (DreamBooth) or an "
            "eval/... metric"
        )
    if best.startswith("eval/") and (
        cfg.eval.every == 0 or cfg.eval.every % cfg.train.checkpoint_every
    ):
        raise ConfigError(
            f"train.best_metric = {best!r} needs eval.every to be a positive multiple of "
            f"train.checkpoint_every ({cfg.train.checkpoint_every}); eval.every = {cfg.eval.every}"
        )
    check_schedule(cfg.diffusion.objective, cfg.sample.schedule)


def vp_alphas_cumprod(cfg: Config) -> torch.Tensor:
    """ᾱ_t of the configured VP schedule (objectives vp and iddpm)."""
    d = cfg.diffusion
    return make_alphas_cumprod(
        d.beta_schedule, d.num_train_timesteps, d.beta_start, d.beta_end, d.zero_terminal_snr
    )


def build_denoiser(
    cfg: Config, num_classes: int | None, shape: tuple[int, int, int] | None = None
) -> nn.Module:
    """The backbone wrapped in its preconditioning: the D(x, sigma, cond) the rest sees.

    `shape` (C, H, W) is what the denoiser works in; default `sample_shape(cfg)` (pixels, or
    the latents of latent.autoencoder).
    """
    channels, resolution, _ = shape or sample_shape(cfg)
    d = cfg.diffusion
    out_channels = 2 * channels if d.objective == "iddpm" else channels
    backbone = build_backbone(cfg, num_classes, channels, resolution, out_channels)
    prediction = d.prediction or "eps"
    preconds = {
        "edm": lambda: EDMPrecond(backbone, sigma_data=d.sigma_data),
        "vp": lambda: VPPrecond(backbone, vp_alphas_cumprod(cfg), prediction),
        "iddpm": lambda: IDDPMPrecond(backbone, vp_alphas_cumprod(cfg), prediction),
        "flow": lambda: FlowPrecond(backbone),
    }
    denoiser = preconds[d.objective]()
    return WithLogVar(denoiser) if d.weighting == "learned" else denoiser


def build_objective(cfg: Config):
    """The training loss named by diffusion.objective, with its weighting and offset noise."""
    d = cfg.diffusion
    w = Weighting(d.weighting, d.min_snr_gamma, d.sigma_data)
    prediction = d.prediction or "eps"
    objectives = {
        "edm": lambda: EDMLoss(d.p_mean, d.p_std, d.sigma_data, w, d.offset_noise),
        "vp": lambda: VPLoss(vp_alphas_cumprod(cfg), prediction, w, d.offset_noise),
        "iddpm": lambda: IDDPMLoss(
            vp_alphas_cumprod(cfg), prediction, w, d.offset_noise, d.vlb_weight
        ),
        "flow": lambda: FlowLoss(d.logit_mean, d.logit_std, w, d.offset_noise, d.flow_shift),
    }
    return objectives[d.objective]()


def build_sigmas(cfg: Config, steps: int, schedule: str | None = None) -> torch.Tensor:
    """The sampling σ schedule (n+1 values ending in 0) for `steps` steps.

    karras: Karras et al. 2022 Eq. 5 over [diffusion.sigma_min, diffusion.sigma_max];
    uniform: uniform in t over the VP training timesteps ('trailing'), or in flow time;
    training: all T training timesteps of a VP model (`steps` is ignored).
    """
    d, schedule = cfg.diffusion, schedule or cfg.sample.schedule
    check_schedule(d.objective, schedule)
    if schedule == "karras":
        return karras_sigmas(steps, d.sigma_min, d.sigma_max, cfg.sample.rho)
    if d.objective == "flow":
        return flow_sigmas(steps, d.sigma_max, d.flow_shift)
    table = vp_sigmas(vp_alphas_cumprod(cfg))
    return uniform_sigmas(table, steps) if schedule == "uniform" else training_sigmas(table)


def sampler_options(sampler: str, eta: float | None = None, s_churn: float | None = None) -> dict:
    """Keyword options for the named sampler; an option it does not take is a ConfigError."""
    if eta is not None and eta != 0.0 and sampler != "ddim":
        raise ConfigError(f"eta = {eta} is only used by the 'ddim' sampler, not {sampler!r}")
    if s_churn is not None and sampler != "edm-stochastic":
        raise ConfigError(f"s_churn = {s_churn} is only used by 'edm-stochastic', not {sampler!r}")
    if sampler == "ddim":
        return {"eta": eta or 0.0}
    if sampler == "edm-stochastic" and s_churn is not None:
        return {"s_churn": s_churn}
    return {}


def sampling_kwargs(cfg: Config, steps: int | None = None) -> dict:
    """`generate` keywords for the configured sampler: name, sigmas, options, guidance interval."""
    sc = cfg.sample
    return {
        "sampler": sc.sampler,
        "sigmas": build_sigmas(cfg, steps or sc.steps),
        "sampler_options": sampler_options(
            sc.sampler, sc.eta, sc.s_churn if sc.sampler == "edm-stochastic" else None
        ),
        "guidance_interval": sc.guidance_interval,
    }


def check_schedule(objective: str, schedule: str) -> None:
    """A schedule the objective defines: 'uniform' needs timesteps, 'training' discrete ones."""
    allowed = {
        "karras": ("edm", "vp", "iddpm", "flow"),
        "uniform": ("vp", "iddpm", "flow"),
        "training": ("vp", "iddpm"),
    }
    if schedule not in allowed:
        raise ConfigError(f"sample.schedule = {schedule!r}: allowed {', '.join(allowed)}")
    if objective not in allowed[schedule]:
        raise ConfigError(
            f"sample.schedule = {schedule!r} needs diffusion.objective "
            f"{' or '.join(allowed[schedule])} (it is {objective!r}); use sample.schedule=karras"
        )
