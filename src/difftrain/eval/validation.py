"""Deterministic validation denoising loss, broken down by noise level."""

from __future__ import annotations

import math

import torch


def sigma_grid(sigma_min: float = 0.01, sigma_max: float = 20.0, n: int = 8) -> list[float]:
    """Log-spaced σ values covering the range where the loss carries information."""
    return [
        math.exp(math.log(sigma_min) + i * (math.log(sigma_max) - math.log(sigma_min)) / (n - 1))
        for i in range(n)
    ]


@torch.no_grad()
def validation_loss(
    denoiser,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    sigmas: list[float],
    sigma_data: float = 0.5,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Mean λ(σ)-weighted denoising error per σ on fixed noise: same inputs ⇒ same number.

    `images` are float in [-1, 1]. Returns {'val/loss': mean over σ, 'val/loss_sigma_<σ>': ...}.
    """
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen)  # one fixed draw, reused at every σ
    out = {}
    for s in sigmas:
        total = 0.0
        for i in range(0, len(images), batch_size):
            x0 = images[i : i + batch_size].to(device)
            n = noise[i : i + batch_size].to(device) * s
            cond = None if labels is None else labels[i : i + batch_size].to(device)
            sig = torch.full((x0.shape[0],), s, device=device)
            d = denoiser(x0 + n, sig, cond)
            weight = (s**2 + sigma_data**2) / (s * sigma_data) ** 2
            total += (weight * (d - x0) ** 2).flatten(1).mean(1).sum().item()
        out[f"val/loss_sigma_{s:.3g}"] = total / len(images)
    out["val/loss"] = sum(out.values()) / len(sigmas)
    return out


@torch.no_grad()
def training_sigma_loss(
    denoiser,
    objective,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> float:
    """The training objective on validation images, σ and noise from a fixed-seed draw.

    σ comes from the objective's own training distribution (EDM log-normal, VP/iDDPM uniform
    timesteps, flow logit-normal) with its own weighting, so the number is comparable with
    `train/loss` (which also has label dropout and moving weights); the seed fixes the draw, so
    the same weights give the same number at every validation.
    """
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for i in range(0, len(images), batch_size):
        x0 = images[i : i + batch_size].to(device)
        cond = None if labels is None else labels[i : i + batch_size].to(device)
        total += objective(denoiser, x0, cond, gen).float().sum().item()
    return total / max(1, len(images))
