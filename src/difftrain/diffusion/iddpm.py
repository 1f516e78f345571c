"""Improved DDPM (Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models"):
learned-range variance and the hybrid objective L_simple + λ·L_vlb (Sec. 3.1, λ = 0.001).

The backbone outputs 2× the image channels: the ε/v/x0 prediction, then v ∈ [−1, 1]-ish that
interpolates log β_t and log β̃_t. Samplers see only D's x0 estimate.
"""

from __future__ import annotations

import torch
from torch import nn

from difftrain.diffusion.loss import training_noise
from difftrain.diffusion.precond import batch_sigma
from difftrain.diffusion.vlb import learned_range_log_variance, posterior_tables, vlb_term_bpd
from difftrain.diffusion.vp import VPLoss, VPPrecond, native_weight
from difftrain.diffusion.weighting import Weighting


class IDDPMPrecond(VPPrecond):
    """VPPrecond for a backbone with 2C output channels.

    `D(x, σ, cond)` returns x0̂; `D(x, σ, cond, return_variance=True)` returns (x0̂, v), v being
    the raw variance channels (frac = (v+1)/2 of Eq. 15).
    """

    def forward(self, x, sigma, cond=None, return_variance: bool = False):
        x = x.float()
        c_skip, c_out, f = self.backbone_output(x, batch_sigma(sigma, x), cond)
        pred, var_values = f.chunk(2, dim=1)
        x0 = c_skip * x + c_out * pred
        return (x0, var_values) if return_variance else x0


class IDDPMLoss(VPLoss):
    """Hybrid loss per example: L_simple + λ·T·L_t, with t ~ U{0..T−1}.

    T·L_t is the one-sample estimate of L_vlb = Σ_t L_t (in bits/dim, as improved-diffusion's
    RESCALED_MSE: vb·T/1000 with λ = 1/1000). The VLB term sees a stop-gradient x0̂, so it
    trains only the variance (Sec. 3.1).
    """

    def __init__(
        self,
        alphas_cumprod: torch.Tensor,
        prediction: str = "eps",
        weighting: Weighting | None = None,
        offset_noise: float = 0.0,
        vlb_weight: float = 0.001,
    ):
        super().__init__(alphas_cumprod, prediction, weighting, offset_noise)
        if self.weighting.learned:
            raise ValueError("the IDDPM hybrid loss does not combine with learned weighting")
        self.tables = posterior_tables(alphas_cumprod)
        self.vlb_weight = vlb_weight

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
        x0 = x0.float()
        x = x0 + sigma.view(-1, 1, 1, 1) * noise
        x0_pred, var_values = denoiser(x, sigma, cond, return_variance=True)
        w = self.weighting(sigma, native_weight(self.prediction, sigma))
        simple = w * ((x0_pred - x0) ** 2).flatten(1).mean(1)
        x_t = x * (1 + sigma.view(-1, 1, 1, 1) ** 2).rsqrt()
        log_var = learned_range_log_variance(self.tables, var_values, t)
        vlb = vlb_term_bpd(self.tables, x0, x_t, t, x0_pred.detach(), log_var)
        return simple + self.vlb_weight * len(self.sigmas) * vlb
