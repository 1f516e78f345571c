"""Loss weighting over noise levels, chosen separately from the objective.

Weights are stated for the x0-space error ||D(x; σ) − x0||², with SNR(σ) = 1/σ² in σ-space
(the same as ᾱ/(1−ᾱ) of a VP schedule and ((1−t)/t)² of a flow). Each objective passes its
"native" weight: the one that makes the loss uniform in its own prediction space.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from difftrain.diffusion.precond import batch_sigma

WEIGHTINGS = ("uniform", "min-snr", "soft-min-snr", "edm", "learned")


class Weighting:
    """x0-space loss weight w(σ) for one of WEIGHTINGS.

    - uniform: the objective's native weight (plain MSE on ε, v, x0, velocity or EDM's F).
    - min-snr: min(SNR, γ), Hang et al. 2023 ("Efficient Diffusion Training via Min-SNR
      Weighting Strategy"); for ε-prediction this is min(SNR, γ)/SNR on the ε error.
    - soft-min-snr: SNR·γ/(SNR + γ), the smooth version of Crowson et al. 2024 (HDiT).
    - edm: λ(σ) = (σ² + σ_d²)/(σ·σ_d)², Karras et al. 2022.
    - learned: native weight, then EDM2's learned uncertainty L/e^u + u (Karras et al. 2024);
      the denoiser must be wrapped in `WithLogVar`.
    """

    def __init__(self, name: str = "uniform", gamma: float = 5.0, sigma_data: float = 0.5):
        if name not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {name!r} (allowed: {', '.join(WEIGHTINGS)})")
        self.name, self.gamma, self.sigma_data = name, gamma, sigma_data

    @property
    def learned(self) -> bool:
        return self.name == "learned"

    def __call__(self, sigma: torch.Tensor, native: torch.Tensor) -> torch.Tensor:
        """Per-example weight [B] from σ [B] and the objective's native weight [B]."""
        snr = sigma.double() ** -2
        if self.name in ("uniform", "learned"):
            return native
        if self.name == "min-snr":
            w = snr.clamp(max=self.gamma)
        elif self.name == "soft-min-snr":
            w = snr * self.gamma / (snr + self.gamma)
        else:  # edm
            sd = self.sigma_data
            w = (sigma.double() ** 2 + sd**2) / (sigma.double() * sd) ** 2
        return w.to(sigma.dtype)


class LogVarHead(nn.Module):
    """u(σ): a linear layer on random Fourier features of c_noise = ln(σ)/4 (EDM2, Karras et al.
    2024, Sec. 3 and `MPFourier`). Zero-initialised, so training starts from u = 0."""

    def __init__(self, channels: int = 128, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)  # fixed features, independent of global RNG
        self.register_buffer("freqs", 2 * math.pi * torch.randn(channels, generator=gen))
        self.register_buffer("phases", 2 * math.pi * torch.rand(channels, generator=gen))
        self.linear = nn.Linear(channels, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        c_noise = sigma.float().log().view(-1, 1) / 4
        features = torch.cos(c_noise * self.freqs + self.phases) * math.sqrt(2)
        return self.linear(features).view(-1)


class WithLogVar(nn.Module):
    """A denoiser plus EDM2's log-variance head; the head's parameters train with the network.

    `D(x, σ, cond)` is unchanged; `D(x, σ, cond, return_logvar=True)` also returns u(σ) [B].
    """

    def __init__(self, denoiser: nn.Module, channels: int = 128):
        super().__init__()
        self.denoiser = denoiser
        self.logvar = LogVarHead(channels)

    def forward(self, x, sigma, cond=None, return_logvar: bool = False):
        out = self.denoiser(x, sigma, cond)
        if not return_logvar:
            return out
        return out, self.logvar(batch_sigma(sigma, x))
