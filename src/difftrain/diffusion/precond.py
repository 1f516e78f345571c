"""The shared form of every preconditioning: D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise).

Each parameterization (EDM, VP ε/v/x0, flow velocity) differs only in its four coefficients,
Table 1 of Karras et al. 2022; subclasses implement `coefficients`.
"""

from __future__ import annotations

import torch
from torch import nn


def batch_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """σ as a float32 tensor of shape [B] on x's device (a scalar is broadcast)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
    return sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma


class Preconditioned(nn.Module):
    """Wrap a backbone F(x_in, c_noise, cond) into the denoiser D(x, sigma, cond) -> x0_hat.

    The backbone may run in any dtype; the denoiser's boundary is float32, σ has shape [B].
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(c_skip, c_out, c_in, c_noise), each of shape [B], for σ of shape [B]."""
        raise NotImplementedError

    def backbone_output(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, F) with c_skip, c_out shaped [B,1,1,1] and F in float32."""
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        c_skip, c_out, c_in = (c.view(-1, 1, 1, 1) for c in (c_skip, c_out, c_in))
        f = self.backbone(c_in * x, c_noise.flatten(), cond)
        return c_skip, c_out, f.float()

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x.float()
        c_skip, c_out, f = self.backbone_output(x, batch_sigma(sigma, x), cond)
        return c_skip * x + c_out * f
