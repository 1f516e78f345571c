"""EDM preconditioning and loss: identities with exact answers (Karras et al. 2022, Table 1)."""

from __future__ import annotations

import torch
from torch import nn

from difftrain.diffusion import EDMLoss, EDMPrecond

SIGMAS = torch.tensor([0.002, 0.05, 0.5, 1.0, 7.0, 80.0])


class IdealSinglePoint(nn.Module):
    """The backbone output F that makes D(x; σ) equal the one data point y exactly."""

    def __init__(self, y: torch.Tensor, sigma_data: float):
        super().__init__()
        self.y, self.sd = y, sigma_data

    def forward(self, x_in, c_noise, cond):
        sigma = (4 * c_noise).exp().view(-1, 1, 1, 1)
        x = x_in * (self.sd**2 + sigma**2).sqrt()  # undo c_in
        c_skip = self.sd**2 / (sigma**2 + self.sd**2)
        c_out = sigma * self.sd / (sigma**2 + self.sd**2).sqrt()
        return (self.y - c_skip * x) / c_out


def test_coefficients_match_table_1():
    pre = EDMPrecond(nn.Identity(), sigma_data=0.5)
    c_skip, c_out, c_in, c_noise = pre.coefficients(SIGMAS)
    sd = 0.5
    # Unit-variance network input: c_in² (σ² + σ_d²) = 1.
    torch.testing.assert_close(c_in**2 * (SIGMAS**2 + sd**2), torch.ones_like(SIGMAS))
    # Unit-variance training target: c_skip² σ² + (1 − c_skip)² σ_d² = c_out².
    torch.testing.assert_close(c_skip**2 * SIGMAS**2 + (1 - c_skip) ** 2 * sd**2, c_out**2)
    # λ(σ) makes the effective weight on the network output 1: λ c_out² = 1.
    torch.testing.assert_close(
        EDMLoss(sigma_data=sd).weight(SIGMAS) * c_out**2, torch.ones_like(SIGMAS)
    )
    torch.testing.assert_close(c_noise, SIGMAS.log() / 4)


def test_training_target_has_unit_variance_when_data_has_sigma_data():
    torch.manual_seed(0)
    sd = 0.5
    pre = EDMPrecond(nn.Identity(), sigma_data=sd)
    x0 = torch.randn(200_000) * sd
    for s in [0.1, 1.0, 10.0]:
        sigma = torch.tensor([s])
        c_skip, c_out, c_in, _ = pre.coefficients(sigma)
        x = x0 + torch.randn_like(x0) * s
        target = (x0 - c_skip * x) / c_out
        assert abs(target.var().item() - 1) < 0.02
        assert abs((c_in * x).var().item() - 1) < 0.02


def test_ideal_single_point_denoiser_is_exact_and_has_zero_loss():
    y = torch.randn(1, 3, 4, 4)
    pre = EDMPrecond(IdealSinglePoint(y, 0.5), sigma_data=0.5)
    x = y + torch.randn(6, 3, 4, 4) * SIGMAS.view(-1, 1, 1, 1)
    torch.testing.assert_close(pre(x, SIGMAS), y.expand(6, -1, -1, -1), atol=2e-4, rtol=1e-4)
    g = torch.Generator().manual_seed(0)
    loss = EDMLoss()(pre, y.expand(16, -1, -1, -1), None, g)
    assert loss.shape == (16,)
    assert loss.max().item() < 1e-6


def test_loss_is_per_example_and_seeded():
    pre = EDMPrecond(lambda x, c, cond: torch.zeros_like(x), sigma_data=0.5)
    x0 = torch.randn(8, 1, 4, 4)
    a = EDMLoss()(pre, x0, None, torch.Generator().manual_seed(3))
    b = EDMLoss()(pre, x0, None, torch.Generator().manual_seed(3))
    assert a.shape == (8,) and torch.equal(a, b)
    c = EDMLoss()(pre, x0, None, torch.Generator().manual_seed(4))
    assert (a != c).all()  # another seed draws other σ and noise for every example
    # Per example: an example's loss depends on its own x0 only (here x0[0] changes).
    x1 = x0.clone()
    x1[0] += 1.0
    d = EDMLoss()(pre, x1, None, torch.Generator().manual_seed(3))
    assert d[0] != a[0] and torch.equal(d[1:], a[1:])


def test_sigma_sampling_is_log_normal():
    loss = EDMLoss(p_mean=-1.2, p_std=1.2)
    s = loss.sample_sigma(100_000, torch.Generator().manual_seed(0), "cpu")
    assert abs(s.log().mean().item() + 1.2) < 0.02
    assert abs(s.log().std().item() - 1.2) < 0.02
