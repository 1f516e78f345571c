"""Named U-Net size presets (the registry the config's `model.preset` picks from)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class UNetPreset:
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention_levels: tuple[int, ...]  # level 0 = full resolution
    attention_head_dim: int = 32
    norm_num_groups: int = 16

    @property
    def downsample_factor(self) -> int:
        """The input side must be divisible by this (one halving per level after the first)."""
        return 2 ** (len(self.block_out_channels) - 1)


PRESETS: dict[str, UNetPreset] = {
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
}


def resolve_preset(
    name: str,
    block_out_channels: list[int] | None = None,
    layers_per_block: int | None = None,
    attention_levels: list[int] | None = None,
) -> UNetPreset:
    """The named preset with any explicit overrides applied; KeyError names the choices."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    p = PRESETS[name]
    if block_out_channels is not None:
        p = replace(p, block_out_channels=tuple(block_out_channels))
    if layers_per_block is not None:
        p = replace(p, layers_per_block=layers_per_block)
    if attention_levels is not None:
        p = replace(p, attention_levels=tuple(attention_levels))
    return p
