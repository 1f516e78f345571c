"""What the loop logs about its data: time spent waiting for batches, bad files found in training."""

from __future__ import annotations

import time

from difftrain.data import Batch, write_bad_files


class WatchedBatches:
    """The loop's batches, plus the time spent waiting in `next()` and bad files found while
    training (rewritten to bad_files.json as soon as one appears, so a stopped run has it).

    Everything else (state, restore, close, bad, num_classes, ...) is the wrapped object's.
    """

    def __init__(self, inner, run_dir):
        self.inner, self.run_dir = inner, run_dir
        self.wait_s = 0.0
        self._written = len(inner.bad)

    def next(self) -> Batch:
        t = time.perf_counter()
        try:
            return self.inner.next()
        finally:  # also when next() stops the run (data.max_bad_fraction): the report is on disk
            self.wait_s += time.perf_counter() - t
            if self.run_dir is not None and len(self.inner.bad) != self._written:
                write_bad_files(self.run_dir, self.inner.bad)
                self._written = len(self.inner.bad)

    def pop_wait(self) -> float:
        """Seconds spent waiting for data since the last call."""
        wait, self.wait_s = self.wait_s, 0.0
        return wait

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str):
        if name == "inner":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)
