"""A tiny randomly initialised Stable Diffusion 1.x-layout pipeline saved in diffusers format
(unet/, vae/, text_encoder/, tokenizer/, scheduler/), plus a folder of instance images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ["a", "photo", "of", "sks", "dog", "cat", "red", "blue", "the", "in"]


def write_clip_tokenizer(out: Path) -> None:
    """A CLIPTokenizer from a tiny vocabulary: every character, the words above, end-of-word."""
    import torch  # noqa: F401  (transformers needs it imported first in some versions)
    from transformers import CLIPTokenizer

    out.mkdir(parents=True, exist_ok=True)
    chars = sorted({c for w in WORDS for c in w} | set("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    merges, seen = [], set(vocab)
    for w in WORDS:  # merge left to right: "p h" → "ph", "ph o" → "pho", …, final "</w>" form
        cur = w[0]
        for i, c in enumerate(w[1:], start=1):
            tail = c + "</w>" if i == len(w) - 1 else c
            merges.append(f"{cur} {tail}")
            cur = cur + tail
            if cur not in seen:
                vocab.append(cur)
                seen.add(cur)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=77)
    tok.save_pretrained(out)


def make_tiny_sd(out: Path, prediction: str = "epsilon", seed: int = 0) -> Path:
    """Save a tiny SD pipeline (32 px images → 16 px latents) at `out`; returns `out`."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tok_dir = out.with_name(out.name + "-tokenizer-src")
    write_clip_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type=prediction,
        clip_sample=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def write_images(folder: Path, n: int, seed: int = 0, size: int = 32) -> Path:
    """`n` small RGB PNGs (a colored square on noise) with caption side-cars."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        img[8:24, 8:24] = (200, 40 + 20 * i % 200, 40)
        Image.fromarray(img).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text("a photo of a red dog")
    return folder
