"""DPM-Solver++(3M) (Lu et al. 2022b, App. B, third-order multistep)."""

from __future__ import annotations

import torch

from difftrain.samplers.common import Callback, Denoiser, denoise, prepare
from difftrain.samplers.dpm_solver import dpmpp_update


@torch.no_grad()
def sample_dpmpp_3m(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    callback: Callback | None = None,
    generator=None,
    lower_order_final: bool = True,
    exact_third_order: bool = True,
) -> torch.Tensor:
    """Third-order multistep exponential integrator on the data prediction, one D evaluation
    per step. Warm-up: orders 1, 2, then 3. The step to σ = 0 returns x0̂; with
    `lower_order_final` and fewer than 15 steps the step before it uses order 2 (the stabilising
    rule of diffusers' DPMSolverMultistepScheduler). `generator` is unused.

    The third-order step weights D2 by 2φ₃ (see `dpm_solver.dpmpp_update`), which makes it
    third order; `exact_third_order=False` gives diffusers' (second-order) update bit for bit.
    """
    x, sigmas = prepare(x_T, sigmas)
    n = len(sigmas) - 1
    hist_s: list[torch.Tensor] = []
    hist_d: list[torch.Tensor] = []
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, s, cond)
        hist_s, hist_d = [s, *hist_s[:2]], [denoised, *hist_d[:2]]
        order = min(3, i + 1)
        if lower_order_final and n < 15 and i == n - 2:
            order = min(order, 2)
        x_next = dpmpp_update(x, s_next, hist_s, hist_d, order, exact_third_order)
        if callback is not None:
            callback({"i": i, "sigma": s, "sigma_next": s_next, "x": x_next, "denoised": denoised})
        x = x_next
    return x
