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
