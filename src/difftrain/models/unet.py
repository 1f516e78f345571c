"""U-Net backbone: diffusers' UNet2DModel with an optional class embedding and a null class."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from torch import nn

from difftrain.models.presets import UNetPreset


class UNetBackbone(nn.Module):
    """F(x, noise_cond, class_labels) -> same-shape output. Knows nothing of σ math.

    With `num_classes` set, labels 0..num_classes-1 are real classes and `num_classes` itself is
    the null class used for classifier-free guidance (and when `class_labels` is None).
    """

    def __init__(
        self,
        preset: UNetPreset,
        resolution: int,
        channels: int,
        num_classes: int | None = None,
        dropout: float = 0.0,
        out_channels: int | None = None,
    ):
        super().__init__()
        n = len(preset.block_out_channels)
        attn = set(preset.attention_levels)
        bad = sorted(a for a in attn if not 0 <= a < n)
        if bad:
            raise ValueError(f"attention_levels {bad} out of range for {n} levels (0..{n - 1})")
        self.num_classes = num_classes
        self.config = {
            "sample_size": resolution,
            "in_channels": channels,
            "out_channels": out_channels or channels,  # 2x for a learned variance (IDDPM)
            "block_out_channels": tuple(preset.block_out_channels),
            "layers_per_block": preset.layers_per_block,
            "down_block_types": tuple(
                "AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(n)
            ),
            "up_block_types": tuple(
                "AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(n))
            ),
            "attention_head_dim": preset.attention_head_dim,
            "norm_num_groups": preset.norm_num_groups,
            "dropout": dropout,
            "num_class_embeds": None if num_classes is None else num_classes + 1,
        }
        self.unet = UNet2DModel(**self.config)

    @property
    def null_class(self) -> int | None:
        return self.num_classes

    def forward(
        self, x: torch.Tensor, noise_cond: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.num_classes is not None and class_labels is None:
            class_labels = torch.full(
                (x.shape[0],), self.num_classes, device=x.device, dtype=torch.long
            )
        if self.num_classes is None:
            class_labels = None
        return self.unet(x, noise_cond, class_labels=class_labels).sample
