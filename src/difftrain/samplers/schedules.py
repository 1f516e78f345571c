"""σ schedules: functions that return a decreasing tensor of σ ending in 0."""

from __future__ import annotations

import torch


def karras_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> torch.Tensor:
    """Eq. 5 of Karras et al. 2022: σ_i = (σ_max^(1/ρ) + i/(n-1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ.

    Returns n+1 values in float64 precision cast to float32, the last one 0.
    """
    if n < 1:
        raise ValueError(f"steps must be >= 1, got {n}")
    i = torch.arange(n, dtype=torch.float64)
    inv = 1 / rho
    ramp = i / max(n - 1, 1)
    sig = (sigma_max**inv + ramp * (sigma_min**inv - sigma_max**inv)) ** rho
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)]).float()


def timestep_sigmas(train_sigmas: torch.Tensor, timesteps) -> torch.Tensor:
    """σ of the given training timesteps (in the order given) followed by 0.

    `train_sigmas[t]` is σ of VP training timestep t (see `diffusion.vp_sigmas`).
    """
    idx = torch.as_tensor(timesteps, dtype=torch.long)
    return torch.cat([train_sigmas.double()[idx], torch.zeros(1, dtype=torch.float64)]).float()


def uniform_timesteps(num_train: int, n: int, spacing: str = "trailing") -> torch.Tensor:
    """n of the T training timesteps, uniformly spaced in t, decreasing (diffusers' spacings,
    Lin et al. 2024, Table 2): 'trailing' starts at T−1, 'leading' at (n−1)·⌊T/n⌋, 'linspace'
    rounds linspace(0, T−1, n)."""
    if not 1 <= n <= num_train:
        raise ValueError(f"steps must be in 1..{num_train} (the training timesteps), got {n}")
    if spacing == "trailing":
        ts = torch.round(torch.arange(num_train, 0, -num_train / n, dtype=torch.float64)) - 1
    elif spacing == "leading":
        ts = torch.arange(n - 1, -1, -1, dtype=torch.float64) * (num_train // n)
    elif spacing == "linspace":
        ts = torch.linspace(0, num_train - 1, n, dtype=torch.float64).round().flip(0)
    else:
        raise ValueError(f"spacing {spacing!r}: allowed 'trailing', 'leading', 'linspace'")
    return ts.long()


def uniform_sigmas(train_sigmas: torch.Tensor, n: int, spacing: str = "trailing") -> torch.Tensor:
    """n+1 values: σ at n training timesteps uniform in t (VP "uniform-in-t"), then 0."""
    return timestep_sigmas(train_sigmas, uniform_timesteps(len(train_sigmas), n, spacing))


def training_sigmas(train_sigmas: torch.Tensor) -> torch.Tensor:
    """All T training timesteps, T−1 down to 0, then 0: the model's own chain (Ho et al. 2020)."""
    return timestep_sigmas(train_sigmas, torch.arange(len(train_sigmas) - 1, -1, -1))


def flow_sigmas(n: int, sigma_max: float = 80.0, shift: float = 1.0) -> torch.Tensor:
    """Uniform in flow time t from t_max = σ_max/(1+σ_max) to 0, as σ = t/(1−t); n+1 values.

    `shift` ≠ 1 maps each t to s·t/(1+(s−1)·t) (SD3's shifted schedule, Esser et al. 2024).
    """
    t_max = sigma_max / (1 + sigma_max)
    t = torch.linspace(t_max, 0, n + 1, dtype=torch.float64)
    t = shift * t / (1 + (shift - 1) * t)
    return (t / (1 - t)).float()
