"""Helpers shared by the samplers (not samplers themselves)."""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
Callback = Callable[[dict], None]


def prepare(x_T: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_T and σ in the working precision: float64 if x_T is float64, else float32."""
    dtype = torch.float64 if x_T.dtype == torch.float64 else torch.float32
    return x_T.to(dtype), sigmas.to(x_T.device, dtype)


def denoise(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
    """D(x; σ) with σ broadcast to the batch, returned in x's precision."""
    return denoiser(x, sigma.expand(x.shape[0]), cond).to(x.dtype)


def ancestral_sigmas(
    sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ_down, σ_up) of one ancestral step from σ to σ_next in σ-space.

    σ_up = η·σ_next·√(σ² − σ_next²)/σ and σ_down = √(σ_next² − σ_up²). With η = 1 the step
    draws from the DDPM posterior q(x_next | x, x0̂) (Ho et al. 2020, Eq. 7); with η ∈ [0, 1]
    it is DDIM's σ_t(η) (Song et al. 2021, Eq. 16) written in σ-space.
    """
    if sigma_next == 0:
        return sigma_next, sigma_next
    up = eta * sigma_next * (sigma**2 - sigma_next**2).clamp(min=0).sqrt() / sigma
    up = torch.minimum(up, sigma_next)
    return (sigma_next**2 - up**2).sqrt(), up
