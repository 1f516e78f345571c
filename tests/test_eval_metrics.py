"""FID, KID and precision/recall as pure functions: closed forms, unbiasedness, parity."""

from __future__ import annotations

import math

import pytest
import torch

from difftrain.eval import metrics as M

from .eval_helpers import single_thread  # noqa: F401 (autouse fixture)


def gaussian(n: int, d: int, mean: float = 0.0, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + mean


def test_fid_of_a_set_with_itself_is_zero():
    x = gaussian(400, 32)
    assert M.fid(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_the_closed_form_for_isotropic_gaussians():
    d, s = 16, 1.7
    mu2 = torch.full((d,), 0.5, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    fd = M.frechet_distance(torch.zeros(d, dtype=torch.float64), eye, mu2, s**2 * eye)
    # ‖μ1 − μ2‖² + tr(I + s²I − 2sI) = d·0.25 + d(1 − s)²
    assert fd == pytest.approx(d * 0.25 + d * (1 - s) ** 2, rel=1e-10)


def test_frechet_distance_matches_torchmetrics_on_full_rank_covariances():
    from torchmetrics.image.fid import _compute_fid

    a, b = gaussian(300, 12, seed=1), gaussian(300, 12, 0.3, 1.4, seed=2)
    a[:, 1] += 0.8 * a[:, 0]  # correlated features, so the matrix square root matters
    ours = M.fid(a, b)
    ref = float(_compute_fid(*M.feature_stats(a), *M.feature_stats(b)))
    assert ours == pytest.approx(ref, rel=1e-6)


def test_mmd2_unbiased_matches_torchmetrics_poly_mmd():
    from torchmetrics.image.kid import poly_mmd

    a, b = gaussian(60, 8, seed=3), gaussian(60, 8, 0.2, seed=4)  # torchmetrics assumes m = n
    assert M.mmd2_unbiased(a, b) == pytest.approx(float(poly_mmd(a, b)), rel=1e-9)


def test_kid_is_unbiased_under_the_same_distribution():
    # Many independent pairs of small sets from one Gaussian: the mean MMD² is 0 within 4 SE,
    # although every biased (V-statistic) estimate would be positive.
    vals = [
        M.mmd2_unbiased(gaussian(20, 4, seed=2 * i), gaussian(20, 4, seed=2 * i + 1))
        for i in range(300)
    ]
    t = torch.tensor(vals)
    assert abs(t.mean()) < 4 * t.std() / math.sqrt(len(t))
    assert (t < 0).any()  # an unbiased estimator of 0 must go negative sometimes


def test_kid_matches_the_population_mmd_of_discrete_distributions():
    # P and Q uniform on a few points: the exact MMD² is a finite average of kernel values.
    g = torch.Generator().manual_seed(5)
    p_pts = torch.randn(5, 3, generator=g, dtype=torch.float64)
    q_pts = torch.randn(5, 3, generator=g, dtype=torch.float64) + 0.7
    k = M.polynomial_kernel
    exact = float(k(p_pts, p_pts).mean() + k(q_pts, q_pts).mean() - 2 * k(p_pts, q_pts).mean())
    vals = []
    for _ in range(2000):
        x = p_pts[torch.randint(0, 5, (6,), generator=g)]
        y = q_pts[torch.randint(0, 5, (6,), generator=g)]
        vals.append(M.mmd2_unbiased(x, y))
    t = torch.tensor(vals)
    assert float(t.mean()) == pytest.approx(exact, abs=4 * float(t.std()) / math.sqrt(len(t)))


def test_kid_separates_distributions_and_reports_subset_spread():
    a, b = gaussian(300, 8, seed=6), gaussian(300, 8, 0.5, seed=7)
    same_mean, _ = M.kid(a, gaussian(300, 8, seed=8), num_subsets=50)
    diff_mean, diff_std = M.kid(a, b, num_subsets=50)
    assert diff_mean > 10 * abs(same_mean)
    assert diff_std > 0  # subsets differ when the sets are smaller than subset_size
    assert M.kid(a, b, num_subsets=50, seed=1) == M.kid(a, b, num_subsets=50, seed=1)
    assert M.kid(a, b, num_subsets=50, seed=2) != M.kid(a, b, num_subsets=50, seed=1)


def test_precision_recall_identical_sets_are_one():
    x = gaussian(200, 6)
    assert M.precision_recall(x, x) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_precision_recall_detects_mode_dropping_and_off_manifold_samples():
    real = torch.cat([gaussian(150, 2, -10, seed=9), gaussian(150, 2, 10, seed=10)])
    dropped = gaussian(300, 2, -10, seed=11)  # only one of the two modes
    pr = M.precision_recall(real, dropped)
    assert pr["precision"] > 0.9
    assert 0.4 < pr["recall"] < 0.6
    far = gaussian(300, 2, 100, seed=12)
    assert M.precision_recall(real, far) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_precision_recall_needs_more_samples_than_k():
    with pytest.raises(ValueError, match="k=3"):
        M.precision_recall(gaussian(3, 2), gaussian(10, 2))
