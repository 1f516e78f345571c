"""Rectified flow / flow matching (Liu et al. 2022, "Flow Straight and Fast"; Lipman et al. 2022,
"Flow Matching for Generative Modeling") with logit-normal time sampling (Esser et al. 2024,
"Scaling Rectified Flow Transformers", Sec. 3.1), seen through the denoiser contract.

Flow time t: x_t = (1−t)·x0 + t·ε, velocity v = ε − x0. In σ-space x = x_t/(1−t) = x0 + σ·ε with
σ = t/(1−t), t = σ/(1+σ); so x0̂ = x_t − t·v̂ and x0̂ − x0 = −t·(v̂ − v).
"""

from __future__ import annotations

import torch
from torch import nn

from difftrain.diffusion.loss import denoising_loss, randn_on, training_noise
from difftrain.diffusion.precond import Preconditioned
from difftrain.diffusion.weighting import Weighting


def sigma_to_flow_t(sigma: torch.Tensor) -> torch.Tensor:
    """t = σ/(1+σ)."""
    return sigma / (1 + sigma)


def shift_flow_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Resolution-dependent time shift s·t/(1+(s−1)·t) (Esser et al. 2024, Sec. 5.3.2)."""
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def flow_t_to_sigma(t: torch.Tensor) -> torch.Tensor:
    """σ = t/(1−t)."""
    return t / (1 - t)


class FlowPrecond(Preconditioned):
    """A velocity-predicting backbone F(x_t, 1000·t) as D(x, σ, cond).

    c_in = c_skip = 1/(1+σ), c_out = −σ/(1+σ) = −t, c_noise = time_scale·t (1000, as in SD3, so
    a U-Net's sinusoidal time embedding sees the same range as for discrete timesteps).
    """

    def __init__(self, backbone: nn.Module, time_scale: float = 1000.0):
        super().__init__(backbone)
        self.time_scale = time_scale

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        t = sigma_to_flow_t(sigma)
        c_in = 1 / (1 + sigma)
        return c_in, -t, c_in, self.time_scale * t


class FlowLoss:
    """Conditional flow matching: t = sigmoid(N(m, s²)), loss ||v̂ − (ε − x0)||².

    Native weight in x0 space is 1/t² = ((1+σ)/σ)²; another `Weighting` replaces it.
    t is clamped to [1e-5, 1 − 1e-4] so σ stays finite.
    """

    def __init__(
        self,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        weighting: Weighting | None = None,
        offset_noise: float = 0.0,
        shift: float = 1.0,
    ):
        self.logit_mean, self.logit_std, self.shift = logit_mean, logit_std, shift
        self.weighting = weighting or Weighting("uniform")
        self.offset_noise = offset_noise

    def sample_t(self, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """Logit-normal flow times, shifted toward noise by `shift` (SD3 Sec. 5.3.2)."""
        z = randn_on((n,), generator, device) * self.logit_std + self.logit_mean
        return shift_flow_t(torch.sigmoid(z), self.shift).clamp(1e-5, 1 - 1e-4)

    def __call__(
        self,
        denoiser: nn.Module,
        x0: torch.Tensor,
        cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        t = self.sample_t(x0.shape[0], generator, x0.device)
        sigma = flow_t_to_sigma(t)
        noise = training_noise(x0, generator, self.offset_noise)
        w = self.weighting(sigma, t**-2)
        return denoising_loss(denoiser, x0, sigma, noise, cond, w, self.weighting.learned)
