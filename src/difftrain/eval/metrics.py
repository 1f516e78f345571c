"""Sample-quality metrics as pure functions over feature matrices (N×D, any extractor).

FID: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium" (Eq. 6). KID: Bińkowski et al. 2018, "Demystifying MMD GANs" (unbiased MMD² with the
cubic polynomial kernel, averaged over random subsets). Precision/recall: Kynkäänniemi et al.
2019, "Improved Precision and Recall Metric for Assessing Generative Models" (k-NN manifolds).
All computed in float64 on the CPU.
"""

from __future__ import annotations

import math

import torch


def feature_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D) and unbiased covariance (D×D) of N×D features, in float64."""
    f = feats.double()
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    mu = f.mean(0)
    centered = f - mu
    return mu, centered.T @ centered / (f.shape[0] - 1)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigendecomposition)."""
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """‖μ1−μ2‖² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) between two Gaussians.

    tr((Σ1Σ2)^½) is computed as Σ√λ of the symmetric PSD matrix Σ1^½ Σ2 Σ1^½, which has the same
    eigenvalues as Σ1Σ2 but, unlike scipy.linalg.sqrtm of the product, no complex round-off.
    """
    mu1, mu2, sigma1, sigma2 = mu1.double(), mu2.double(), sigma1.double(), sigma2.double()
    s1_half = _sqrtm_psd(sigma1)
    middle = s1_half @ sigma2 @ s1_half
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    fd = diff @ diff + torch.trace(sigma1) + torch.trace(sigma2) - 2 * tr_covmean
    return max(float(fd), 0.0)


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to real and generated N×D features."""
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef0: float = 1.0):
    """k(x, y) = (xᵀy / d + coef0)^degree, the KID kernel of Bińkowski et al. 2018."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased estimate of MMD² (Gretton et al. 2012, Eq. 3): diagonal terms excluded."""
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError("each set needs at least 2 vectors for an unbiased MMD²")
    k_xx = polynomial_kernel(x, x, degree, coef0)
    k_yy = polynomial_kernel(y, y, degree, coef0)
    k_xy = polynomial_kernel(x, y, degree, coef0)
    t_xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    t_yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(t_xx + t_yy - 2 * k_xy.mean())


def kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std of unbiased MMD² over random subsets.

    Subsets of `subset_size` rows are drawn without replacement, seeded; when a set has no more
    than `subset_size` rows, half of the smaller set is used so that subsets differ and the std
    says something (MMD²_u is unbiased at any subset size, so the mean is unaffected).
    Unlike FID the estimate is unbiased, so it can be negative for near-identical sets.
    """
    real, fake = real.double(), fake.double()
    n_min = min(real.shape[0], fake.shape[0])
    size = subset_size if n_min > subset_size else max(2, n_min // 2)
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(num_subsets):
        ir = torch.randperm(real.shape[0], generator=gen)[:size]
        i_f = torch.randperm(fake.shape[0], generator=gen)[:size]
        values.append(mmd2_unbiased(real[ir], fake[i_f]))
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if num_subsets > 1 else 0.0


def _kth_neighbour_radii(feats: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (the row itself excluded)."""
    radii = []
    for i in range(0, feats.shape[0], batch):
        d = torch.cdist(feats[i : i + batch], feats)  # b×N
        # The smallest distance is the point itself (0); the (k+1)-th is the k-th neighbour.
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _coverage(queries: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, batch: int) -> float:
    """Share of queries inside at least one ball B(ref_j, radii_j)."""
    inside = []
    for i in range(0, queries.shape[0], batch):
        d = torch.cdist(queries[i : i + batch], ref)  # b×M
        inside.append((d <= radii.unsqueeze(0)).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3, batch: int = 1024
) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN radii, plus F1.

    precision: share of generated samples within the real manifold (union of k-NN balls);
    recall: share of real samples within the generated manifold.
    """
    real, fake = real.double(), fake.double()
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    precision = _coverage(fake, real, _kth_neighbour_radii(real, k, batch), batch)
    recall = _coverage(real, fake, _kth_neighbour_radii(fake, k, batch), batch)
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def bits_per_dim(nll_nats: torch.Tensor | float, num_dims: int) -> float | torch.Tensor:
    """Negative log-likelihood in nats per example → bits per dimension."""
    return nll_nats / (num_dims * math.log(2))
