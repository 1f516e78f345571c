"""Tiny randomly initialised SD3, FLUX and SDXL pipelines saved in diffusers format, with local
tokenizers (a CLIP BPE and a T5 unigram vocabulary built here: nothing is downloaded). Sizes
follow diffusers' own pipeline tests (tests/pipelines/stable_diffusion_3, flux, sdxl)."""

from __future__ import annotations

from pathlib import Path

from tests.sd_fixtures import WORDS, write_clip_tokenizer

T5_DIM = 64  # = both CLIP widths side by side (SD3 pads the CLIP states to the T5 width)


def write_t5_tokenizer(out: Path) -> None:
    """A T5 (unigram, `▁` word boundaries, `</s>` appended) tokenizer over the fixture words."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -1.0) for w in WORDS] + [(c, -3.0) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    T5TokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        extra_ids=0, model_max_length=512,
    ).save_pretrained(out)  # fmt: skip


def _clip(tokenizer, projection: bool, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        projection_dim=hidden, hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5(tokenizer):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer), d_model=T5_DIM, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return T5EncoderModel(config)


def _vae(latent_channels: int, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=32, **extra,
    )  # fmt: skip


def _tokenizers(root: Path):
    from transformers import AutoTokenizer, CLIPTokenizer

    write_clip_tokenizer(root / "clip")
    write_t5_tokenizer(root / "t5")
    return CLIPTokenizer.from_pretrained(root / "clip"), AutoTokenizer.from_pretrained(root / "t5")


def make_tiny_sd3(out: Path, seed: int = 0, shift: float = 3.0) -> Path:
    """A tiny StableDiffusion3Pipeline (32 px → 16 px latents, patch 2) saved at `out`."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    clip_tok, t5_tok = _tokenizers(out.with_name(out.name + "-tok"))
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
        joint_attention_dim=T5_DIM, pooled_projection_dim=64,
    )  # fmt: skip
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        vae=_vae(4, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=_clip(clip_tok, True), tokenizer=clip_tok,
        text_encoder_2=_clip(clip_tok, True), tokenizer_2=clip_tok,
        text_encoder_3=_t5(t5_tok), tokenizer_3=t5_tok,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
    )  # fmt: skip
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def make_tiny_flux(out: Path, seed: int = 0, guidance_embeds: bool = False) -> Path:
    """A tiny FluxPipeline (32 px → 16 px latents of 4 channels, packed 2×2) saved at `out`."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    clip_tok, t5_tok = _tokenizers(out.with_name(out.name + "-tok"))
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=T5_DIM, pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8], guidance_embeds=guidance_embeds,
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15
    )
    pipe = FluxPipeline(
        transformer=transformer,
        vae=_vae(4, shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=_clip(clip_tok, False), tokenizer=clip_tok,
        text_encoder_2=_t5(t5_tok), tokenizer_2=t5_tok, scheduler=scheduler,
    )  # fmt: skip
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def make_tiny_sdxl(out: Path, seed: int = 0) -> Path:
    """A tiny StableDiffusionXLPipeline (32 px → 16 px latents, two CLIPs, text_time embedding)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    clip_tok, _ = _tokenizers(out.with_name(out.name + "-tok"))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
        norm_num_groups=8, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
    )  # fmt: skip
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        timestep_spacing="leading", steps_offset=1,
    )  # fmt: skip
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=_vae(4, scaling_factor=0.13025), scheduler=scheduler,
        text_encoder=_clip(clip_tok, False), tokenizer=clip_tok,
        text_encoder_2=_clip(clip_tok, True), tokenizer_2=clip_tok,
    )  # fmt: skip
    pipe.save_pretrained(out, safe_serialization=True)
    return out
