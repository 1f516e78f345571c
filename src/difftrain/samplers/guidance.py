"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper."""

from __future__ import annotations

import torch


class CFGDenoiser:
    """D_w(x; σ, c) = D(x; σ, ∅) + w·(D(x; σ, c) − D(x; σ, ∅)); w = 1 is plain conditioning.

    Both branches run in one batched call. `null_cond` is the condition the model was trained
    on when the condition was dropped: a class index (the null class), or a tensor of one
    condition row broadcast over the batch, e.g. the token ids (1×L) of the empty prompt "" or
    of a negative prompt (the negative prompt then takes the place of ∅). With `interval = (σ_lo, σ_hi)`, guidance applies only for
    σ_lo < σ ≤ σ_hi and elsewhere D is the plain conditional one (Kynkäänniemi et al. 2024,
    "Applying Guidance in a Limited Interval Improves Sample and Distribution Quality").
    """

    def __init__(
        self,
        denoiser,
        guidance: float,
        null_cond: int | torch.Tensor,
        interval: tuple[float, float] | None = None,
    ):
        self.denoiser, self.guidance, self.null_cond = denoiser, guidance, null_cond
        self.interval = interval

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None):
        if cond is None or self.guidance == 1.0:
            return self.denoiser(x, sigma, cond)
        if self.interval is not None:
            lo, hi = self.interval
            inside = (sigma > lo) & (sigma <= hi)
            if not bool(inside.any()):
                return self.denoiser(x, sigma, cond)
        null = self.null_rows(cond)
        out = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([cond, null]))
        d_cond, d_null = out.chunk(2)
        guided = d_null + self.guidance * (d_cond - d_null)
        if self.interval is not None:
            guided = torch.where(inside.view(-1, *[1] * (x.dim() - 1)), guided, d_cond)
        return guided

    def null_rows(self, cond: torch.Tensor) -> torch.Tensor:
        """The null condition shaped like `cond`: a class index filled, or one row expanded."""
        if not isinstance(self.null_cond, torch.Tensor):
            return torch.full_like(cond, self.null_cond)
        row = self.null_cond.to(device=cond.device, dtype=cond.dtype).reshape(1, *cond.shape[1:])
        return row.expand_as(cond)
