"""Per-sample random numbers: sample i's noise depends only on its own generator."""

from __future__ import annotations

import torch

Generators = torch.Generator | list[torch.Generator] | None


def sample_generators(
    seed: int, indices, device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """One generator per global sample index, seeded from (seed, index) only."""
    gens = []
    for i in indices:
        g = torch.Generator(device=device)
        # Mix seed and index into one 63-bit integer (splitmix-style constants).
        g.manual_seed((int(seed) * 0x9E3779B97F4A7C15 + int(i) * 0xBF58476D1CE4E5B9) % (2**63 - 1))
        gens.append(g)
    return gens


def randn(shape, generator: Generators, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise; with a list of generators, row b is drawn from generator b."""
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        rows = [
            torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype)
            for g in generator
        ]
        return torch.stack(rows).to(device if device is not None else rows[0].device)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
