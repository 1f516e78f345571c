"""Ancestral DDPM sampler (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Alg. 2)."""

from __future__ import annotations

import torch

from difftrain.samplers.common import Callback, Denoiser
from difftrain.samplers.ddim import sample_ddim


@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    callback: Callback | None = None,
    generator=None,
) -> torch.Tensor:
    """Draw x_next ~ q(x_next | x, x0̂) at every step: posterior mean x0̂ + (σ_next/σ)²(x − x0̂),
    variance σ_next²(σ² − σ_next²)/σ² (the "fixed small" β̃ of Eq. 7, in σ-space).

    Over the model's own training timesteps this is Algorithm 2; over fewer steps it is the
    respaced chain of Nichol & Dhariwal 2021 (Sec. 4). It is DDIM with η = 1.
    """
    return sample_ddim(
        denoiser, x_T, sigmas, cond=cond, callback=callback, generator=generator, eta=1.0
    )
