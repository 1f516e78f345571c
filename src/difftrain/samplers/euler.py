"""Euler sampler for the probability-flow ODE (Karras et al. 2022, Eq. 4 with σ(t) = t)."""

from __future__ import annotations

import torch

from difftrain.samplers.common import Callback, Denoiser, denoise, prepare


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    callback: Callback | None = None,
    generator=None,
) -> torch.Tensor:
    """First-order steps x ← x + (σ_next − σ)·(x − D(x; σ))/σ, one D evaluation per step.

    In σ-space this is the same update as DDIM with η = 0 (Song et al. 2021; Karras et al. 2022,
    Sec. 3) and first-order DPM-Solver++ (Lu et al. 2022b), since x0̂ + σ_next·(x − x0̂)/σ is it.
    x_T must already be scaled to sigmas[0]. `generator` is unused.
    """
    x, sigmas = prepare(x_T, sigmas)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, s, cond)
        x_next = x + (s_next - s) * (x - denoised) / s
        if callback is not None:
            callback({"i": i, "sigma": s, "sigma_next": s_next, "x": x_next, "denoised": denoised})
        x = x_next
    return x
