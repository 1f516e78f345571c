"""`--format diffusers`: a directory that unmodified `DiffusionPipeline.from_pretrained` loads.

The U-Net is diffusers' own `UNet2DModel`, so its weights copy over unchanged; what must match
is the preconditioning, which each objective maps onto a stock diffusers scheduler:

| objective | pipeline (unconditional / class-conditional) | scheduler | difftrain equivalent |
| --- | --- | --- | --- |
| vp, iddpm | `DDIMPipeline` / `ConsistencyModelPipeline` | `DDIMScheduler` (the run's β, prediction type, trailing spacing) | `ddim`, `schedule=uniform` |
| edm | `ConsistencyModelPipeline` (both) | `EDMEulerScheduler` (σ_data, Karras σ, `prediction_type="epsilon"` = EDM's c_out) | `euler`, `schedule=karras` |
| flow | `DDPMPipeline` / refused | `FlowMatchEulerDiscreteScheduler` (t·1000 timesteps) | `euler` over t = 1 … 1/T |
| text-to-image latent (vp, iddpm, edm) | `StableDiffusionPipeline` | as above | the same, decoded (see diffusers_text.py) |

Why these pipelines: `DDPMPipeline`/`DDIMPipeline` never call `scale_model_input` nor scale the
initial noise, so they cannot run EDM's c_in or σ_max-scaled noise; `ConsistencyModelPipeline`
is diffusers' one generic unconditional/class-conditional `UNet2DModel` loop that does both
(and passes `class_labels`). It calls `scale_model_input`, which `FlowMatchEulerDiscreteScheduler`
lacks, so a class-conditional flow model has no stock pipeline and is refused. iddpm's learned
variance channels are dropped (difftrain samples iddpm through D, which ignores them).
Class-conditional pipelines have no classifier-free guidance (guidance = 1); StableDiffusionPipeline
has it. DDIM's trailing steps equal difftrain's only when `steps` divides T: otherwise diffusers
steps to t − T//steps, not to the next scheduled timestep. Refused (ConfigError, exit 2): DiT
backbones (DiTPipeline is latent-only with 1000 classes hard-coded), latent models without text,
pixel-space text models, class-conditional flow models. `ConsistencyModelPipeline` defaults to
one step and, without `class_labels`, draws random labels (the null class included): the
README.md written into the export says which arguments reproduce the run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    ConsistencyModelPipeline,
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    EDMEulerScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DModel,
)

from difftrain.config import Config, ConfigError
from difftrain.diffusion import vp_sigmas
from difftrain.export.source import plain_denoiser
from difftrain.models import UNetBackbone
from difftrain.pipeline.build import vp_alphas_cumprod
from difftrain.pipeline.run import LoadedRun
from difftrain.samplers import karras_sigmas, uniform_sigmas

BETA_NAMES = {"linear": "linear", "scaled-linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
PREDICTION_NAMES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
FLOW_TIME_SCALE = 1000  # FlowPrecond's c_noise = 1000·t = diffusers' flow timesteps


def make_scheduler(cfg: Config):
    """The stock diffusers scheduler whose update reproduces the run's preconditioning."""
    d = cfg.diffusion
    if d.objective in ("vp", "iddpm"):
        return DDIMScheduler(
            num_train_timesteps=d.num_train_timesteps,
            beta_schedule=BETA_NAMES[d.beta_schedule],
            beta_start=d.beta_start,
            beta_end=d.beta_end,
            rescale_betas_zero_snr=d.zero_terminal_snr,
            prediction_type=PREDICTION_NAMES[d.prediction or "eps"],
            clip_sample=False,
            set_alpha_to_one=True,  # the last step lands on x0̂ (σ = 0), as difftrain's does
            steps_offset=1,  # only 'leading' spacing reads it; 1 avoids a diffusers warning
            timestep_spacing="trailing",
        )
    if d.objective == "edm":
        return EDMEulerScheduler(
            sigma_min=d.sigma_min,
            sigma_max=d.sigma_max,
            sigma_data=d.sigma_data,
            sigma_schedule="karras",
            rho=cfg.sample.rho,
            prediction_type="epsilon",  # c_out = σ·σ_d/√(σ²+σ_d²): EDM's Table 1
            final_sigmas_type="zero",
        )
    if d.objective == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=FLOW_TIME_SCALE, shift=1.0)
    raise ConfigError(f"diffusion.objective = {d.objective!r}: no diffusers mapping")


def matching_sigmas(cfg: Config, steps: int) -> torch.Tensor:
    """The difftrain σ schedule (n+1 values) the exported scheduler follows for `steps` steps.

    Flow starts at t = 1 (σ = ∞), which σ-space cannot hold; its first σ is t = 1 − 1e-4.
    """
    d = cfg.diffusion
    if d.objective in ("vp", "iddpm"):
        return uniform_sigmas(vp_sigmas(vp_alphas_cumprod(cfg)), steps, "trailing")
    if d.objective == "edm":
        return karras_sigmas(steps, d.sigma_min, d.sigma_max, cfg.sample.rho)
    t = torch.linspace(1.0, 1.0 / FLOW_TIME_SCALE, steps, dtype=torch.float64)
    t[0] = 1 - 1e-4
    return torch.cat([t / (1 - t), torch.zeros(1, dtype=torch.float64)]).float()


def matching_sampler(cfg: Config) -> str:
    """The difftrain sampler name whose steps the exported scheduler takes."""
    return "ddim" if cfg.diffusion.objective in ("vp", "iddpm") else "euler"


def check_exportable(run: LoadedRun) -> None:
    """Raise ConfigError for a model type no stock diffusers pipeline reproduces."""
    from difftrain.export.diffusers_text import check_text_exportable, is_text_latent

    d = run.config.diffusion
    if is_text_latent(run):
        return check_text_exportable(run)
    backbone = plain_denoiser(run).backbone
    if getattr(run, "text", None) is not None or getattr(run, "autoencoder", None) is not None:
        raise ConfigError(
            "diffusers export covers pixel-space U-Nets (unconditional or class-conditional) and "
            "text-to-image latent U-Nets (StableDiffusionPipeline); a pixel-space text model or a "
            "latent model without text has no stock diffusers pipeline"
        )
    if not isinstance(backbone, UNetBackbone):
        raise ConfigError(
            f"model.preset = {run.config.model.preset!r}: only U-Net backbones export to diffusers "
            "(DiTPipeline is latent-only and hard-codes 1000 classes); use --format onnx"
        )
    if d.objective == "flow" and run.num_classes is not None:
        raise ConfigError(
            "class-conditional flow models cannot be exported to diffusers: the only stock "
            "pipeline that passes class labels (ConsistencyModelPipeline) calls "
            "scale_model_input, which FlowMatchEulerDiscreteScheduler does not have; use "
            "--format onnx or --format safetensors"
        )


def export_unet(run: LoadedRun) -> UNet2DModel:
    """A fresh UNet2DModel with the run's weights (iddpm: without the variance channels)."""
    backbone = plain_denoiser(run).backbone
    config = dict(backbone.config)
    state = backbone.unet.state_dict()
    if run.config.diffusion.objective == "iddpm":
        c = config["out_channels"] // 2  # first half = the ε/v/x0 prediction D uses
        config["out_channels"] = c
        state = dict(state, **{k: state[k][:c] for k in ("conv_out.weight", "conv_out.bias")})
    unet = UNet2DModel(**config)
    unet.load_state_dict(state)
    return unet.eval()


def write_diffusers(run: LoadedRun, stage: Path) -> str:
    """Save the pipeline into `stage`; returns the pipeline class name."""
    from difftrain.export.diffusers_text import is_text_latent, write_stable_diffusion

    check_exportable(run)
    if is_text_latent(run):
        return write_stable_diffusion(run, stage)
    unet, scheduler = export_unet(run), make_scheduler(run.config)
    objective, conditional = run.config.diffusion.objective, run.num_classes is not None
    if objective == "edm" or conditional:
        pipe = ConsistencyModelPipeline(unet=unet, scheduler=scheduler)
    elif objective == "flow":
        pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    else:
        pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.save_pretrained(stage, safe_serialization=True)
    write_card(run, stage, type(pipe).__name__)
    return type(pipe).__name__


def write_card(run: LoadedRun, stage: Path, pipeline: str) -> None:
    """README.md: how to load the export and which arguments reproduce `difftrain sample`."""
    cfg, k = run.config, run.num_classes
    steps = cfg.sample.steps
    if cfg.diffusion.objective in ("vp", "iddpm"):
        steps = next(n for n in range(steps, 0, -1) if cfg.diffusion.num_train_timesteps % n == 0)
    args = [f"num_inference_steps={steps}"]
    if getattr(run, "text", None) is not None:
        args = ['prompt="..."', *args, f"guidance_scale={cfg.sample.guidance}"]
    elif k is not None:
        args = ["class_labels=[0]", *args]
        names = ", ".join(f"{i} = {n}" for i, n in enumerate(run.class_names or []))
    lines = [
        f"# {pipeline} exported by `difftrain export`",
        "",
        "```python",
        "from diffusers import DiffusionPipeline",
        "",
        'pipe = DiffusionPipeline.from_pretrained("THIS_DIRECTORY")',
        f"images = pipe({', '.join(args)}).images",
        "```",
        "",
        f"Objective `{cfg.diffusion.objective}`, scheduler `{type(make_scheduler(cfg)).__name__}`. "
        f"difftrain equivalent: sampler `{matching_sampler(cfg)}` over the scheduler's σ "
        "(see difftrain's README, section Export, for the measured agreement).",
    ]
    if k is not None and getattr(run, "text", None) is None:
        lines += ["", f"Classes: {names}. No classifier-free guidance in this pipeline."]
    (stage / "README.md").write_text("\n".join(lines) + "\n")
