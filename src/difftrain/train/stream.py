"""Deterministic batch order with a position a checkpoint can save and a resume restore."""

from __future__ import annotations

import torch


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (order matters)."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = (h ^ (int(p) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
    return h % (2**63 - 1)


class BatchStream:
    """Epochs of seeded permutations of range(n); a batch may straddle an epoch boundary."""

    def __init__(self, n: int, seed: int, epoch: int = 0, cursor: int = 0):
        self.n, self.seed, self.epoch, self.cursor = n, seed, epoch, cursor
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))

    def next(self, batch_size: int) -> torch.Tensor:
        """The next `batch_size` dataset indices."""
        parts, need = [], batch_size
        while need:
            take = min(need, self.n - self.cursor)
            parts.append(self._perm[self.cursor : self.cursor + take])
            self.cursor += take
            need -= take
            if self.cursor == self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
        return torch.cat(parts)

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}
