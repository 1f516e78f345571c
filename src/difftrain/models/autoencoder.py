"""KL-regularised autoencoder (diffusers `AutoencoderKL`; Rombach et al. 2022): presets, save, load.

The diffusers format is the exchange format: a trained run writes `RUN/autoencoder/` with
`AutoencoderKL.save_pretrained(..., safe_serialization=True)`, and `load_autoencoder` reads that,
a plain diffusers AutoencoderKL directory, or a pipeline directory with a `vae/` subfolder.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import nn

from difftrain.config import ConfigError

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' safetensors file name
RUN_SUBDIR = "autoencoder"  # where an autoencoder run keeps its diffusers export


@dataclass(frozen=True)
class AEPreset:
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    latent_channels: int = 4
    norm_num_groups: int = 32
    mid_block_attention: bool = True

    @property
    def downsample_factor(self) -> int:
        """Image side / latent side: one halving per level after the first."""
        return 2 ** (len(self.block_out_channels) - 1)


AE_PRESETS: dict[str, AEPreset] = {
    # ×4, narrow enough to train on a 2-core CPU in minutes (the emoji demo's first stage).
    "vae-mini": AEPreset((16, 32, 64), 1, norm_num_groups=8),
    # ×4, seconds-long tests and 16-64 px CPU runs.
    "vae-tiny": AEPreset((32, 64, 64), 1, norm_num_groups=32),
    # ×4, the 64×64 emoji demo (64×64×3 → 16×16×4, the LDM "f=4" setting).
    "vae-small": AEPreset((64, 128, 128), 2, norm_num_groups=32),
    # ×8 like Stable Diffusion's VAE but narrower; for a GPU.
    "vae-base": AEPreset((128, 256, 256, 256), 2, norm_num_groups=32),
}


def resolve_ae_preset(
    name: str, block_out_channels: list[int] | None = None, layers_per_block: int | None = None
) -> AEPreset:
    """The named autoencoder preset with explicit overrides; ConfigError names the choices."""
    if name not in AE_PRESETS:
        raise ConfigError(
            f"model.preset = {name!r}: not an autoencoder preset (allowed: {', '.join(AE_PRESETS)})"
        )
    p = AE_PRESETS[name]
    if block_out_channels is not None:
        p = replace(p, block_out_channels=tuple(block_out_channels))
    if layers_per_block is not None:
        p = replace(p, layers_per_block=layers_per_block)
    return p


def build_autoencoder(preset: AEPreset, channels: int, resolution: int) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL for `channels`-channel images of side `resolution`."""
    n = len(preset.block_out_channels)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(preset.block_out_channels),
        layers_per_block=preset.layers_per_block,
        latent_channels=preset.latent_channels,
        norm_num_groups=preset.norm_num_groups,
        sample_size=resolution,
        scaling_factor=1.0,  # replaced by 1/std of the training latents at every export
        mid_block_add_attention=preset.mid_block_attention,
    )


class KLAutoencoder(nn.Module):
    """AutoencoderKL whose forward returns what training needs: reconstruction and posterior.

    A forward (rather than calls to encode/decode) is what DDP wraps. `noise` (shape
    `latent_shape(x)`) draws z = mean + std·noise; None decodes the posterior mean. Returns
    (reconstruction B×C×H×W, posterior mean and log-variance B×c×h×w).
    """

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        post = self.vae.encode(x).latent_dist
        z = post.mean if noise is None else post.mean + post.std * noise.to(post.mean.dtype)
        return self.vae.decode(z).sample, post.mean, post.logvar

    def latent_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """Shape of the latents of images `x` (B, c, H/f, W/f)."""
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (x.shape[0], self.vae.config.latent_channels, x.shape[2] // f, x.shape[3] // f)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output convolution weight: where the adaptive GAN weight is measured."""
        return self.vae.decoder.conv_out.weight


@torch.no_grad()
def latent_scaling_factor(
    vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64, seed: int = 0
) -> float:
    """1 / std of latents z ~ q(z|x) over `images` (float [-1, 1]), as in Rombach et al. §4.3.2.

    Latents are posterior samples from a fixed seed (as LDM's `scale_by_std`), so the same
    weights and images always give the same factor.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(vae.parameters()).device
    zs = []
    for i in range(0, len(images), batch_size):
        post = vae.encode(images[i : i + batch_size].to(device)).latent_dist
        noise = torch.randn(post.mean.shape, generator=gen).to(device)
        zs.append((post.mean + post.std * noise).float().cpu())
    std = torch.cat(zs).std().item()
    if not std > 0:
        raise ValueError(f"latent std is {std}; cannot compute a scaling factor")
    return 1.0 / std


def save_autoencoder(vae: AutoencoderKL, out_dir: Path, scaling_factor: float) -> Path:
    """Write `vae` in diffusers format with `scaling_factor` in config.json, replacing atomically."""
    out_dir = Path(out_dir)
    vae.register_to_config(scaling_factor=float(scaling_factor))
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        vae.save_pretrained(tmp, safe_serialization=True)
        if out_dir.exists():
            os.replace(out_dir, old)  # a directory cannot be replaced in one rename
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def find_autoencoder_dir(path: str | Path) -> Path:
    """The diffusers AutoencoderKL directory meant by `path` (run dir, vae dir or pipeline dir)."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(
            f"{root}: no such directory; pass a difftrain autoencoder run directory, a diffusers "
            "AutoencoderKL directory, or a pipeline directory with a vae/ subfolder"
        )
    for cand in (root / RUN_SUBDIR, root, root / "vae"):
        if (cand / "config.json").is_file():
            if not _inside(cand / "config.json", root):
                raise ConfigError(f"{cand}: resolves outside {root}; refusing to follow it")
            return cand
    raise ConfigError(
        f"{root}: no autoencoder found (looked for {RUN_SUBDIR}/config.json, config.json and "
        "vae/config.json); train one with model.kind=autoencoder or pass a diffusers AutoencoderKL dir"
    )


def load_autoencoder(path: str | Path) -> AutoencoderKL:
    """Load an AutoencoderKL (safetensors only) from a run dir, a vae dir or a pipeline dir."""
    d = find_autoencoder_dir(path)
    try:
        config = json.loads((d / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{d / 'config.json'}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{d / 'config.json'}: expected a JSON object")
    cls = config.get("_class_name")
    if cls != "AutoencoderKL":
        raise ConfigError(f"{d / 'config.json'}: _class_name is {cls!r}, expected 'AutoencoderKL'")
    weights = d / WEIGHTS_NAME
    if not weights.is_file():
        raise ConfigError(
            f"{d}: no {WEIGHTS_NAME} (only safetensors weights are read, never pickled .bin files); "
            "re-save it with save_pretrained(..., safe_serialization=True)"
        )
    if not _inside(weights, d):
        raise ConfigError(f"{weights}: resolves outside {d}; refusing to follow it")
    try:
        vae = AutoencoderKL.from_pretrained(d, use_safetensors=True, local_files_only=True)
    except Exception as err:  # diffusers raises OSError/ValueError/safetensors errors here
        raise ConfigError(
            f"{d}: cannot load the AutoencoderKL ({type(err).__name__}: {err})"
        ) from None
    return vae.eval()
