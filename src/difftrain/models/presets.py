"""Named backbone presets (the registry the config's `model.preset` picks from).

`unet-*`: diffusers UNet2DModel (unconditional or class-conditional); `unet-cond-*`: diffusers
UNet2DConditionModel with cross-attention to a text encoder; `dit-*`: transformers on patches
(Peebles & Xie 2023), class-conditional (DiTTransformer2DModel) or text-conditional with
cross-attention (PixArtTransformer2DModel), chosen by whether the config has text conditioning.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class UNetPreset:
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention_levels: tuple[int, ...]  # level 0 = full resolution
    attention_head_dim: int = 32
    norm_num_groups: int = 16
    cross_attention: bool = False  # UNet2DConditionModel: attention levels also attend to text

    @property
    def downsample_factor(self) -> int:
        """The input side must be divisible by this (one halving per level after the first)."""
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class DiTPreset:
    width: int  # hidden size = heads × head dim
    depth: int
    heads: int
    patch_size: int = 2

    @property
    def downsample_factor(self) -> int:
        """The input side must be divisible by the patch size."""
        return self.patch_size


@dataclass(frozen=True)
class Seq1DPreset:
    """A 1-D residual network for sequences (models/seq1d.py)."""

    width: int  # channels of every residual block
    blocks: int  # residual blocks; dilation cycles 1, 2, 4, 8
    kernel: int = 3

    @property
    def downsample_factor(self) -> int:
        """No downsampling: any window length works."""
        return 1


PRESETS: dict[str, UNetPreset | DiTPreset | Seq1DPreset] = {
    # 8x8 digits in seconds; smoke tests.
    "unet-tiny": UNetPreset((32, 64), 1, (1,), attention_head_dim=32, norm_num_groups=8),
    # 28-32 px grayscale on a laptop CPU (the Fashion-MNIST demo).
    "unet-small": UNetPreset((32, 64, 128), 1, (2,), attention_head_dim=32, norm_num_groups=16),
    # 32-64 px RGB on one GPU.
    "unet-base": UNetPreset(
        (128, 256, 256, 256), 2, (1, 2), attention_head_dim=64, norm_num_groups=32
    ),
    # 64 px and up.
    "unet-large": UNetPreset(
        (192, 384, 576, 768), 3, (1, 2, 3), attention_head_dim=64, norm_num_groups=32
    ),
    # Cross-attention U-Nets for text conditioning (a mid block with cross-attention as well).
    "unet-cond-tiny": UNetPreset((32, 64), 1, (1,), 32, 8, cross_attention=True),
    # 16×16 latents of 64 px images, or 32 px pixels, on a laptop CPU (the emoji demo).
    "unet-cond-small": UNetPreset((64, 128, 192), 1, (1, 2), 32, 32, cross_attention=True),
    "unet-cond-base": UNetPreset((128, 256, 384), 2, (1, 2), 64, 32, cross_attention=True),
    # DiT sizes of Peebles & Xie 2023 Table 1 (S, B), and a tiny one for CPUs and tests.
    "dit-tiny": DiTPreset(width=192, depth=6, heads=3),
    "dit-s": DiTPreset(width=384, depth=12, heads=6),
    "dit-b": DiTPreset(width=768, depth=12, heads=12),
    # 1-D sequences (data.source = sequence): dilated residual convolutions.
    "seq-tiny": Seq1DPreset(width=32, blocks=4),
    "seq-small": Seq1DPreset(width=64, blocks=8),
}


def resolve_preset(
    name: str,
    block_out_channels: list[int] | None = None,
    layers_per_block: int | None = None,
    attention_levels: list[int] | None = None,
) -> UNetPreset | DiTPreset:
    """The named preset with any explicit overrides applied; KeyError names the choices."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    p = PRESETS[name]
    if isinstance(p, DiTPreset | Seq1DPreset):
        if any(v is not None for v in (block_out_channels, layers_per_block, attention_levels)):
            raise ValueError(
                f"model.preset {name!r} is not a U-Net: block_out_channels, layers_per_block "
                "and attention_levels only apply to unet-* presets; remove them"
            )
        return p
    if block_out_channels is not None:
        p = replace(p, block_out_channels=tuple(block_out_channels))
    if layers_per_block is not None:
        p = replace(p, layers_per_block=layers_per_block)
    if attention_levels is not None:
        p = replace(p, attention_levels=tuple(attention_levels))
    return p
