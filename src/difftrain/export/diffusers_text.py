"""Text-to-image latent runs → a `StableDiffusionPipeline` directory (unet, vae, text_encoder,
tokenizer, scheduler), loadable by unmodified `DiffusionPipeline.from_pretrained`.

The pieces are already diffusers/transformers classes (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel), so their weights copy over. The tokenizer becomes a transformers
`PreTrainedTokenizerFast` that yields the same ids as difftrain's: `[bos] tokens [eos] pad…`
(byte and BPE tokenizers), or the pretrained tokenizer itself. Guidance: the pipeline's
ε-space CFG equals difftrain's D-space CFG (D is affine in the network output at fixed x, σ),
and its unconditional branch is the empty (or negative) prompt, difftrain's null condition.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, StableDiffusionPipeline

from difftrain.config import ConfigError
from difftrain.export.diffusers_fmt import make_scheduler, write_card
from difftrain.export.source import plain_denoiser
from difftrain.export.tokenizer import framed_tokenizer
from difftrain.models.text import SPECIAL_TOKENS, PretrainedTokenizer
from difftrain.pipeline.run import LoadedRun


def is_text_latent(run: LoadedRun) -> bool:
    """A text-conditioned cross-attention U-Net on an autoencoder's latents."""
    backbone = plain_denoiser(run).backbone
    return (
        getattr(run, "text", None) is not None
        and getattr(run, "latents", None) is not None
        and type(backbone).__name__ == "CondUNetBackbone"
    )


def check_text_exportable(run: LoadedRun) -> None:
    """Refuse what StableDiffusionPipeline cannot reproduce, naming why."""
    d = run.config.diffusion
    if d.objective == "flow":
        raise ConfigError(
            "text-to-image flow models cannot be exported to diffusers: StableDiffusionPipeline "
            "calls scale_model_input, which FlowMatchEulerDiscreteScheduler does not have"
        )
    if run.latents.shift:
        raise ConfigError(
            f"the autoencoder has shift_factor {run.latents.shift}: StableDiffusionPipeline "
            "decodes latents / scaling_factor only, so it would decode other images"
        )


def hf_tokenizer(run: LoadedRun):
    """A transformers tokenizer giving the run's token ids at `model_max_length`."""
    from transformers import PreTrainedTokenizerFast

    tok = run.text.tokenizer
    if isinstance(tok, PretrainedTokenizer):
        tok.tokenizer.model_max_length = tok.max_length
        return tok.tokenizer
    pad, bos, eos = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=framed_tokenizer(tok),
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        model_max_length=tok.max_length,
    )


def export_vae(run: LoadedRun) -> AutoencoderKL:
    """A copy of the run's autoencoder whose scaling_factor is the one the run trained with."""
    vae = run.autoencoder
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    config["scaling_factor"] = run.latents.scale
    out = AutoencoderKL.from_config(config)
    out.load_state_dict(vae.state_dict())
    return out.eval()


def export_cond_unet(run: LoadedRun):
    """A copy of the cross-attention U-Net (iddpm: without the variance channels)."""
    unet = plain_denoiser(run).backbone.unet
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    state = unet.state_dict()
    if run.config.diffusion.objective == "iddpm":
        c = config["out_channels"] // 2
        config["out_channels"] = c
        state = dict(state, **{k: state[k][:c] for k in ("conv_out.weight", "conv_out.bias")})
    out = type(unet).from_config(config)
    out.load_state_dict(state)
    return out.eval()


def write_stable_diffusion(run: LoadedRun, stage: Path) -> str:
    """Save a StableDiffusionPipeline (no safety checker) into `stage`."""
    check_text_exportable(run)
    pipe = StableDiffusionPipeline(
        vae=export_vae(run),
        text_encoder=plain_denoiser(run).backbone.text.model,
        tokenizer=hf_tokenizer(run),
        unet=export_cond_unet(run),
        scheduler=make_scheduler(run.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(stage, safe_serialization=True)
    write_card(run, stage, type(pipe).__name__)
    return type(pipe).__name__
