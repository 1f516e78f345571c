"""DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2)."""

from __future__ import annotations

import torch

from difftrain.samplers.common import Callback, Denoiser, denoise, prepare
from difftrain.samplers.dpm_solver import dpmpp_update


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    callback: Callback | None = None,
    generator=None,
) -> torch.Tensor:
    """Second-order multistep exponential integrator on the data prediction, one D evaluation
    per step: the first step is first order (no history) and the step to σ = 0 returns x0̂
    (as k-diffusion's `sample_dpmpp_2m` and diffusers with final_sigmas_type='zero').
    `generator` is unused."""
    x, sigmas = prepare(x_T, sigmas)
    hist_s: list[torch.Tensor] = []
    hist_d: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, s, cond)
        hist_s, hist_d = [s, *hist_s[:1]], [denoised, *hist_d[:1]]
        x_next = dpmpp_update(x, s_next, hist_s, hist_d, order=min(2, i + 1))
        if callback is not None:
            callback({"i": i, "sigma": s, "sigma_next": s_next, "x": x_next, "denoised": denoised})
        x = x_next
    return x
