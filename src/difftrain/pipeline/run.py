"""Open a run directory: its resolved config and the weights of a checkpoint, ready to sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from difftrain.config import Config, ConfigError, load_config
from difftrain.pipeline.build import build_denoiser
from difftrain.pipeline.checkpoint import CheckpointError, latest_good_checkpoint, read_checkpoint
from difftrain.pipeline.latent import Latents, load_autoencoder, run_autoencoder_dir, sample_shape
from difftrain.pipeline.text import TextConditioning


@dataclass
class LoadedRun:
    config: Config
    denoiser: nn.Module  # D(x, sigma, cond) for the run's objective
    checkpoint: Path
    state: dict
    autoencoder: nn.Module | None = None  # latent runs: the AutoencoderKL; None for pixels
    sample_shape: tuple[int, int, int] = ()  # (C, H, W) the denoiser works in
    latents: Latents | None = None
    text: TextConditioning | None = None  # text runs: the tokenizer (prompts → token ids)

    def encode_prompts(
        self, prompts: list[str], negative: str | None, num: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids num×L, null row 1×L: the negative prompt or "") for a text-conditioned run."""
        if self.text is None:
            raise ConfigError("prompt: this model is not text-conditioned; drop the prompt")
        return self.text.request(prompts, negative, num)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Denoiser output → pixels in [-1, 1]: identity for pixel models, decoded for latent."""
        return x if self.latents is None else self.latents.to_images(x)

    def to(self, device) -> LoadedRun:
        """Move the denoiser (and autoencoder) to `device`."""
        self.denoiser.to(device)
        if self.autoencoder is not None:
            self.autoencoder.to(device)
        return self

    @property
    def num_classes(self) -> int | None:
        if self.text is not None:
            return None  # conditioned on prompts; the data's classes are not the model's input
        return self.state["data"]["num_classes"]

    @property
    def class_names(self) -> list[str] | None:
        return self.state["data"]["class_names"]


def load_run(
    run_dir: str | Path, weights: str = "ema", checkpoint: str | Path | None = None
) -> LoadedRun:
    """Load config + denoiser from a run directory. `weights` is 'ema' or 'model'."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{run_dir}: not a run directory (no config.yaml); pass the train.run_dir"
        )
    cfg = load_config(run_dir / "config.yaml")
    if cfg.model.kind == "autoencoder":
        raise ConfigError(
            f"{run_dir}: an autoencoder run (model.kind = autoencoder) has no denoiser to sample; "
            f"use it as latent.autoencoder of a diffusion run (it reads {run_dir / 'autoencoder'})"
        )
    path = Path(checkpoint) if checkpoint else latest_good_checkpoint(run_dir / "checkpoints")
    if path is None:
        raise CheckpointError(f"{run_dir}: no complete checkpoint under checkpoints/; train first")
    tensors, state = read_checkpoint(path, [weights])
    if weights not in tensors:
        raise CheckpointError(f"{path}: has no {weights}.safetensors")
    shape = sample_shape(cfg, run_dir)  # a latent run reads its own autoencoder copy
    denoiser = build_denoiser(cfg, state["data"]["num_classes"], shape)
    denoiser.load_state_dict(tensors[weights])
    denoiser.eval()
    vae = latents = None
    if cfg.latent.autoencoder is not None:
        vae = load_autoencoder(run_autoencoder_dir(cfg, run_dir))
        latents = Latents.for_config(cfg, vae)
    text = TextConditioning.open(cfg, run_dir)  # BPE: the run's text/tokenizer.json
    return LoadedRun(cfg, denoiser, path, state, vae, shape, latents, text)
