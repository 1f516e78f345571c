"""Objectives on partly observed data: missing (NaN) entries of x0 never reach the loss."""

from __future__ import annotations

import torch


class MaskedObjective:
    """Wrap an objective so that its per-example loss is over the observed entries only.

    Missing entries of x0 (NaN) are filled with 0 (the channel mean of normalised data) as the
    network's input; the denoiser output there is replaced by that fill, so their error is
    exactly zero and they receive no gradient; the per-example loss (a mean over all entries)
    is rescaled by the observed share, which makes it the mean over observed entries.
    Needs an objective whose loss is a per-example mean of D's x0-space error (edm, vp, flow).
    """

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, denoiser, x0: torch.Tensor, cond=None, generator=None) -> torch.Tensor:
        observed = torch.isfinite(x0)
        filled = torch.where(observed, x0, torch.zeros_like(x0))
        share = observed.flatten(1).float().mean(1).clamp_min(1.0 / observed[0].numel())

        def masked(x, sigma, c=None, **kw):
            return torch.where(observed, denoiser(x, sigma, c, **kw), filled)

        return self.inner(masked, filled, cond, generator) / share
