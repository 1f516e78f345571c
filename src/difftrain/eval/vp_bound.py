"""The variational bound (bits/dim) of a discrete-time VP model, through the denoiser contract.

Ho et al. 2020, Eq. 5: L = L_T + Σ_{t≥1} L_{t−1} + L_0, with L_T = KL(q(x_T|x0) ‖ N(0, I)),
L_t = KL(q(x_{t−1}|x_t, x0) ‖ p_θ(x_{t−1}|x_t)) and L_0 the discretized decoder NLL (256 bins
of width 2/255 on [−1, 1]: exactly the pixel grid of `data.to_model_range`, so this is a bound on
the discrete NLL with no dequantization). The terms are the pure functions of
`diffusion/vlb.py`; p_θ's mean is the posterior mean at D's x0̂, its variance the clipped β̃_t
("fixed small") or, for a model that returns one (IDDPM), its learned variance.

x_t relates to the σ-space input of D by x_σ = x_t/√ᾱ_t, σ_t = √((1 − ᾱ_t)/ᾱ_t).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from difftrain.diffusion.betas import vp_sigmas
from difftrain.diffusion.vlb import (
    learned_range_log_variance,
    posterior_tables,
    prior_bpd,
    vlb_term_bpd,
)


def _timesteps(
    num_t: int, sample: int | None, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, weight): all T terms with weight 1; or, with `sample` = k, the first k/2 timesteps
    exactly (where most of the bound and its variance lie) and one random t per stratum of the
    rest, weighted by the stratum size: an unbiased estimate of the sum from k terms."""
    if sample is None or sample >= num_t:
        return torch.arange(num_t), torch.ones(num_t, dtype=torch.float64)
    exact = max(1, sample // 2)
    strata = sample - exact
    edges = torch.linspace(exact, num_t, strata + 1, dtype=torch.float64).round().long()
    lo, hi = edges[:-1], edges[1:]
    t = lo + (torch.rand(strata, generator=gen, dtype=torch.float64) * (hi - lo)).long()
    weights = torch.cat([torch.ones(exact, dtype=torch.float64), (hi - lo).double()])
    return torch.cat([torch.arange(exact), t]), weights


@torch.no_grad()
def vp_bound_bpd(
    denoiser: Callable,
    images_uint8: torch.Tensor,
    labels: torch.Tensor | None,
    alphas_cumprod: torch.Tensor,
    *,
    learned_variance: bool = False,
    timesteps: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Mean variational bound in bits/dim; `timesteps` = None sums all T terms exactly, an
    integer k gives an unbiased estimate from k terms (see `_timesteps`)."""
    tables = posterior_tables(alphas_cumprod)
    sigmas = vp_sigmas(alphas_cumprod)
    gen = torch.Generator().manual_seed(seed)
    ts, weights = _timesteps(len(alphas_cumprod), timesteps, gen)
    totals = []
    for i in range(0, len(images_uint8), batch_size):
        x0 = (images_uint8[i : i + batch_size].float() / 127.5 - 1).to(device)
        cond = None if labels is None else labels[i : i + batch_size].to(device)
        total = prior_bpd(tables, x0).double()
        for t, w in zip(ts.tolist(), weights.tolist(), strict=True):
            s = float(sigmas[t])
            noise = torch.randn(x0.shape, generator=gen).to(device)
            x_sigma = x0 + s * noise
            sig = torch.full((x0.shape[0],), s, device=device)
            tt = torch.full((x0.shape[0],), t, dtype=torch.long)
            if learned_variance:
                x0_pred, v = denoiser(x_sigma, sig, cond, return_variance=True)
                log_var = learned_range_log_variance(tables, v, tt)
            else:
                x0_pred = denoiser(x_sigma, sig, cond)
                log_var = tables["log_var_clipped"][t].to(device, x0.dtype).expand_as(x0)
            x_t = x_sigma / math.sqrt(1 + s * s)  # = √ᾱ_t·x0 + √(1−ᾱ_t)·ε
            term = vlb_term_bpd(tables, x0, x_t, tt, x0_pred, log_var).double()
            total += w * term
        totals.append(total.cpu())
    bpd = torch.cat(totals)
    sem = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
    return {"bpd": float(bpd.mean()), "bpd_sem": sem, "timesteps": len(ts)}
