"""One batch interface for the loop over both data paths: in-memory tensors and streamed files."""

from __future__ import annotations

import torch

from difftrain.config import Config
from difftrain.data import (
    Batch,
    ImageData,
    augment_batch,
    open_loader,
    to_model_range,
    write_bad_files,
)
from difftrain.data.loader import rank_rows
from difftrain.train.setup import prepare_data
from difftrain.train.stream import BatchStream, mix_seed


class MemoryBatches:
    """Small datasets decoded once: seeded permutations (BatchStream) over an ImageData.

    `next()` returns this process's rows of the global batch, micro-batch-major, augmented with
    a generator derived from the stream position, so a resume needs no RNG state.
    """

    def __init__(self, data: ImageData, cfg: Config, rank: int, world: int, state: dict):
        self.data, self.cfg = data, cfg
        self.rows = torch.tensor(rank_rows(cfg.train.batch_size, cfg.train.grad_accum, rank, world))
        self.stream = BatchStream(len(data), cfg.train.seed, **state)
        self.bad = data.bad
        self.num_classes, self.class_names = data.num_classes, data.class_names

    def __len__(self) -> int:
        return len(self.data)

    def next(self) -> Batch:
        gen = torch.Generator().manual_seed(
            mix_seed(self.cfg.train.seed, self.stream.epoch, self.stream.cursor, 3)
        )
        idx = self.stream.next(self.cfg.train.batch_size)[self.rows]
        x = augment_batch(to_model_range(self.data.images[idx]), self.cfg.data, gen)
        labels = None if self.data.labels is None else self.data.labels[idx]
        files, ids = self.data.files, self.data.ids
        keys = [
            files[i] if files else str(int(ids[i]) if ids is not None else int(i))
            for i in idx.tolist()
        ]
        return Batch(x, labels, None, keys)

    def state(self) -> dict:
        return self.stream.state()

    def restore(self, state: dict) -> None:
        self.stream = BatchStream(len(self.data), self.cfg.train.seed, **state)

    def close(self) -> None:
        pass


def open_batches(
    cfg: Config, rank: int, world: int, state: dict, run_dir
) -> tuple[object, ImageData]:
    """(training batches, validation ImageData) for `data.loader` = memory or stream."""
    tc = cfg.train
    if cfg.data.loader == "stream":
        loader, val = open_loader(
            cfg.data,
            seed=tc.seed,
            batch_size=tc.batch_size,
            grad_accum=tc.grad_accum,
            rank=rank,
            world=world,
            state=state,
        )
        if run_dir is not None and loader.bad.by_reason:
            write_bad_files(run_dir, loader.bad)
        return loader, val
    data, val = prepare_data(cfg, run_dir)
    return MemoryBatches(data, cfg, rank, world, state), val
