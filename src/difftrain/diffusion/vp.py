"""Discrete-time VP diffusion (Ho et al. 2020, "Denoising Diffusion Probabilistic Models") with
ε-, v- (Salimans & Ho 2022, "Progressive Distillation", Sec. 4) or x0-prediction, seen through the
denoiser contract D(x, σ, cond).

σ-space ↔ VP: x_t = x/√(1+σ²) = √ᾱ·x0 + √(1−ᾱ)·ε with σ = √((1−ᾱ)/ᾱ). The network is called
at a continuous timestep found by interpolating t over log σ_t of the training timesteps
(k-diffusion's `DiscreteSchedule.sigma_to_t`).
"""

from __future__ import annotations

import torch
from torch import nn

from difftrain.diffusion.betas import vp_sigmas
from difftrain.diffusion.loss import denoising_loss, randint_on, training_noise
from difftrain.diffusion.precond import Preconditioned
from difftrain.diffusion.weighting import Weighting

PREDICTIONS = ("eps", "v", "x0")


def native_weight(prediction: str, sigma: torch.Tensor) -> torch.Tensor:
    """x0-space weight that makes the loss a plain MSE on the prediction (SNR = 1/σ²).

    ε: x0̂ − x0 = −σ(ε̂ − ε) → 1/σ²;  v: x0̂ − x0 = −√(1−ᾱ)(v̂ − v) → 1 + 1/σ²;  x0: 1.
    """
    if prediction == "eps":
        return sigma**-2
    if prediction == "v":
        return 1 + sigma**-2
    if prediction == "x0":
        return torch.ones_like(sigma)
    raise ValueError(f"unknown prediction {prediction!r} (allowed: {', '.join(PREDICTIONS)})")


class VPPrecond(Preconditioned):
    """A backbone trained on VP timesteps 0..T-1 as a σ-space denoiser D(x, σ, cond).

    Coefficients (with x_t = c_in·x, c_in = 1/√(1+σ²)):
    ε: x0̂ = x − σ·F;  v: x0̂ = x/(1+σ²) − σ/√(1+σ²)·F;  x0: x0̂ = F.
    `train_sigmas[t]` is σ of training timestep t (increasing).
    """

    def __init__(self, backbone: nn.Module, alphas_cumprod: torch.Tensor, prediction: str = "eps"):
        super().__init__(backbone)
        if prediction not in PREDICTIONS:
            raise ValueError(
                f"unknown prediction {prediction!r} (allowed: {', '.join(PREDICTIONS)})"
            )
        self.prediction = prediction
        sigmas = vp_sigmas(alphas_cumprod)
        self.register_buffer("train_sigmas", sigmas.float(), persistent=False)
        self.register_buffer("log_sigmas", sigmas.log().float(), persistent=False)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep for σ: linear interpolation in log σ, clamped to [0, T−1]."""
        log_sigma = sigma.float().log()
        hi = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, len(self.log_sigmas) - 1)
        lo_val, hi_val = self.log_sigmas[hi - 1], self.log_sigmas[hi]
        w = ((log_sigma - lo_val) / (hi_val - lo_val)).clamp(0, 1)
        return (hi - 1).float() + w

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ for a (possibly fractional) timestep, interpolating log σ linearly in t."""
        t = t.float().clamp(0, len(self.log_sigmas) - 1)
        lo = t.floor().long().clamp(max=len(self.log_sigmas) - 2)
        w = t - lo
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[lo + 1]).exp()

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c_in = (1 + sigma**2).rsqrt()
        if self.prediction == "eps":
            c_skip, c_out = torch.ones_like(sigma), -sigma
        elif self.prediction == "v":
            c_skip, c_out = c_in**2, -sigma * c_in
        else:
            c_skip, c_out = torch.zeros_like(sigma), torch.ones_like(sigma)
        return c_skip, c_out, c_in, self.sigma_to_t(sigma)


class VPLoss:
    """L_simple of Ho et al. 2020 (Algorithm 1): t ~ U{0..T−1}, MSE on the prediction.

    The error is measured on D's x0 estimate and weighted by the prediction's native weight
    (identical to the ε/v/x0 MSE), or by another `Weighting` (e.g. Min-SNR-γ).
    """

    def __init__(
        self,
        alphas_cumprod: torch.Tensor,
        prediction: str = "eps",
        weighting: Weighting | None = None,
        offset_noise: float = 0.0,
    ):
        self.sigmas = vp_sigmas(alphas_cumprod).float()
        self.prediction = prediction
        self.weighting = weighting or Weighting("uniform")
        self.offset_noise = offset_noise

    def sample_timesteps(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """Uniform integer timesteps (on the generator's device, CPU by default)."""
        device = generator.device if generator is not None else "cpu"
        return randint_on(len(self.sigmas), n, generator, device)

    def __call__(
        self,
        denoiser: nn.Module,
        x0: torch.Tensor,
        cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        t = self.sample_timesteps(x0.shape[0], generator)
        sigma = self.sigmas[t.cpu()].to(x0.device)
        noise = training_noise(x0, generator, self.offset_noise)
        w = self.weighting(sigma, native_weight(self.prediction, sigma))
        return denoising_loss(denoiser, x0, sigma, noise, cond, w, self.weighting.learned)
