"""Exponential moving average of the weights, with the half-life counted in images (EDM)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(
    batch_images: int, halflife_kimg: float, images_seen: int, rampup: float | None
) -> float:
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
        # Frozen float32 weights (a LoRA run's base U-Net) never change, so the copy shares
        # them instead of holding a second copy of the model (3.4 GB for SD 1.5's U-Net).
        frozen = [p for p in model.parameters() if not p.requires_grad]
        shared = {id(p): p for p in frozen if p.dtype == torch.float32}
        self.model = copy.deepcopy(model, shared).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float, skip: torch.Tensor | None = None) -> None:
        """Average in the model's weights; `skip` (a device bool) holds them without a host read."""
        src = model.state_dict()
        # As a float32 tensor the weight rounds as the scalar does: the same result either way.
        weight = 1 - beta if skip is None else torch.where(skip, 0.0, 1 - beta)
        for name, p in self.model.state_dict().items():
            s = src[name].detach()
            if p.data_ptr() == s.data_ptr():  # a shared frozen weight: nothing to average
                continue
            if p.dtype.is_floating_point:
                p.lerp_(s.to(p.dtype), weight)
            else:
                p.copy_(s)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(sd)


def halflife_group(halflife_kimg: float) -> str:
    """Checkpoint group (file) name of an extra EMA, e.g. 'ema_hl0.5' → ema_hl0.5.safetensors."""
    return f"ema_hl{halflife_kimg:g}"


class EMABank:
    """Several classic EMAs at once, one per half-life (kimg); each is an `EMA`.

    Each is its own checkpoint group (`halflife_group`), so `load_run(run, weights=name)` reads it.
    """

    def __init__(self, model: nn.Module, halflives_kimg: list[float]):
        self.emas = {halflife_group(h): (h, EMA(model)) for h in halflives_kimg}

    def update(
        self,
        model: nn.Module,
        batch_images: int,
        images_seen: int,
        rampup: float | None,
        skip: torch.Tensor | None = None,
    ) -> None:
        for halflife, ema in self.emas.values():
            ema.update(model, ema_beta(batch_images, halflife, images_seen, rampup), skip)

    def to(self, device: torch.device | str) -> EMABank:
        for _, ema in self.emas.values():
            ema.model.to(device)
        return self

    def state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """{group name: state dict}, ready to merge into write_checkpoint's tensor groups."""
        return {name: ema.state_dict() for name, (_, ema) in self.emas.items()}

    def load_state_dicts(self, groups: dict[str, dict[str, torch.Tensor]]) -> list[str]:
        """Load every group present; returns the names that were missing (they keep their init)."""
        missing = [name for name in self.emas if name not in groups]
        for name, (_, ema) in self.emas.items():
            if name in groups:
                ema.load_state_dict(groups[name])
        return missing
