"""Deterministic batch order with a position a checkpoint can save and a resume restore."""

from __future__ import annotations

import torch

from difftrain.data.order import mix_seed  # one definition, shared with the data loaders

__all__ = ["BatchStream", "mix_seed"]


class BatchStream:
    """Epochs of seeded permutations of range(n); a batch may straddle an epoch boundary."""

    def __init__(self, n: int, seed: int, epoch: int = 0, cursor: int = 0):
        self.n, self.seed, self.epoch, self.cursor = n, seed, epoch, cursor
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(
            self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        )

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
