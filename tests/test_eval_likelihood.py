"""Probability-flow likelihood against the closed form of a Gaussian dataset.

For data x0 ~ N(μ, Σ) the exact denoiser is D(x; σ) = μ + Σ(Σ + σ²I)⁻¹(x − μ), and the density
that the ODE transports to σ_min is N(μ, Σ + σ_min² I): both known exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

from difftrain.eval.likelihood import LOG2_BIN, dequantize, nll_bits_per_dim, ode_log_likelihood

from .eval_helpers import single_thread  # noqa: F401 (autouse fixture)

SHAPE = (1, 3, 3)  # 9 dimensions
D = 9


class GaussianDenoiser:
    """The exact posterior mean E[x0 | x] for x0 ~ N(μ, Σ), x = x0 + σ·ε."""

    def __init__(self, mu: torch.Tensor, cov: torch.Tensor):
        self.mu, self.cov = mu, cov

    def __call__(self, x, sigma, cond=None):
        xs = x.double().flatten(1)
        s2 = sigma.double().view(-1, 1, 1) ** 2
        eye = torch.eye(len(self.mu), dtype=torch.float64)
        gain = self.cov @ torch.linalg.inv(self.cov + s2 * eye)  # B×D×D
        out = self.mu + (gain @ (xs - self.mu).unsqueeze(-1)).squeeze(-1)
        return out.to(x.dtype).view_as(x)


@pytest.fixture(scope="module")
def gauss():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=g, dtype=torch.float64) * 0.15
    cov = a @ a.T + 0.02 * torch.eye(D, dtype=torch.float64)  # std 0.14 … 0.6, like pixels
    mu = torch.randn(D, generator=g, dtype=torch.float64) * 0.2
    return mu, cov, GaussianDenoiser(mu, cov)


def closed_form_logp(x: torch.Tensor, mu, cov, sigma_min: float = 0.002) -> torch.Tensor:
    dist = torch.distributions.MultivariateNormal(
        mu, cov + sigma_min**2 * torch.eye(D, dtype=torch.float64)
    )
    return dist.log_prob(x.double().flatten(1))


def samples(mu, cov, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, D, generator=g, dtype=torch.float64)
    return (mu + z @ torch.linalg.cholesky(cov).T).float().view(n, *SHAPE)


def test_exact_trace_matches_closed_form_and_converges(gauss):
    mu, cov, den = gauss
    x = samples(mu, cov, 64, seed=1)
    truth = closed_form_logp(x, mu, cov)
    errs = {}
    for steps in (16, 64):
        out = ode_log_likelihood(den, x, steps=steps, trace="exact")
        errs[steps] = float((out["logp"] - truth).abs().mean()) / D / math.log(2)  # bits/dim
    assert errs[64] < 0.01
    assert errs[64] < errs[16] / 6  # second order: 4× the steps, ~16× smaller error


def test_hutchinson_estimate_is_unbiased(gauss):
    mu, cov, den = gauss
    x = samples(mu, cov, 256, seed=2)
    truth = closed_form_logp(x, mu, cov)
    out = ode_log_likelihood(den, x, steps=48, generator=torch.Generator().manual_seed(3))
    err = out["logp"] - truth
    assert abs(float(err.mean())) < 4 * float(err.std()) / math.sqrt(len(err)) + 0.03 * D
    assert float(err.std()) > 0  # one probe per example: noisy per example, right on average


def test_bits_per_dim_of_quantized_gaussian_data(gauss):
    mu, cov, den = gauss
    x = samples(mu, cov, 64, seed=4).clamp(-1, 1)
    u8 = ((x + 1) * 127.5).round().to(torch.uint8)
    res = nll_bits_per_dim(den, u8, steps=64, seed=5, batch_size=64, trace="exact")
    # The same dequantized points the function saw (same seeded generator, one batch).
    y = dequantize(u8, torch.Generator().manual_seed(5))
    expected = float((-closed_form_logp(y, mu, cov)).mean()) / (D * math.log(2)) + LOG2_BIN
    assert res["bpd"] == pytest.approx(expected, abs=0.01)
    assert res["nfe"] == 128
    hutch = nll_bits_per_dim(den, u8, steps=64, seed=5, batch_size=64)
    assert hutch == nll_bits_per_dim(den, u8, steps=64, seed=5, batch_size=64)  # deterministic
    assert hutch["bpd"] == pytest.approx(expected, abs=0.1)


def test_log2_bin_convention():
    # 256 levels on [-1, 1] at spacing 1/127.5: the bin width is 1/127.5.
    assert LOG2_BIN == pytest.approx(math.log2(127.5))
    u8 = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    y = dequantize(u8, torch.Generator().manual_seed(0))
    assert (y.flatten() - torch.tensor([-1.0, 1.0])).abs().max() <= 0.5 / 127.5
