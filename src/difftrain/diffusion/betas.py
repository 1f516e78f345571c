"""Discrete-time VP noise schedules (β_t) and their σ-space view. Pure functions, float64.

In σ-space (x = x0 + σ·ε) a VP timestep t with ᾱ_t has σ_t = √((1 − ᾱ_t)/ᾱ_t) and SNR_t = 1/σ_t².
"""

from __future__ import annotations

import math

import torch

BETA_SCHEDULES = ("linear", "scaled-linear", "cosine")

# ᾱ floor used where ᾱ_T = 0 (zero terminal SNR) would make σ_T infinite; the same value that
# diffusers' EulerDiscreteScheduler substitutes (σ_T ≈ 4096).
MIN_ALPHA_CUMPROD = 2.0**-24


def beta_schedule(
    kind: str, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """β_0..β_{T-1} (float64) for 'linear' (Ho et al. 2020), 'scaled-linear' (Stable Diffusion:
    linear in √β) or 'cosine' (Nichol & Dhariwal 2021, Eq. 17, s = 0.008, β clipped at 0.999)."""
    n = num_timesteps
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if kind == "scaled-linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    if kind == "cosine":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {kind!r} (allowed: {', '.join(BETA_SCHEDULES)})")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 of Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed": shift and scale √ᾱ so that ᾱ_{T-1} = 0 while ᾱ_0 is unchanged."""
    alphas_bar_sqrt = torch.cumprod(1 - betas.double(), 0).sqrt()
    a0, a_last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - a_last) * a0 / (a0 - a_last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = Π_{s≤t} (1 − β_s)."""
    return torch.cumprod(1 - betas.double(), 0)


def vp_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t), increasing in t; ᾱ is floored at 2^-24 so σ stays finite."""
    ac = alphas_cumprod.double().clamp(min=MIN_ALPHA_CUMPROD)
    return ((1 - ac) / ac).sqrt()


def make_alphas_cumprod(
    kind: str,
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    zero_terminal_snr: bool = False,
) -> torch.Tensor:
    """ᾱ for a named β schedule, optionally rescaled to zero terminal SNR."""
    betas = beta_schedule(kind, num_timesteps, beta_start, beta_end)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return alphas_cumprod(betas)
