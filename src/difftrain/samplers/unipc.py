"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", Algorithms 1-3 with the B(h) variants of Sec. 3.3), data-prediction form."""

from __future__ import annotations

import torch

from difftrain.samplers.common import Callback, Denoiser, denoise, prepare


def _coefficients(h: torch.Tensor, rks: torch.Tensor, order: int, variant: str):
    """(hφ₁(−h) = e^{−h} − 1, B(h), R, b) of Eq. (8)-(9) for the data-prediction model."""
    hh = -h
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows, b, factorial = [], [], 1
    for j in range(1, order + 1):
        rows.append(rks ** (j - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= j + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, torch.stack(rows), torch.stack(b)


def _differences(h, hist_s, hist_d, order):
    """rk = (λ_{s_k} − λ_{s_0})/h and D1_k = (m_k − m_0)/r_k for k = 1..order−1; λ = −log σ."""
    lam0 = -hist_s[0].log()
    rks = [(-hist_s[k].log() - lam0) / h for k in range(1, order)]
    d1s = [(hist_d[k] - hist_d[0]) / rk for k, rk in zip(range(1, order), rks, strict=True)]
    return torch.stack([*rks, torch.ones_like(h)]), d1s


@torch.no_grad()
def sample_unipc(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: torch.Tensor | None = None,
    callback: Callback | None = None,
    generator=None,
    order: int = 2,
    variant: str = "bh2",
    lower_order_final: bool = True,
) -> torch.Tensor:
    """Multistep UniP-p predictor with the UniC corrector, one D evaluation per step.

    The corrector reuses the evaluation at the new point (it is the next step's model output),
    so it raises the order by one at no cost; the final sample is not corrected. Warm-up orders
    1..p; with `lower_order_final` the last steps use order ≤ steps left; the step to σ = 0
    returns x0̂. Matches diffusers' UniPCMultistepScheduler (predict_x0=True). `generator` is unused.
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant {variant!r}: allowed 'bh1' or 'bh2'")
    x, sigmas = prepare(x_T, sigmas)
    n = len(sigmas) - 1
    hist_s: list[torch.Tensor] = []
    hist_d: list[torch.Tensor] = []
    last_x, last_order = None, 0
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(denoiser, x, s, cond)
        if last_x is not None:  # UniC: correct x (predicted from last_x) using D at x
            h = (hist_s[0] / s).log()
            rks, d1s = _differences(h, hist_s, hist_d, last_order)
            h_phi_1, b_h, R, b = _coefficients(h, rks, last_order, variant)
            rhos = torch.linalg.solve(R, b) if last_order > 1 else b.new_tensor([0.5])
            x = (s / hist_s[0]) * last_x - h_phi_1 * hist_d[0]
            corr = sum((r * d for r, d in zip(rhos[:-1], d1s, strict=True)), torch.zeros_like(x))
            x = x - b_h * (corr + rhos[-1] * (denoised - hist_d[0]))
        hist_s, hist_d = [s, *hist_s[: order - 1]], [denoised, *hist_d[: order - 1]]
        p = min(order, i + 1, n - i) if lower_order_final else min(order, i + 1)
        last_x, last_order = x, p
        if s_next == 0:
            x_next = denoised
        else:  # UniP-p
            h = (s / s_next).log()
            rks, d1s = _differences(h, hist_s, hist_d, p)
            h_phi_1, b_h, R, b = _coefficients(h, rks, p, variant)
            x_next = (s_next / s) * x - h_phi_1 * denoised
            if p > 1:
                rhos = b.new_tensor([0.5]) if p == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
                x_next = x_next - b_h * sum(r * d for r, d in zip(rhos, d1s, strict=True))
        if callback is not None:
            callback({"i": i, "sigma": s, "sigma_next": s_next, "x": x_next, "denoised": denoised})
        x = x_next
    return x
