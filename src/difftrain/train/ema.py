"""Exponential moving average of the weights, with the half-life counted in images (EDM)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(batch_images: int, halflife_kimg: float, images_seen: int, rampup: float | None) -> float:
    """Per-step decay so that the average halves every `halflife` images, whatever the batch size.

    With `rampup`, the half-life is capped at rampup·images_seen early in training (EDM).
    """
    halflife = halflife_kimg * 1000
    if rampup is not None:
        halflife = min(halflife, images_seen * rampup)
    if halflife <= 0:
        return 0.0
    return 0.5 ** (batch_images / halflife)


class EMA:
    """A float32 shadow copy of a module, updated in place."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float) -> None:
        src = model.state_dict()
        for name, p in self.model.state_dict().items():
            s = src[name].detach()
            if p.dtype.is_floating_point:
                p.lerp_(s.to(p.dtype), 1 - beta)
            else:
                p.copy_(s)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(sd)
