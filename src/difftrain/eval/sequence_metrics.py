"""Metrics of generated sequences used in the time-series generation literature.

All take windows as arrays N×L×C (real and generated may differ in N):
- `marginal_wasserstein`: per-channel 1-Wasserstein distance between the value distributions
  (scipy.stats.wasserstein_distance), in data units; 0 for identical marginals.
- `autocorrelation_error`: mean absolute difference of the mean autocorrelation function
  (lags 1..max_lag, per channel) of the two sets; 0 for identical data.
- `discriminative_score`: held-out accuracy of a small classifier (an MLP on the normalised
  windows) trained to tell real from generated (Yoon et al. 2019, TimeGAN); 0.5 = it cannot
  (perfect), 1.0 = trivially separable. Classes are balanced by subsampling the larger set.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import wasserstein_distance


def _check(real: np.ndarray, fake: np.ndarray) -> None:
    if real.ndim != 3 or fake.ndim != 3 or real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"windows must be N×L×C of equal L, C; got {real.shape}, {fake.shape}")


def marginal_wasserstein(real: np.ndarray, fake: np.ndarray) -> list[float]:
    """Per-channel W1 between the observed values of real and generated windows."""
    _check(real, fake)
    out = []
    for c in range(real.shape[2]):
        r, f = real[..., c].ravel(), fake[..., c].ravel()
        out.append(float(wasserstein_distance(r[np.isfinite(r)], f[np.isfinite(f)])))
    return out


def mean_acf(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Mean over windows of the autocorrelation at lags 1..max_lag: max_lag×C (NaN-aware)."""
    x = x - np.nanmean(x, axis=1, keepdims=True)
    var = np.nanmean(x**2, axis=1)  # N×C
    lags = []
    for k in range(1, max_lag + 1):
        cov = np.nanmean(x[:, k:] * x[:, :-k], axis=1)
        lags.append(np.nanmean(cov / np.where(var > 0, var, np.nan), axis=0))
    return np.stack(lags)


def autocorrelation_error(real: np.ndarray, fake: np.ndarray, max_lag: int | None = None) -> float:
    """Mean |ACF_real − ACF_fake| over lags 1..max_lag (default L // 4) and channels."""
    _check(real, fake)
    max_lag = max_lag or max(1, real.shape[1] // 4)
    return float(np.nanmean(np.abs(mean_acf(real, max_lag) - mean_acf(fake, max_lag))))


def discriminative_score(
    real: np.ndarray, fake: np.ndarray, seed: int = 0, epochs: int = 200, hidden: int = 64
) -> float:
    """Held-out accuracy (30%) of an MLP classifying real vs generated windows; 0.5 = perfect."""
    _check(real, fake)
    rng = np.random.default_rng(seed)
    n = min(len(real), len(fake))
    if n < 4:
        raise ValueError(f"discriminative_score needs at least 4 windows of each; got {n}")
    r = real[rng.permutation(len(real))[:n]]
    f = fake[rng.permutation(len(fake))[:n]]
    x = np.nan_to_num(np.concatenate([r, f]).reshape(2 * n, -1), nan=0.0)
    mu, sd = x.mean(0), x.std(0) + 1e-8
    x = torch.tensor((x - mu) / sd, dtype=torch.float32)
    y = torch.cat([torch.ones(n), torch.zeros(n)])
    perm = torch.from_numpy(rng.permutation(2 * n))
    n_test = max(2, int(0.3 * 2 * n))
    test, train = perm[:n_test], perm[n_test:]
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, 1))  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            net(x[train]).squeeze(1), y[train]
        )
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (net(x[test]).squeeze(1) > 0).float()
    return float((pred == y[test]).float().mean())


def sequence_metrics(real: np.ndarray, fake: np.ndarray, seed: int = 0) -> dict[str, float]:
    """All three, with per-channel Wasserstein averaged (and listed)."""
    w = marginal_wasserstein(real, fake)
    return {
        "wasserstein_mean": float(np.mean(w)),
        **{f"wasserstein_c{i}": v for i, v in enumerate(w)},
        "acf_error": autocorrelation_error(real, fake),
        "discriminative_acc": discriminative_score(real, fake, seed),
    }
