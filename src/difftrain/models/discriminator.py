"""PatchGAN discriminator (Isola et al. 2017), as `NLayerDiscriminator` in taming-transformers.

Used by autoencoder training for the adversarial term of Esser et al. 2021 / Rombach et al. 2022:
each output logit judges one receptive-field patch of the input as real or reconstructed.
"""

from __future__ import annotations

import torch
from torch import nn


def patch_output_side(side: int, n_layers: int) -> int:
    """Side of the logit map for an input of side `side` (0 means the input is too small)."""
    for _ in range(n_layers):
        side = (side + 2 - 4) // 2 + 1  # k4 s2 p1
    return max(0, side - 2)  # two k4 s1 p1 convolutions each lose one pixel


class NLayerDiscriminator(nn.Module):
    """`n_layers` stride-2 convolutions, then two stride-1 ones; logits B×1×h×w (no sigmoid)."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last widening convolution keeps the size
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def _init_weights(m: nn.Module) -> None:
    """DCGAN initialisation, as taming-transformers' `weights_init`."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
