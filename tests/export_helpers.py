"""Real run directories for the export tests: tiny config + randomly initialised weights,
written by the same checkpoint writer training uses (training would only change the numbers)."""

from __future__ import annotations

from pathlib import Path

import torch

from difftrain.config import dump_config, load_config
from difftrain.pipeline.build import build_denoiser
from difftrain.pipeline.checkpoint import write_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def make_run(run_dir: Path, num_classes: int | None = None, seed: int = 0, **sets) -> Path:
    """config.yaml + checkpoints/step-0000001 (model = ema) for the tiny 8×8 digits config."""
    overrides = [f"train.run_dir={run_dir}"] + [f"{k}={v}" for k, v in sets.items()]
    cfg = load_config(TINY, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    torch.manual_seed(seed)
    den = build_denoiser(cfg, num_classes)
    with torch.no_grad():  # diffusers zero-inits nothing here, but make outputs clearly non-trivial
        for p in den.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model = den.state_dict()
    ema = {
        k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.items()
    }
    names = [f"class {i}" for i in range(num_classes)] if num_classes else None
    state = {"step": 1, "data": {"num_classes": num_classes, "class_names": names}}
    write_checkpoint(run_dir / "checkpoints", 1, {"model": model, "ema": ema}, state)
    return run_dir


def make_text_latent_run(
    run_dir: Path,
    tokenizer: str = "byte",
    seed: int = 0,
    text: bool = True,
    latent: bool = True,
    shift_factor: float | None = None,
    **sets,
) -> Path:
    """A text-to-image latent run: tiny RGB AutoencoderKL (16 px → 4×8×8), cross-attention
    U-Net and a scratch CLIP text encoder; BPE runs get a tokenizer trained on two captions."""
    from diffusers import AutoencoderKL

    from difftrain.models.text import BPETokenizer
    from difftrain.pipeline.latent import sample_shape
    from difftrain.pipeline.text import save_tokenizer

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
        scaling_factor=0.7,
        shift_factor=shift_factor,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(run_dir / "autoencoder", safe_serialization=True)
    overrides = {
        "train.run_dir": run_dir,
        "data.resolution": 16,
        "data.channels": 3,
        "model.preset": "unet-cond-tiny",
        "latent.autoencoder": run_dir / "autoencoder",
        "text.encoder": "scratch",
        "text.tokenizer": tokenizer,
        "text.vocab_size": 300,
        "text.width": 32,
        "text.heads": 2,
        "text.layers": 1,
        "text.max_length": 8,
        **sets,
    }
    if not latent:
        del overrides["latent.autoencoder"]
    if not text:
        overrides = {k: v for k, v in overrides.items() if not k.startswith("text.")}
        overrides["model.preset"] = "unet-tiny"
    cfg = load_config(TINY, [f"{k}={v}" for k, v in overrides.items()])
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    if text and tokenizer == "bpe":
        save_tokenizer(BPETokenizer.train(["red square", "blue disc"] * 4, 300, 8), run_dir)
    den = build_denoiser(cfg, None, sample_shape(cfg, run_dir))
    with torch.no_grad():
        for p in den.parameters():
            p.add_(0.02 * torch.randn_like(p))
    weights = den.state_dict()
    state = {"step": 1, "data": {"num_classes": None, "class_names": None}}
    write_checkpoint(run_dir / "checkpoints", 1, {"model": weights, "ema": weights}, state)
    return run_dir
