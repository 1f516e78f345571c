"""Inpainting with any sampler: the known region's x0 is imposed on the denoiser, optionally
with RePaint resampling (Lugmayr et al. 2022, "RePaint", Algorithm 1)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from difftrain.samplers.noise import randn


class InpaintDenoiser:
    """D'(x; σ) = (1 − m)·known + m·D(x; σ), m = 1 where pixels are generated, 0 where kept.

    Every sampler's update is built from D, so the kept region of x moves as if the data were
    exactly `known`: x − known stays a multiple of the initial noise, and it ends at `known`.
    """

    def __init__(self, denoiser, known: torch.Tensor, mask: torch.Tensor):
        self.denoiser, self.known, self.mask = denoiser, known, mask

    def __call__(self, x, sigma, cond=None):
        out = self.denoiser(x, sigma, cond)
        return torch.lerp(self.known.to(out), out, self.mask.to(out))


@torch.no_grad()
def sample_inpaint(
    sample_fn: Callable,
    denoiser,
    x_T: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    known: torch.Tensor,
    mask: torch.Tensor,
    resample: int = 1,
    cond: torch.Tensor | None = None,
    callback: Callable[[dict], None] | None = None,
    generator=None,
    **options,
) -> torch.Tensor:
    """Run `sample_fn` with `InpaintDenoiser`, then paste `known` back so kept pixels are exact.

    mask: 1 = generate, 0 = keep (broadcastable to x_T). With resample = r > 1, every step is
    repeated r times, re-noising from σ_{i+1} back to σ_i between repeats (RePaint's "jumps" of
    length 1): x ← x + √(σ_i² − σ_{i+1}²)·ε. Resampling restarts a multistep sampler's history
    on each step, so pair it with a one-step sampler (euler, heun, ddim, ddpm).
    """
    den = InpaintDenoiser(denoiser, known, mask)
    if resample <= 1:
        x = sample_fn(
            den, x_T, sigmas, cond=cond, callback=callback, generator=generator, **options
        )
    else:
        x = x_T
        for i in range(len(sigmas) - 1):
            pair = sigmas[i : i + 2]
            for r in range(resample):
                if r > 0:  # jump back from σ_{i+1} to σ_i
                    eps = randn(x.shape, generator, device=x.device).to(x.dtype)
                    x = x + (pair[0] ** 2 - pair[1] ** 2).sqrt() * eps
                x = sample_fn(den, x, pair, cond=cond, generator=generator, **options)
            if callback is not None:
                callback({"i": i, "sigma": pair[0], "sigma_next": pair[1], "x": x})
    return paste_known(x, known, mask)


def paste_known(x: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1 − m)·known + m·x, and exactly `known` wherever m = 0."""
    known, mask = known.to(x).expand_as(x), mask.to(x).expand_as(x)
    return torch.where(mask == 0, known, torch.lerp(known, x, mask))
