"""A small 1-D residual network for sequences: F(x, noise_cond, cond) on B×C×1×L windows.

Sequences travel through the rest of difftrain as images one pixel high (C×1×L), so the
objectives, preconditioning and samplers (which broadcast σ over B×1×1×1) serve them unchanged;
this backbone squeezes the height away and runs dilated 1-D convolutions over time, each block
modulated by an embedding of the noise level (FiLM; as in WaveNet/DiffWave, Kong et al. 2021).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from difftrain.models.presets import Seq1DPreset


def noise_embedding(noise_cond: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani 2017) of the preconditioner's noise input: B → B×dim."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=noise_cond.device) / half)
    args = noise_cond.float().reshape(-1, 1) * freqs.reshape(1, -1)
    return torch.cat([args.sin(), args.cos()], dim=1)


class ResBlock1D(nn.Module):
    """GroupNorm → SiLU → dilated conv, with a per-channel scale/shift from the noise embedding."""

    def __init__(self, width: int, kernel: int, dilation: int, emb_dim: int, dropout: float):
        super().__init__()
        groups = math.gcd(8, width)
        self.norm1, self.norm2 = nn.GroupNorm(groups, width), nn.GroupNorm(groups, width)
        pad = dilation * (kernel - 1) // 2
        self.conv1 = nn.Conv1d(width, width, kernel, padding=pad, dilation=dilation)
        self.conv2 = nn.Conv1d(width, width, kernel, padding=pad, dilation=dilation)
        self.film = nn.Linear(emb_dim, 2 * width)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb).unsqueeze(-1).chunk(2, dim=1)  # B×W×1 each
        y = self.conv1(nn.functional.silu(self.norm1(h)))
        y = self.norm2(y) * (1 + scale) + shift
        y = self.conv2(self.drop(nn.functional.silu(y)))
        return h + y


class Seq1DBackbone(nn.Module):
    """Dilated residual 1-D convolutions; input and output B×C×1×L (unconditional)."""

    def __init__(
        self,
        preset: Seq1DPreset,
        channels: int,
        dropout: float = 0.0,
        out_channels: int | None = None,
    ):
        super().__init__()
        w, emb = preset.width, 4 * preset.width
        self.width = w
        self.embed = nn.Sequential(nn.Linear(w, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv1d(channels, w, 1)
        self.blocks = nn.ModuleList(
            ResBlock1D(w, preset.kernel, 2 ** (i % 4), emb, dropout) for i in range(preset.blocks)
        )
        self.out = nn.Sequential(
            nn.GroupNorm(math.gcd(8, w), w), nn.SiLU(), nn.Conv1d(w, out_channels or channels, 1)
        )

    def forward(
        self, x: torch.Tensor, noise_cond: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, c, one, length = x.shape  # sequences are C×1×L "images"
        emb = self.embed(noise_embedding(noise_cond.expand(b) if noise_cond.numel() == 1
                                         else noise_cond, self.width))  # fmt: skip
        h = self.inp(x.reshape(b, c, length))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).reshape(b, -1, one, length)
