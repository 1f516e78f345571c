"""EDM formulation of Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models": preconditioning (Table 1) and the training loss (Eq. 2 with λ(σ))."""

from __future__ import annotations

import torch
from torch import nn

from difftrain.diffusion.loss import denoising_loss, randn_on, training_noise
from difftrain.diffusion.precond import Preconditioned
from difftrain.diffusion.weighting import Weighting


class EDMPrecond(Preconditioned):
    """Wrap a backbone F(x_in, c_noise, cond) into the denoiser D(x, sigma, cond) -> x0_hat.

    D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ)), Table 1 of Karras et al. 2022.
    The backbone may run in any dtype; the denoiser's boundary is float32.
    """

    def __init__(self, backbone: nn.Module, sigma_data: float = 0.5):
        super().__init__(backbone)
        self.sigma_data = sigma_data

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(c_skip, c_out, c_in, c_noise) for a per-example σ of shape [B]."""
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


class EDMLoss:
    """Per-example EDM loss: σ ~ exp(N(P_mean, P_std²)), weighted by λ(σ) = (σ²+σ_d²)/(σ·σ_d)².

    λ(σ) is the native ("uniform") weight; another `Weighting` replaces it. `offset_noise` adds
    a per-channel constant to the noise (Guttenberg 2023).
    """

    def __init__(
        self,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        sigma_data: float = 0.5,
        weighting: Weighting | None = None,
        offset_noise: float = 0.0,
    ):
        self.p_mean, self.p_std, self.sigma_data = p_mean, p_std, sigma_data
        self.weighting = weighting or Weighting("uniform")
        self.offset_noise = offset_noise

    def sample_sigma(self, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """Log-normal σ for n examples."""
        z = randn_on((n,), generator, device)
        return (z * self.p_std + self.p_mean).exp()

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """λ(σ): makes the effective loss weight of the network output uniform in σ."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def __call__(
        self,
        denoiser: nn.Module,
        x0: torch.Tensor,
        cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        sigma = self.sample_sigma(x0.shape[0], generator, x0.device)
        noise = training_noise(x0, generator, self.offset_noise)
        w = self.weighting(sigma, self.weight(sigma))
        return denoising_loss(denoiser, x0, sigma, noise, cond, w, self.weighting.learned)
