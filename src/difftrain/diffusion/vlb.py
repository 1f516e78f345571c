"""Variational-bound terms of a discrete-time VP diffusion, as pure functions (nats unless
named *_bpd). Ho et al. 2020, Sec. 3.3 (decoder) and Eq. 5-7; Nichol & Dhariwal 2021, Sec. 3.1
(learned-range variance). Used by the IDDPM hybrid loss and for bits/dim reports.

Tables are indexed by integer timestep t; ᾱ_{−1} = 1.
"""

from __future__ import annotations

import math

import torch

LOG2 = math.log(2.0)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log P(x) per element for data in [-1, 1] quantised to 256 bins of width 2/255, under
    N(means, e^{2·log_scales}); the edge bins extend to ±∞ (Ho et al. 2020, Eq. 13)."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = torch.special.ndtr(inv_std * (centered + 1 / 255))
    cdf_min = torch.special.ndtr(inv_std * (centered - 1 / 255))
    log_cdf_plus = torch.special.log_ndtr(inv_std * (centered + 1 / 255))
    log_one_minus_cdf_min = torch.special.log_ndtr(-inv_std * (centered - 1 / 255))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta)
    )


def posterior_tables(alphas_cumprod: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-timestep constants of q(x_{t−1} | x_t, x0) (Ho et al. 2020, Eq. 6-7), float64.

    mean = coef_x0·x0 + coef_xt·x_t; variance β̃_t; `log_var_clipped` replaces the zero β̃_0
    by β̃_1 (as improved-diffusion does); `log_beta` is log β_t.
    """
    ac = alphas_cumprod.double()
    ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
    betas = 1 - ac / ac_prev
    var = betas * (1 - ac_prev) / (1 - ac)
    return {
        "alphas_cumprod": ac,
        "coef_x0": betas * ac_prev.sqrt() / (1 - ac),
        "coef_xt": (1 - betas).sqrt() * (1 - ac_prev) / (1 - ac),
        "var": var,
        "log_var_clipped": torch.log(torch.cat([var[1:2], var[1:]])),
        "log_beta": torch.log(betas),
    }


def _at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[t] as [B,1,1,1] in like's dtype and device."""
    return table[t.cpu()].to(like.device, like.dtype).view(-1, 1, 1, 1)


def q_posterior(tables: dict, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """(mean, log variance clipped) of q(x_{t−1} | x_t, x0)."""
    mean = _at(tables["coef_x0"], t, x_t) * x0 + _at(tables["coef_xt"], t, x_t) * x_t
    return mean, _at(tables["log_var_clipped"], t, x_t)


def learned_range_log_variance(tables: dict, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Nichol & Dhariwal 2021, Eq. 15: log Σ_θ = frac·log β_t + (1−frac)·log β̃_t, frac = (v+1)/2."""
    frac = (v + 1) / 2
    return frac * _at(tables["log_beta"], t, v) + (1 - frac) * _at(tables["log_var_clipped"], t, v)


def vlb_term_bpd(
    tables: dict,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x0_pred: torch.Tensor,
    model_log_var: torch.Tensor,
) -> torch.Tensor:
    """L_t in bits/dim per example: KL(q(x_{t−1}|x_t,x0) || p_θ(x_{t−1}|x_t)) for t > 0 and the
    discretized decoder NLL −log p_θ(x0|x_1) for t = 0.

    p_θ's mean is the posterior mean at x0_pred, its log variance `model_log_var`.
    """
    true_mean, true_log_var = q_posterior(tables, x0, x_t, t)
    model_mean, _ = q_posterior(tables, x0_pred, x_t, t)
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).flatten(1).mean(1) / LOG2
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
    nll = nll.flatten(1).mean(1) / LOG2
    return torch.where(t.to(x0.device) == 0, nll, kl)


def prior_bpd(tables: dict, x0: torch.Tensor) -> torch.Tensor:
    """L_T in bits/dim per example: KL(q(x_T | x0) || N(0, I))."""
    ac_last = tables["alphas_cumprod"][-1].item()
    mean = math.sqrt(ac_last) * x0
    log_var = torch.full_like(x0, math.log(max(1 - ac_last, 1e-30)))
    kl = normal_kl(mean, log_var, torch.zeros_like(x0), torch.zeros_like(x0))
    return kl.flatten(1).mean(1) / LOG2
