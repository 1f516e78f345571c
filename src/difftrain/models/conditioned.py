"""Backbones that own their condition's encoder: cross-attention U-Net and DiT (class or text).

Each keeps the backbone contract F(x, noise_cond, cond) -> same-shape output. For text models
`cond` is token ids (B×L int64; None = the empty prompt) and the backbone owns the TextEncoder,
so the one loop, EMA and checkpoints train and store both together.
"""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel
from torch import nn

from difftrain.models.presets import DiTPreset, UNetPreset
from difftrain.models.text import TextEncoder


class CondUNetBackbone(nn.Module):
    """diffusers UNet2DConditionModel whose attention levels cross-attend to the text states."""

    def __init__(
        self,
        preset: UNetPreset,
        resolution: int,
        channels: int,
        text: TextEncoder,
        dropout: float = 0.0,
        out_channels: int | None = None,
        pooled: bool = False,
    ):
        super().__init__()
        n = len(preset.block_out_channels)
        # pooled: Imagen's pooled text embedding added to the timestep embedding (DeepFloyd IF's
        # attention pooling), which reaches every ResNet block, at every resolution.
        pooling = {"addition_embed_type": "text", "addition_embed_type_num_heads": text.heads}
        attn = set(preset.attention_levels)
        self.text = text
        self.unet = UNet2DConditionModel(
            sample_size=resolution,
            in_channels=channels,
            out_channels=out_channels or channels,
            block_out_channels=tuple(preset.block_out_channels),
            layers_per_block=preset.layers_per_block,
            down_block_types=tuple(
                "CrossAttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(n)
            ),
            up_block_types=tuple(
                "CrossAttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(n))
            ),
            mid_block_type="UNetMidBlock2DCrossAttn",
            attention_head_dim=preset.attention_head_dim,
            norm_num_groups=preset.norm_num_groups,
            cross_attention_dim=text.width,
            dropout=dropout,
            **(pooling if pooled else {}),
        )

    def forward(
        self, x: torch.Tensor, noise_cond: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        states = self.text(cond, x.shape[0])  # B×L×width
        return self.unet(x, noise_cond, encoder_hidden_states=states).sample


def _dit_kwargs(preset: DiTPreset, resolution: int, channels: int, out_channels: int | None):
    return {
        "num_attention_heads": preset.heads,
        "attention_head_dim": preset.width // preset.heads,
        "in_channels": channels,
        "out_channels": out_channels or channels,
        "num_layers": preset.depth,
        "sample_size": resolution,
        "patch_size": preset.patch_size,
    }


class DiTBackbone(nn.Module):
    """DiT with adaLN-Zero (Peebles & Xie 2023) via diffusers DiTTransformer2DModel.

    With `num_classes` set, labels 0..num_classes-1 are real classes and `num_classes` is the
    null class for classifier-free guidance (also used when labels are None). Unconditional
    models embed one constant label.
    """

    def __init__(
        self,
        preset: DiTPreset,
        resolution: int,
        channels: int,
        num_classes: int | None = None,
        dropout: float = 0.0,
        out_channels: int | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.dit = DiTTransformer2DModel(
            **_dit_kwargs(preset, resolution, channels, out_channels),
            dropout=dropout,
            num_embeds_ada_norm=1 if num_classes is None else num_classes + 1,
        )
        # diffusers drops labels at random inside the model (p = 0.1); the loop already does
        # caption/label dropout from its own seeded generator, so switch the hidden one off.
        for m in self.dit.modules():
            if hasattr(m, "class_embedder"):
                m.class_embedder.dropout_prob = 0.0

    @property
    def null_class(self) -> int | None:
        return self.num_classes

    def forward(
        self, x: torch.Tensor, noise_cond: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.num_classes is None or class_labels is None:
            fill = 0 if self.num_classes is None else self.num_classes
            class_labels = torch.full((x.shape[0],), fill, device=x.device, dtype=torch.long)
        t = noise_cond.to(x.dtype).expand(x.shape[0])
        return self.dit(x, timestep=t, class_labels=class_labels).sample


class TextDiTBackbone(nn.Module):
    """A DiT with cross-attention to text states: diffusers PixArtTransformer2DModel (Chen 2023)."""

    def __init__(
        self,
        preset: DiTPreset,
        resolution: int,
        channels: int,
        text: TextEncoder,
        dropout: float = 0.0,
        out_channels: int | None = None,
    ):
        super().__init__()
        self.text = text
        self.dit = PixArtTransformer2DModel(
            **_dit_kwargs(preset, resolution, channels, out_channels),
            dropout=dropout,
            cross_attention_dim=preset.width,  # text states are projected to the width first
            caption_channels=text.width,
            use_additional_conditions=False,  # no resolution/aspect-ratio embedding
            interpolation_scale=1,
        )

    def forward(
        self, x: torch.Tensor, noise_cond: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        states = self.text(cond, x.shape[0])  # B×L×width
        t = noise_cond.to(x.dtype).expand(x.shape[0])
        return self.dit(
            x,
            encoder_hidden_states=states,
            timestep=t,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        ).sample
