"""Deterministic order: seed mixing and the per-epoch permutations every loader shares."""

from __future__ import annotations

import torch


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (order matters)."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = (h ^ (int(p) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
    return h % (2**63 - 1)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch `epoch`: the same permutation train.stream.BatchStream uses."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices of a seeded split, each sorted; as ImageData.split."""
    n_val = int(round(n * val_fraction))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def sample_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    """The generator of one sample's random crop and augmentation: a function of (seed, epoch,
    position in epoch) only, so neither batch size, worker count nor resume changes it."""
    return torch.Generator().manual_seed(mix_seed(seed, epoch, position, 0x5A))
