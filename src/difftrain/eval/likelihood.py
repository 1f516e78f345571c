"""Negative log-likelihood in bits/dim through the probability-flow ODE, for any denoiser D.

Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations",
§4.3 and App. D.2 (Eq. 39-40): the ODE dx/dσ = (x − D(x; σ))/σ (Karras et al. 2022, Eq. 3 with
σ(t) = t) is a continuous normalizing flow, so by the instantaneous change of variables

    log p_σmin(x) = log N(x(σ_max); 0, σ_max² I) + ∫_{σmin}^{σmax} div f dσ,

with div f = (d − tr ∂D/∂x)/σ (d = number of dimensions).
tr ∂D/∂x uses the Hutchinson estimator εᵀ(∂D/∂x)ε with one fixed Rademacher ε per example
(Hutchinson 1989; Grathwohl et al. 2019, FFJORD), one vector-Jacobian product per evaluation.
The augmented ODE (x, log p) is solved with Heun's method on the sampler's σ grid (Karras et al.
2022, Eq. 5, ρ = 7, run upwards): trajectories are nearly straight in σ, so x(σ_max), and with it
the prior term, is accurate with few steps (a log-σ grid needs several times more).

Discretization convention: pixels k ∈ {0..255} map to x = k/127.5 − 1 (`data.to_model_range`),
so each pixel owns a bin of width Δ = 1/127.5 centred on x. With uniform dequantization
u ~ U(−Δ/2, Δ/2)^d, Jensen's inequality gives −log₂ P(k) ≤ E_u[−log₂ p(x + u)] + d·log₂(127.5)
(Theis et al. 2016, "A note on the evaluation of generative models"), so

    bits/dim = −log p(x + u) / (d ln 2) + log₂ 127.5        (log₂ 127.5 ≈ 6.994)

is an upper bound on the discrete NLL, up to ODE and estimator error. (Song et al.'s code maps
to [−1, 1] with bin width 1/128 and adds 7; our bins are 1/127.5 wide.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from difftrain.samplers import karras_sigmas

LOG2_BIN = math.log2(127.5)  # −log₂ of the bin width Δ = 1/127.5 in the [-1, 1] data space


def gaussian_logp(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(x; 0, σ² I) per example (summed over all but the first dimension)."""
    d = x[0].numel()
    return -0.5 * (x.flatten(1).double() ** 2).sum(1) / sigma**2 - d * (
        math.log(sigma) + 0.5 * math.log(2 * math.pi)
    )


def _drift_and_div(
    denoiser: Callable, x: torch.Tensor, sigma: float, cond, eps: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx/dσ, σ·div f) at σ. eps = None computes the exact trace (d backward passes)."""
    d = x[0].numel()
    sig = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        den = denoiser(xg, sig, cond)
        if eps is not None:
            (vjp,) = torch.autograd.grad((den * eps).sum(), xg)
            trace = (vjp * eps).flatten(1).sum(1)
        else:  # exact: row i of the Jacobian from the i-th output, diagonal element picked
            flat = den.flatten(1)
            trace = torch.zeros(x.shape[0], device=x.device)
            for i in range(d):
                (g,) = torch.autograd.grad(flat[:, i].sum(), xg, retain_graph=i < d - 1)
                trace += g.flatten(1)[:, i]
    return (x - den.detach()) / sigma, (d - trace.detach()).double()


def ode_log_likelihood(
    denoiser: Callable,
    x: torch.Tensor,
    cond: torch.Tensor | None = None,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    steps: int = 32,
    rho: float = 7.0,
    trace: str = "hutchinson",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """log p_σmin(x) in nats per example, with its prior and divergence terms (float64, [B]).

    trace: 'hutchinson' (one Rademacher probe per example, fixed along the path) or 'exact'.
    """
    if trace not in ("hutchinson", "exact"):
        raise ValueError(f"trace={trace!r}: allowed 'hutchinson' or 'exact'")
    x = x.float()
    eps = None
    if trace == "hutchinson":
        eps = torch.randint(0, 2, x.shape, generator=generator).float().mul(2).sub(1).to(x.device)
    sigmas = karras_sigmas(steps + 1, sigma_min, sigma_max, rho).double().flip(0)[1:]  # ascending
    delta = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    f, div = _drift_and_div(denoiser, x, float(sigmas[0]), cond, eps)
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x_pred = x + (s_next - s) * f
        f_next, div_next = _drift_and_div(denoiser, x_pred, s_next, cond, eps)
        x = x + (s_next - s) * (f + f_next) / 2
        delta += math.log(s_next / s) * (div + div_next) / 2  # ∫ σ·div f d(log σ)
        if i < steps - 1:  # Heun: re-evaluate at the corrected point for the next step
            f, div = _drift_and_div(denoiser, x, s_next, cond, eps)
    prior = gaussian_logp(x, sigma_max).to(delta.device)
    return {"logp": prior + delta, "prior_logp": prior, "delta_logp": delta}


def dequantize(images_uint8: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """uint8 pixels → x + u in [-1, 1] space, u ~ U(−Δ/2, Δ/2), Δ = 1/127.5."""
    x = images_uint8.float() / 127.5 - 1
    return x + (torch.rand(x.shape, generator=generator) - 0.5) / 127.5


@torch.no_grad()
def nll_bits_per_dim(
    denoiser: Callable,
    images_uint8: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    steps: int = 32,
    seed: int = 0,
    batch_size: int = 64,
    dequantize_data: bool = True,
    trace: str = "hutchinson",
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Mean NLL in bits/dim of uint8 images (see the module docstring for the convention).

    Returns {'bpd', 'bpd_sem' (standard error over images), 'nfe' (per image, with backward)}.
    Deterministic given `seed`: dequantization and Hutchinson probes come from one generator.
    """
    gen = torch.Generator().manual_seed(seed)
    d = images_uint8[0].numel()
    bpds = []
    for i in range(0, len(images_uint8), batch_size):
        u8 = images_uint8[i : i + batch_size]
        x = dequantize(u8, gen) if dequantize_data else u8.float() / 127.5 - 1
        cond = None if labels is None else labels[i : i + batch_size].to(device)
        out = ode_log_likelihood(
            denoiser,
            x.to(device),
            cond,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            steps=steps,
            trace=trace,
            generator=gen,
        )
        bpds.append(-out["logp"].cpu() / (d * math.log(2)) + LOG2_BIN)
    bpd = torch.cat(bpds)
    sem = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
    return {"bpd": float(bpd.mean()), "bpd_sem": sem, "nfe": 2 * steps}
