"""Deterministic Heun sampler: Algorithm 1 of Karras et al. 2022 (EDM)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from difftrain.samplers.common import prepare

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    callback: Callable[[dict], None] | None = None,
    generator=None,
) -> torch.Tensor:
    """Integrate the probability-flow ODE dx/dσ = (x − D(x; σ))/σ from sigmas[0] to sigmas[-1].

    x_T must already be scaled to sigmas[0] (x_T = σ_0·ε). Heun's 2nd-order correction is
    applied on every step except the last when it ends at σ = 0 (Algorithm 1, lines 7-9).
    `generator` is unused (the sampler is deterministic); it is accepted for the common signature.
    """
    x, sigmas = prepare(x_T, sigmas)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, s.expand(x.shape[0]), cond)
        d = (x - denoised) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            denoised_next = denoiser(x_next, s_next.expand(x.shape[0]), cond)
            d_next = (x_next - denoised_next) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        if callback is not None:
            callback({"i": i, "sigma": s, "sigma_next": s_next, "x": x_next, "denoised": denoised})
        x = x_next
    return x
