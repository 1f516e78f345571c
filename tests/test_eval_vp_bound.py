"""The VP variational bound (bits/dim) built from diffusion/vlb.py's terms."""

from __future__ import annotations

import math

import pytest
import torch

from difftrain.config import load_config
from difftrain.data import load_data
from difftrain.diffusion.betas import make_alphas_cumprod
from difftrain.eval.evaluate import likelihood
from difftrain.eval.likelihood import LOG2_BIN
from difftrain.eval.vp_bound import vp_bound_bpd
from difftrain.pipeline.build import build_denoiser

from .conftest import TINY
from .eval_helpers import single_thread  # noqa: F401 (autouse fixture)
from .test_eval_likelihood import D, GaussianDenoiser, closed_form_logp, samples


@pytest.fixture(scope="module")
def quantized_gaussian():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=g, dtype=torch.float64) * 0.15
    cov = a @ a.T + 0.02 * torch.eye(D, dtype=torch.float64)
    mu = torch.randn(D, generator=g, dtype=torch.float64) * 0.2
    x = samples(mu, cov, 48, seed=4).clamp(-1, 1)
    u8 = ((x + 1) * 127.5).round().to(torch.uint8)
    return mu, cov, GaussianDenoiser(mu, cov), u8


def test_bound_lies_above_the_data_entropy(quantized_gaussian):
    mu, cov, den, u8 = quantized_gaussian
    ac = make_alphas_cumprod("linear", 1000)
    vlb = vp_bound_bpd(den, u8, None, ac)
    assert vlb["timesteps"] == 1000
    # Cross-entropy ≥ entropy: on average no model beats −log₂ p_data (+ the bin width).
    x = u8.float() / 127.5 - 1
    entropy = float(-closed_form_logp(x, mu, cov, 0.0).mean()) / (D * math.log(2)) + LOG2_BIN
    assert entropy < vlb["bpd"] < entropy + 1.5


def test_subsampled_timesteps_estimate_the_full_sum_without_bias(quantized_gaussian):
    _, _, den, u8 = quantized_gaussian
    ac = make_alphas_cumprod("linear", 1000)
    full = vp_bound_bpd(den, u8, None, ac)["bpd"]
    est = torch.tensor(
        [vp_bound_bpd(den, u8, None, ac, timesteps=100, seed=s)["bpd"] for s in range(12)]
    )
    assert abs(float(est.mean()) - full) < 4 * float(est.std()) / math.sqrt(len(est)) + 1e-3


@pytest.mark.parametrize("objective", ["vp", "iddpm"])
def test_vp_runs_report_both_likelihoods(objective):
    cfg = load_config(
        TINY, [f"diffusion.objective={objective}", "diffusion.num_train_timesteps=50"]
    )
    data = load_data(cfg.data)
    torch.manual_seed(0)
    den = build_denoiser(cfg, data.num_classes).eval()
    out = likelihood(den, cfg, data, num=4, steps=3, seed=0, vlb_timesteps=10)
    assert set(out) == {"nll_bpd", "nll_bpd_sem", "vlb_bpd", "vlb_bpd_sem"}
    assert all(math.isfinite(v) for v in out.values()) and out["vlb_bpd"] > 0
