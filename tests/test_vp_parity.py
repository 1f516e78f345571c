"""VP schedules, q(x_t|x0), SNR, v-target and learned variance against diffusers (a reference
nobody here wrote). Tolerances: our tables are built in float64, diffusers' in float32; a
1000-term float32 cumprod carries ~1e-6 relative error, so tables agree to rtol 2e-5."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from difftrain.diffusion import VPLoss, VPPrecond, Weighting, make_alphas_cumprod, vp_sigmas
from difftrain.diffusion.vlb import (
    discretized_gaussian_log_likelihood,
    learned_range_log_variance,
    normal_kl,
    posterior_tables,
    q_posterior,
    vlb_term_bpd,
)

SCHEDULES = [  # (ours, diffusers, beta_start, beta_end)
    ("linear", "linear", 1e-4, 0.02),
    ("scaled-linear", "scaled_linear", 0.00085, 0.012),
    ("cosine", "squaredcos_cap_v2", 1e-4, 0.02),
]


def scheduler(kind: str, start: float, end: float, zero_snr: bool = False, **kw) -> DDPMScheduler:
    return DDPMScheduler(
        beta_schedule=kind,
        beta_start=start,
        beta_end=end,
        rescale_betas_zero_snr=zero_snr,
        clip_sample=False,
        **kw,
    )


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("ours,theirs,start,end", SCHEDULES)
def test_alphas_cumprod_match_diffusers(ours, theirs, start, end, zero_snr):
    ref = scheduler(theirs, start, end, zero_snr).alphas_cumprod.double()
    ac = make_alphas_cumprod(ours, 1000, start, end, zero_snr)
    torch.testing.assert_close(ac, ref, rtol=2e-5, atol=1e-7)
    if zero_snr:
        assert ac[-1].item() < 1e-12  # SNR 0 at the last timestep (Lin et al. 2024)


@pytest.mark.parametrize("ours,theirs,start,end", SCHEDULES)
def test_q_sample_snr_and_v_target_match_diffusers(ours, theirs, start, end):
    sch = scheduler(theirs, start, end)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(64, 3, 4, 4, generator=g), torch.randn(64, 3, 4, 4, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    sigma = vp_sigmas(make_alphas_cumprod(ours, 1000, start, end)).float()[t].view(-1, 1, 1, 1)
    # q(x_t | x0) by our σ-space route: x = x0 + σε, x_t = x/√(1+σ²).
    x_t = (x0 + sigma * eps) / (1 + sigma**2).sqrt()
    torch.testing.assert_close(x_t, sch.add_noise(x0, eps, t), rtol=1e-5, atol=2e-6)
    # SNR = 1/σ² (Min-SNR's definition, diffusers.training_utils.compute_snr).
    torch.testing.assert_close(sigma.flatten() ** -2, compute_snr(sch, t), rtol=1e-4, atol=0)
    # v-target: a backbone that outputs diffusers' velocity makes our v-denoiser exact, and a
    # backbone that outputs ε makes our ε-denoiser exact.
    v = sch.get_velocity(x0, eps, t)
    ac = make_alphas_cumprod(ours, 1000, start, end)
    for pred, target in [("v", v), ("eps", eps)]:
        den = VPPrecond(lambda x_in, c_noise, cond, target=target: target, ac, pred)
        torch.testing.assert_close(den(x0 + sigma * eps, sigma.flatten()), x0, rtol=1e-4, atol=3e-4)


@pytest.mark.parametrize("pred", ["eps", "v"])
def test_vp_loss_is_the_mse_on_the_prediction_and_min_snr_matches(pred):
    """VPLoss (measured in x0 space) equals diffusers-style MSE(F, target), and with Min-SNR-γ
    equals the weights of diffusers' examples/train_text_to_image.py."""
    sch = scheduler(
        "linear", 1e-4, 0.02, prediction_type="epsilon" if pred == "eps" else "v_prediction"
    )
    ac = sch.alphas_cumprod
    g0 = torch.Generator().manual_seed(1)
    x0 = torch.randn(16, 2, 4, 4, generator=g0)
    delta = 0.3 * torch.randn(16, 2, 4, 4, generator=g0)
    # Reproduce VPLoss's draws: timesteps, then noise, from the same generator.
    g = torch.Generator().manual_seed(7)
    t = torch.randint(1000, (16,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    target = eps if pred == "eps" else sch.get_velocity(x0, eps, t)
    net = lambda x_in, c_noise, cond: target + delta  # noqa: E731
    den = VPPrecond(net, ac, pred)
    mse = (delta**2).flatten(1).mean(1)
    got = VPLoss(ac, pred)(den, x0, None, torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, mse, rtol=2e-3, atol=1e-5)
    snr = compute_snr(sch, t)
    w = torch.stack([snr, 5.0 * torch.ones_like(snr)], 1).min(1)[0]
    w = w / snr if pred == "eps" else w / (snr + 1)
    got = VPLoss(ac, pred, Weighting("min-snr", gamma=5.0))(
        den, x0, None, torch.Generator().manual_seed(7)
    )
    torch.testing.assert_close(got, w * mse, rtol=2e-3, atol=1e-5)


def test_learned_range_variance_matches_diffusers():
    sch = scheduler("linear", 1e-4, 0.02, variance_type="learned_range")
    tables = posterior_tables(sch.alphas_cumprod)
    v = torch.linspace(-1, 1, 5).view(5, 1, 1, 1)
    for t in [1, 10, 500, 999]:  # t = 0: diffusers uses log(1e-20), we clip to β̃_1 (IDDPM)
        ours = learned_range_log_variance(tables, v.double(), torch.full((5,), t))
        ref = sch._get_variance(t, predicted_variance=v)
        torch.testing.assert_close(ours.float(), ref.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_posterior_tables_are_the_gaussian_conditional_of_the_forward_process(kind):
    """q(x_{t−1} | x_t, x0) by conditioning the joint Gaussian of the forward process
    (x_{t−1} = √ᾱ_{t−1}·x0 + √(1−ᾱ_{t−1})·z, x_t = √α_t·x_{t−1} + √β_t·w), not by the formula
    under test (Ho et al. 2020, Eq. 6-7): mean = m₁ + C₁₂/C₂₂·(x_t − m₂), var = C₁₁ − C₁₂²/C₂₂."""
    ac = make_alphas_cumprod(kind, 1000)
    tables = posterior_tables(ac)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    alpha = ac / ac_prev  # α_t = 1 − β_t
    c11, c22 = 1 - ac_prev, 1 - ac  # Var(x_{t−1} | x0), Var(x_t | x0)
    c12 = alpha.sqrt() * c11  # Cov(x_{t−1}, x_t | x0)
    # mean = √ᾱ_{t−1}·x0 + c12/c22·(x_t − √ᾱ_t·x0): collect the x0 and x_t coefficients.
    coef_xt = c12 / c22
    coef_x0 = ac_prev.sqrt() - coef_xt * ac.sqrt()
    var = c11 - c12**2 / c22
    torch.testing.assert_close(tables["coef_xt"], coef_xt, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(tables["coef_x0"], coef_x0, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(tables["var"], var, rtol=1e-9, atol=1e-15)
    assert tables["var"][0] == 0  # x_{−1} = x0 exactly
    # The clipped log variance replaces only t = 0 (improved-diffusion); log β is log(1 − α).
    torch.testing.assert_close(tables["log_var_clipped"][1:], var[1:].log())
    assert tables["log_var_clipped"][0] == tables["log_var_clipped"][1]
    torch.testing.assert_close(tables["log_beta"], (1 - alpha).log())


def test_vlb_pieces_are_exact():
    g = torch.Generator().manual_seed(0)
    m1, m2 = (
        torch.randn(100, generator=g, dtype=torch.float64),
        torch.randn(100, generator=g, dtype=torch.float64),
    )
    lv1, lv2 = (
        torch.randn(100, generator=g, dtype=torch.float64),
        torch.randn(100, generator=g, dtype=torch.float64),
    )
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()),
        torch.distributions.Normal(m2, (0.5 * lv2).exp()),
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref)
    # The discretized decoder is a distribution over the 256 pixel values.
    bins = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_scale in [(0.0, -3.0), (0.7, -1.0), (-0.99, -5.0)]:
        logp = discretized_gaussian_log_likelihood(
            bins, torch.full_like(bins, mean), torch.full_like(bins, log_scale)
        )
        assert abs(logp.exp().sum().item() - 1) < 1e-9
    # A model with the true x0 and the true posterior variance has L_t = 0 for t > 0.
    tables = posterior_tables(make_alphas_cumprod("cosine", 1000))
    x0 = torch.rand(4, 1, 3, 3, dtype=torch.float64) * 2 - 1
    x_t = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    t = torch.tensor([1, 10, 500, 999])
    _, true_log_var = q_posterior(tables, x0, x_t, t)
    lt = vlb_term_bpd(tables, x0, x_t, t, x0, true_log_var.expand_as(x0))
    assert lt.abs().max().item() < 1e-12
