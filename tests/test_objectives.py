"""Objectives, preconditionings and weightings through the denoiser contract; config checks."""

from __future__ import annotations

import math
import typing

import pytest
import torch

from difftrain.config import ConfigError, load_config
from difftrain.config.schema import SampleConfig
from difftrain.diffusion import (
    EDMLoss,
    FlowLoss,
    FlowPrecond,
    IDDPMLoss,
    IDDPMPrecond,
    VPLoss,
    VPPrecond,
    Weighting,
    WithLogVar,
    make_alphas_cumprod,
    vp_sigmas,
)
from difftrain.diffusion.loss import training_noise
from difftrain.pipeline.build import build_sigmas
from difftrain.samplers import SAMPLERS
from tests.conftest import TINY

AC = make_alphas_cumprod("linear", 1000)


def test_vp_sigma_to_t_inverts_the_table():
    den = VPPrecond(lambda x, t, c: x, AC, "eps")
    t = torch.tensor([0.0, 1.0, 17.0, 500.0, 998.0, 999.0])
    torch.testing.assert_close(den.sigma_to_t(den.train_sigmas[t.long()]), t, atol=2e-3, rtol=0)
    frac = torch.tensor([0.5, 12.25, 700.75])
    torch.testing.assert_close(den.sigma_to_t(den.t_to_sigma(frac)), frac, atol=2e-3, rtol=0)
    assert den.sigma_to_t(torch.tensor([1e-6, 1e6])).tolist() == [0.0, 999.0]  # clamped


def test_flow_precond_and_loss_are_velocity_matching():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 2, 4, 4, generator=g), torch.randn(8, 2, 4, 4, generator=g)
    t = torch.rand(8, generator=g) * 0.98 + 0.01
    sigma = t / (1 - t)
    v = eps - x0
    delta = 0.1 * torch.randn(8, 2, 4, 4, generator=g)
    seen = {}

    def net(x_in, c_noise, cond):
        seen["x_t"], seen["t"] = x_in, c_noise
        return v + delta

    den = FlowPrecond(net)
    out = den(x0 + sigma.view(-1, 1, 1, 1) * eps, sigma)
    tt = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["x_t"], (1 - tt) * x0 + tt * eps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen["t"], 1000 * t, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out, x0 - tt * delta, rtol=1e-4, atol=1e-5)
    # The loss is the velocity MSE: with draws (t, ε) reproduced, it equals mean(δ²).
    loss = FlowLoss()
    gen = torch.Generator().manual_seed(3)
    t2 = loss.sample_t(8, gen, "cpu")
    eps2 = torch.randn(x0.shape, generator=gen)
    v2 = eps2 - x0
    got = loss(FlowPrecond(lambda x, c, k: v2 + delta), x0, None, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, (delta**2).flatten(1).mean(1), rtol=1e-3, atol=1e-6)
    assert abs(torch.logit(t2).mean().item()) < 1.5  # logit-normal around 0


def test_logit_normal_times():
    z = torch.logit(FlowLoss(0.5, 0.8).sample_t(50_000, torch.Generator().manual_seed(0), "cpu"))
    assert abs(z.mean().item() - 0.5) < 0.02 and abs(z.std().item() - 0.8) < 0.02


def test_weightings_in_x0_space():
    sigma = torch.tensor([0.1, 0.5, 2.0, 10.0])
    snr = sigma**-2
    native = torch.full_like(sigma, 7.0)
    assert torch.equal(Weighting("uniform")(sigma, native), native)
    torch.testing.assert_close(Weighting("min-snr", gamma=5)(sigma, native), snr.clamp(max=5))
    torch.testing.assert_close(
        Weighting("soft-min-snr", gamma=5)(sigma, native), snr * 5 / (snr + 5)
    )
    # soft-min-snr with γ = 1/σ_d² is k-diffusion's: x0 weight 1/(σ² + σ_d²).
    torch.testing.assert_close(
        Weighting("soft-min-snr", gamma=4)(sigma, native), 1 / (sigma**2 + 0.25)
    )
    torch.testing.assert_close(
        Weighting("edm")(sigma, native), (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    )


def test_learned_uncertainty_weighting():
    """EDM2: loss = L/e^u + u with u(σ) trained with the network; starts at u = 0."""
    den = WithLogVar(VPPrecond(lambda x, t, c: torch.zeros_like(x), AC, "x0"))
    x0 = torch.randn(6, 1, 4, 4)
    plain = VPLoss(AC, "x0")(den, x0, None, torch.Generator().manual_seed(0))
    learned = VPLoss(AC, "x0", Weighting("learned"))(
        den, x0, None, torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(learned, plain)  # u = 0 at init
    with torch.no_grad():
        den.logvar.linear.bias.fill_(0.5)
    learned = VPLoss(AC, "x0", Weighting("learned"))(
        den, x0, None, torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(learned, plain / torch.exp(torch.tensor(0.5)) + 0.5)
    assert {n for n, _ in den.named_parameters()} == {"logvar.linear.weight", "logvar.linear.bias"}
    out, u = den(x0, torch.full((6,), 1.0), None, return_logvar=True)
    assert out.shape == x0.shape and u.shape == (6,)


def test_offset_noise_adds_a_shared_per_channel_offset():
    x0 = torch.zeros(4000, 3, 4, 4)
    n = training_noise(x0, torch.Generator().manual_seed(0), offset_noise=0.5)
    per_channel_mean = n.mean((2, 3))
    assert abs(per_channel_mean.var().item() - (0.25 + 1 / 16)) < 0.02
    assert abs(n.var().item() - 1.25) < 0.02


def test_iddpm_hybrid_loss():
    """L_simple + λ·T·L_vlb; the VLB term trains only the variance channels (stop-gradient)."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(2, 1, 1, 1) * 0.1)

    def net(x, t, c):  # 1 image channel in, 2 out: (ε, v)
        return torch.cat([x * w[0], x * w[1]], 1)

    den = IDDPMPrecond(net, AC, "eps")
    x0 = torch.rand(8, 1, 4, 4) * 2 - 1
    hybrid = IDDPMLoss(AC, "eps")(den, x0, None, torch.Generator().manual_seed(1))
    simple = VPLoss(AC, "eps")(den, x0, None, torch.Generator().manual_seed(1))
    assert hybrid.shape == (8,) and torch.isfinite(hybrid).all()
    assert (hybrid >= simple - 1e-6).all()  # KL and NLL are non-negative
    (hybrid - simple).sum().backward()
    assert w.grad[0].abs().item() == 0 and w.grad[1].abs().item() > 0
    only_simple = IDDPMLoss(AC, "eps", vlb_weight=0.0)(
        den, x0, None, torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(only_simple, simple)
    x0_hat, var = den(x0, torch.ones(8), None, return_variance=True)
    assert x0_hat.shape == var.shape == x0.shape


def hybrid_loss_reference(ac, x0, eps, t, eps_net, v_net, lam=0.001):
    """L_simple + λ·T·L_t per example, written out from the papers in float64 with
    torch.distributions (sharing no code with difftrain.diffusion):
    Ho et al. 2020 Eq. 4 (x_t), 6-7 (posterior mean and β̃_t), 13 (discretized decoder),
    14 (L_simple); Nichol & Dhariwal 2021 Eq. 15 (Σ_θ = exp(v log β_t + (1−v) log β̃_t),
    v = (out+1)/2) and Sec. 3.1 (stop-gradient mean), with improved-diffusion's β̃_0 := β̃_1."""
    from torch.distributions import Normal, kl_divergence

    ac = ac.double()
    T, out = len(ac), []
    for i in range(len(t)):
        k = int(t[i])
        a, a_prev = ac[k], (ac[k - 1] if k > 0 else torch.tensor(1.0, dtype=torch.float64))
        beta = 1 - a / a_prev
        x_t = a.sqrt() * x0[i] + (1 - a).sqrt() * eps[i]
        e_hat = eps_net(x_t)
        simple = ((e_hat - eps[i]) ** 2).mean()
        x0_hat = (x_t - (1 - a).sqrt() * e_hat) / a.sqrt()

        def post_mean(x0_, a=a, a_prev=a_prev, beta=beta, x_t=x_t):
            return (a_prev.sqrt() * beta / (1 - a)) * x0_ + (
                (1 - beta).sqrt() * (1 - a_prev) / (1 - a)
            ) * x_t

        def beta_tilde(j):
            a_j, a_jp = ac[j], (ac[j - 1] if j > 0 else torch.tensor(1.0, dtype=torch.float64))
            return (1 - a_jp) / (1 - a_j) * (1 - a_j / a_jp)

        frac = (v_net(x_t) + 1) / 2
        log_var = frac * beta.log() + (1 - frac) * beta_tilde(max(k, 1)).log()
        model = Normal(post_mean(x0_hat), (0.5 * log_var).exp())
        if k > 0:
            nats = kl_divergence(Normal(post_mean(x0[i]), beta_tilde(k).sqrt()), model).mean()
        else:  # −log of the probability of x0's 8-bit bin; the edge bins reach ±∞
            hi = torch.where(x0[i] > 0.999, 1.0, model.cdf(x0[i] + 1 / 255))
            lo = torch.where(x0[i] < -0.999, 0.0, model.cdf(x0[i] - 1 / 255))
            nats = -(hi - lo).log().mean()
        out.append(simple + lam * T * nats / math.log(2))
    return torch.stack(out)


def test_iddpm_hybrid_loss_matches_the_papers_closed_forms():
    """IDDPMLoss per example against `hybrid_loss_reference` at fixed timesteps, t = 0 (decoder
    NLL) included; the noise is the loss's own first draw from the generator."""
    ac = make_alphas_cumprod("cosine", 1000)
    # Not t = 999: there the cosine ᾱ (2.4e-9) is below the 2^-24 floor of vp_sigmas, so the
    # training x_t uses the floored σ while the posterior uses the true ᾱ.
    t = torch.tensor([0, 0, 1, 10, 250, 500, 900, 998])
    x0 = (torch.randint(0, 256, (8, 1, 3, 3), generator=torch.Generator().manual_seed(2)) / 127.5
          - 1).float()  # fmt: skip
    eps_net = lambda x: 0.8 * x + 0.1  # noqa: E731
    v_net = lambda x: 0.9 * torch.tanh(x)  # noqa: E731
    den = IDDPMPrecond(lambda x, c, cond: torch.cat([eps_net(x), v_net(x)], 1), ac, "eps")
    loss = IDDPMLoss(ac, "eps")
    loss.sample_timesteps = lambda n, g: t  # fixed timesteps; the generator draws only ε
    got = loss(den, x0, None, torch.Generator().manual_seed(1))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    ref = hybrid_loss_reference(ac, x0.double(), eps.double(), t, eps_net, v_net)
    torch.testing.assert_close(got.double(), ref, rtol=2e-3, atol=1e-5)
    assert ref[:2].min() > ref[2:].min()  # the decoder NLL term is the large one


def test_edm_loss_defaults_unchanged_by_weighting_option():
    den = lambda x, s, c: torch.zeros_like(x)  # noqa: E731
    x0 = torch.randn(8, 1, 4, 4)
    a = EDMLoss()(den, x0, None, torch.Generator().manual_seed(3))
    b = EDMLoss(weighting=Weighting("edm"))(den, x0, None, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "sets,match",
    [
        (["diffusion.prediction=v"], "diffusion.prediction"),
        (["diffusion.objective=vp", "diffusion.zero_terminal_snr=true"], "diffusion.prediction"),
        (["diffusion.objective=flow", "diffusion.beta_schedule=cosine"], "diffusion.beta_schedule"),
        (
            ["diffusion.objective=vp", "diffusion.beta_schedule=cosine", "diffusion.beta_end=0.01"],
            "beta_end",
        ),
        (["diffusion.objective=vp", "diffusion.p_mean=0"], "diffusion.p_mean"),
        (["diffusion.objective=iddpm", "diffusion.weighting=learned"], "diffusion.weighting"),
        (["diffusion.min_snr_gamma=3"], "diffusion.min_snr_gamma"),
        (["diffusion.objective=vp", "diffusion.logit_std=2"], "diffusion.logit_std"),
        (["diffusion.objective=bogus"], "diffusion.objective"),
        (["sample.eta=0.5"], "sample.eta"),
        (["sample.sampler=dpmpp-2m", "sample.s_churn=10"], "sample.s_churn"),
    ],
)
def test_invalid_combinations_fail_at_config_time(sets, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TINY, sets)


def test_schedule_must_exist_for_the_objective():
    cfg = load_config(TINY, ["sample.schedule=uniform"])
    with pytest.raises(ConfigError, match="sample.schedule"):
        build_sigmas(cfg, 10)
    vp = load_config(TINY, ["diffusion.objective=vp", "sample.schedule=uniform"])
    s = build_sigmas(vp, 10)
    table = vp_sigmas(make_alphas_cumprod("linear", 1000)).float()
    assert len(s) == 11 and s[-1] == 0 and torch.isclose(s[0], table[-1])
    assert len(build_sigmas(vp, 10, "training")) == 1001
    flow = build_sigmas(load_config(TINY, ["diffusion.objective=flow"]), 8, "uniform")
    assert len(flow) == 9 and flow[-1] == 0 and torch.isclose(flow[0], torch.tensor(80.0))


def test_config_sampler_names_match_the_registry():
    names = typing.get_args(SampleConfig.model_fields["sampler"].annotation)
    assert set(names) == set(SAMPLERS)
