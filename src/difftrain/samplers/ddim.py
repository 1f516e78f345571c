"""DDIM sampler with η (Song et al. 2021, "Denoising Diffusion Implicit Models", Eq. 12 and 16)."""

from __future__ import annotations

import torch

from difftrain.samplers.common import Callback, Denoiser, ancestral_sigmas, denoise, prepare
from difftrain.samplers.noise import randn


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    callback: Callback | None = None,
    generator=None,
    eta: float = 0.0,
) -> torch.Tensor:
    """x_next = x0̂ + σ_down·ε̂ + σ_up·z with ε̂ = (x − x0̂)/σ and (σ_down, σ_up) from η.

    Eq. 12 of Song et al. divided by √ᾱ_{t−1} (σ-space): √(1−ᾱ_{t−1}−σ_t(η)²)/√ᾱ_{t−1} = σ_down
    and σ_t(η)/√ᾱ_{t−1} = η·σ_next·√(σ² − σ_next²)/σ = σ_up. η = 0 is deterministic (and equal to
    Euler); η = 1 is ancestral DDPM. Noise z comes from `samplers.noise.randn(shape, generator)`,
    drawn only on steps with σ_up > 0, so sample i depends only on its own generator.
    """
    x, sigmas = prepare(x_T, sigmas)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, s, cond)
        down, up = ancestral_sigmas(s, s_next, eta)
        x_next = denoised + down * (x - denoised) / s
        if up > 0:
            x_next = x_next + up * randn(x.shape, generator, device=x.device).to(x.dtype)
        if callback is not None:
            callback({"i": i, "sigma": s, "sigma_next": s_next, "x": x_next, "denoised": denoised})
        x = x_next
    return x
