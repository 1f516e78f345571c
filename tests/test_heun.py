"""Heun sampling (EDM Algorithm 1) on distributions whose ideal denoiser is closed form."""

from __future__ import annotations

import math

import torch

from difftrain.samplers import CFGDenoiser, karras_sigmas, sample_heun

WEIGHTS = torch.tensor([0.3, 0.7], dtype=torch.float64)
MEANS = torch.tensor([-2.0, 1.5], dtype=torch.float64)
STDS = torch.tensor([0.3, 0.5], dtype=torch.float64)


def mixture_denoiser(x, sigma, cond=None):
    """E[x0 | x] for x = x0 + σε with x0 from a 1-D Gaussian mixture (posterior over components)."""
    xs = x.double().reshape(-1, 1)
    s = sigma.double().reshape(-1, 1)
    var = STDS**2 + s**2
    logp = WEIGHTS.log() - 0.5 * (xs - MEANS) ** 2 / var - 0.5 * var.log()
    r = torch.softmax(logp, dim=1)
    post_mean = (STDS**2 * xs + s**2 * MEANS) / var
    return (r * post_mean).sum(1).reshape(x.shape).float()


def test_karras_schedule_endpoints_and_order():
    s = karras_sigmas(10, 0.002, 80.0, 7.0)
    assert len(s) == 11 and s[-1] == 0
    assert math.isclose(s[0].item(), 80.0, rel_tol=1e-6)
    assert math.isclose(s[-2].item(), 0.002, rel_tol=1e-5)
    assert torch.all(s[:-1] > s[1:])


def test_heun_recovers_gaussian_mixture_moments():
    n = 40_000
    g = torch.Generator().manual_seed(0)
    sigmas = karras_sigmas(64, 0.002, 80.0, 7.0)
    x_T = torch.randn(n, 1, 1, 1, generator=g) * sigmas[0]
    x = sample_heun(mixture_denoiser, x_T, sigmas).flatten().double()
    mean = (WEIGHTS * MEANS).sum()
    var = (WEIGHTS * (STDS**2 + MEANS**2)).sum() - mean**2
    assert abs(x.mean() - mean) < 0.03
    assert abs(x.var() - var) < 0.02 * var  # sampling noise at n = 40k is ~0.7%
    # Mixture weight of the left component: mass below the midpoint.
    assert abs((x < -0.25).double().mean() - WEIGHTS[0]) < 0.01


def test_cfg_weight_one_is_plain_conditioning_and_zero_is_unconditional():
    calls = []

    def den(x, sigma, cond):
        calls.append(cond.clone())
        return x * 0 + cond.view(-1, 1, 1, 1).float()

    x = torch.zeros(3, 1, 2, 2)
    sig = torch.ones(3)
    cond = torch.tensor([0, 1, 2])
    torch.testing.assert_close(
        CFGDenoiser(den, 1.0, 9)(x, sig, cond), cond.view(-1, 1, 1, 1).float().expand_as(x)
    )
    torch.testing.assert_close(CFGDenoiser(den, 0.0, 9)(x, sig, cond), torch.full_like(x, 9.0))
    # w = 3: null + 3·(cond − null)
    out = CFGDenoiser(den, 3.0, 9)(x, sig, cond)
    torch.testing.assert_close(out[:, 0, 0, 0], 9 + 3 * (cond.float() - 9))
