"""The multistep DPM-Solver++ update (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models", Algorithm 2 and App. B), shared by the 2M and 3M
samplers. In σ-space α = 1 and λ = −log σ, so e^{−h} = σ_next/σ."""

from __future__ import annotations

import torch


def dpmpp_update(
    x: torch.Tensor,
    sigma_next: torch.Tensor,
    sigmas: list[torch.Tensor],
    denoised: list[torch.Tensor],
    order: int,
    exact_third_order: bool = False,
) -> torch.Tensor:
    """One step from sigmas[0] to sigma_next using the newest `order` data predictions.

    `sigmas`/`denoised` hold the history newest first (σ_{s0}, σ_{s1}, ...; m0, m1, ...).
    Order 2 is the "midpoint" form of diffusers' DPMSolverMultistepScheduler
    (algorithm_type='dpmsolver++'). Order 3 uses the same D1, D2 differences, with
    D1 ≈ h·m′ and D2 ≈ h²·m″/2; the exact integral ∫₀ʰ e^{−(h−τ)} m(λ+τ) dτ gives the m″ term
    −h²·φ₃·m″ = −2φ₃·D2 (φ₃ = (φ₁ + h)/h² − ½). The published code (DPM-Solver, k-diffusion,
    diffusers) weights D2 by φ₃, which leaves an O(h³) local error: the method is then only
    second order. `exact_third_order=False` (the default) reproduces that code exactly.
    A step to σ = 0 returns m0 (h = ∞: the higher-order terms are not defined there).
    """
    m0 = denoised[0]
    if sigma_next == 0:
        return m0
    lam = [-s.log() for s in sigmas[:order]]
    h = -sigma_next.log() - lam[0]
    phi1 = torch.expm1(-h)  # e^{−h} − 1
    x_next = (sigma_next / sigmas[0]) * x - phi1 * m0
    if order == 2:
        r0 = (lam[0] - lam[1]) / h
        x_next = x_next - 0.5 * phi1 * (m0 - denoised[1]) / r0
    elif order == 3:
        r0, r1 = (lam[0] - lam[1]) / h, (lam[1] - lam[2]) / h
        d1_0, d1_1 = (m0 - denoised[1]) / r0, (denoised[1] - denoised[2]) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        d2_weight = 2.0 if exact_third_order else 1.0
        x_next = x_next + (phi1 / h + 1) * d1 - d2_weight * ((phi1 + h) / h**2 - 0.5) * d2
    return x_next
