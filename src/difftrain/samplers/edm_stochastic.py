"""Stochastic sampler of Karras et al. 2022 (EDM), Algorithm 2."""

from __future__ import annotations

import math

import torch

from difftrain.samplers.common import Callback, Denoiser, denoise, prepare
from difftrain.samplers.noise import randn


@torch.no_grad()
def sample_edm_stochastic(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    callback: Callback | None = None,
    generator=None,
    s_churn: float = 40.0,
    s_tmin: float = 0.05,
    s_tmax: float = 50.0,
    s_noise: float = 1.003,
) -> torch.Tensor:
    """Heun steps with "churn": before step i, for σ_i ∈ [S_tmin, S_tmax], raise the noise to
    σ̂ = σ_i(1 + γ), γ = min(S_churn/N, √2 − 1), by adding √(σ̂² − σ_i²)·S_noise·ε (lines 5-6),
    then take a Heun step from σ̂ to σ_{i+1} (lines 7-10; Euler when σ_{i+1} = 0).

    Defaults are the paper's ImageNet-64 settings; s_churn = 0 gives Algorithm 1 (Heun).
    """
    x, sigmas = prepare(x_T, sigmas)
    n = len(sigmas) - 1
    gamma_max = min(s_churn / max(n, 1), math.sqrt(2) - 1)
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        gamma = gamma_max if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            eps = randn(x.shape, generator, device=x.device).to(x.dtype)
            x = x + (s_hat**2 - s**2).sqrt() * s_noise * eps
        denoised = denoise(denoiser, x, s_hat, cond)
        d = (x - denoised) / s_hat
        x_next = x + (s_next - s_hat) * d
        if s_next > 0:
            d_next = (x_next - denoise(denoiser, x_next, s_next, cond)) / s_next
            x_next = x + (s_next - s_hat) * (d + d_next) / 2
        if callback is not None:
            callback(
                {"i": i, "sigma": s_hat, "sigma_next": s_next, "x": x_next, "denoised": denoised}
            )
        x = x_next
    return x
