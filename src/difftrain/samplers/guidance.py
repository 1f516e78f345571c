"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper."""

from __future__ import annotations

import torch


class CFGDenoiser:
    """D_w(x; σ, c) = D(x; σ, ∅) + w·(D(x; σ, c) − D(x; σ, ∅)); w = 1 is plain conditioning.

    Both branches run in one batched call. `null_cond` is the label the model was trained on
    when the condition was dropped.
    """

    def __init__(self, denoiser, guidance: float, null_cond: int):
        self.denoiser, self.guidance, self.null_cond = denoiser, guidance, null_cond

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None):
        if cond is None or self.guidance == 1.0:
            return self.denoiser(x, sigma, cond)
        null = torch.full_like(cond, self.null_cond)
        out = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, null]))
        d_cond, d_null = out.chunk(2)
        return d_null + self.guidance * (d_cond - d_null)
