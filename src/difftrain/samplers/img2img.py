"""Image-to-image by SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with
Stochastic Differential Equations", Sec. 3): noise the input to an intermediate σ, then sample."""

from __future__ import annotations

from collections.abc import Callable

import torch


def img2img_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The tail of a schedule that runs ⌊n·strength⌋ of its n steps (as diffusers' img2img).

    strength 1 keeps all of it; strength 0 leaves only the final σ = 0 (nothing to do).
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    n = len(sigmas) - 1
    return sigmas[n - min(int(n * strength), n) :]


@torch.no_grad()
def sample_img2img(
    sample_fn: Callable,
    denoiser,
    x_init: torch.Tensor,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    *,
    strength: float,
    cond: torch.Tensor | None = None,
    callback: Callable[[dict], None] | None = None,
    generator=None,
    **options,
) -> torch.Tensor:
    """Start from x_init + σ_start·noise (σ_start from `img2img_sigmas`) and run `sample_fn`.

    `noise` is standard normal of x_init's shape, drawn by the caller from per-sample generators.
    Strength 0 returns x_init unchanged (no step is taken, no network call is made).
    """
    tail = img2img_sigmas(sigmas, strength)
    if len(tail) == 1:
        return x_init.clone()
    x = x_init + tail[0] * noise.to(x_init)
    return sample_fn(
        denoiser, x, tail, cond=cond, callback=callback, generator=generator, **options
    )
