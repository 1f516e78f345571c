"""Pieces every objective shares: training noise and the weighted denoising error in x0 space.

Every objective here trains through the denoiser contract D(x, σ, cond) on σ-space inputs
x = x0 + σ·n. An error in a prediction space is an x0-space error times a function of σ
(ε: 1/σ², v: 1 + 1/σ², flow velocity: ((1+σ)/σ)²), so one function serves all of them.
"""

from __future__ import annotations

import torch


class SlicedGenerator(torch.Generator):
    """A generator shared by all processes of a data-parallel step that draws for the whole
    global micro-batch (`total` rows) and hands back this process's rows [start, start + n).

    Every process makes the same draws in the same order, so an example's noise and σ depend on
    its global row only, not on the process count: 2 processes × batch B train exactly like
    1 process × batch 2B. With one process (start 0, n = total) it is a plain generator.
    Draws through `randn_on`/`rand_on`/`randint_on` of n rows are sliced; others are plain.
    """

    def __new__(cls, seed: int, total: int, start: int, n: int):
        return super().__new__(cls)  # torch.Generator's constructor takes only a device

    def __init__(self, seed: int, total: int, start: int, n: int):
        super().__init__()
        self.manual_seed(seed)
        self.total, self.start, self.n = total, start, n


def _draw(fn, shape, generator, device) -> torch.Tensor:
    """fn(shape, generator, device) on the generator's device, sliced for a SlicedGenerator."""
    shape = tuple(shape)
    gen_device = generator.device if generator is not None else device
    if isinstance(generator, SlicedGenerator) and shape and shape[0] == generator.n:
        full = fn((generator.total, *shape[1:]), generator, gen_device)
        return full[generator.start : generator.start + generator.n].to(device)
    return fn(shape, generator, gen_device).to(device)


def randn_on(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal drawn on the generator's device (the loop's generator is a CPU one)."""
    return _draw(lambda s, g, d: torch.randn(s, generator=g, device=d), shape, generator, device)


def rand_on(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Uniform [0, 1) drawn on the generator's device."""
    return _draw(lambda s, g, d: torch.rand(s, generator=g, device=d), shape, generator, device)


def drop_labels(
    labels: torch.Tensor, rate: float, null_class: int, generator: torch.Generator | None
) -> torch.Tensor:
    """A copy of `labels`, each replaced by `null_class` (the guidance null) with probability
    `rate`: one uniform draw per label, made even at rate 0 so the generator's use is fixed."""
    out = labels.clone()
    out[rand_on((len(out),), generator, "cpu") < rate] = null_class
    return out


def randint_on(high: int, n: int, generator: torch.Generator | None, device="cpu") -> torch.Tensor:
    """n uniform integers in [0, high) drawn on the generator's device."""
    return _draw(
        lambda s, g, d: torch.randint(high, s, generator=g, device=d), (n,), generator, device
    )


def training_noise(
    x0: torch.Tensor, generator: torch.Generator | None, offset_noise: float = 0.0
) -> torch.Tensor:
    """ε ~ N(0, I), plus offset noise (Guttenberg 2023): offset·N(0, 1) shared per channel."""
    noise = randn_on(x0.shape, generator, x0.device)
    if offset_noise:
        noise = noise + offset_noise * randn_on((*x0.shape[:2], 1, 1), generator, x0.device)
    return noise


def denoising_loss(
    denoiser,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    cond: torch.Tensor | None,
    weight: torch.Tensor,
    learned: bool = False,
) -> torch.Tensor:
    """weight(σ)·mean((D(x0 + σ·n; σ) − x0)²) per example, shape [B].

    With `learned`, the denoiser also returns the log-variance u(σ) and the loss becomes
    L/e^u + u (EDM2, Karras et al. 2024, Eq. 21).
    """
    x = x0.float() + sigma.view(-1, 1, 1, 1) * noise
    if learned:
        denoised, logvar = denoiser(x, sigma, cond, return_logvar=True)
    else:
        denoised = denoiser(x, sigma, cond)
    loss = weight * ((denoised - x0.float()) ** 2).flatten(1).mean(1)
    if learned:
        loss = loss / logvar.exp() + logvar
    return loss
