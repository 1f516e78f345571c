"""Decode-on-demand batches for large or streamed data, with a position a checkpoint can restore.

The main process plans the order (a pure function of seed, epoch and position: seeded
permutations, bucket batches, or the shard stream) and hands each batch's items to worker
processes that decode, crop and augment them. Each sample's randomness comes from
`sample_generator(seed, epoch, position)`, so neither worker count nor batch size nor a resume
changes it. `state()` is the plan's position after the last batch *returned* (prefetched
batches do not count), and `Loader(..., state=s)` continues exactly there.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from difftrain.data.buckets import assign, epoch_batches
from difftrain.data.decode import BadFiles, BadImage, load_normalized
from difftrain.data.errors import DataError
from difftrain.data.order import epoch_permutation, mix_seed, sample_generator
from difftrain.data.shards import epoch_stream
from difftrain.data.transforms import augment, fit, hflip_probability, to_array

N_FALLBACKS = 4  # a sample that fails to decode is replaced by the next of its epoch order
MAX_EMPTY_BATCHES = 16  # batches in a row with no decodable sample before the run stops


@dataclass
class Batch:
    """This process's rows of one global batch, in micro-batch order."""

    x: torch.Tensor  # B×C×H×W float32 in [-1, 1], augmented
    labels: torch.Tensor | None  # B int64
    captions: list[str] | None
    keys: list[str]


def default_workers() -> int:
    """Decoder processes when data.workers is unset: half the cores, 1 to 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def rank_rows(batch_size: int, grad_accum: int, rank: int, world: int) -> list[int]:
    """Rows of a global batch this rank trains on: its slice of each micro-batch, in order."""
    micro = batch_size // grad_accum
    per = micro // world
    return [m * micro + rank * per + j for m in range(grad_accum) for j in range(per)]


# ---- Plans: what each batch holds, from a state {epoch, cursor} ----


class PermutationPlan:
    """Seeded permutations of the train indices (as BatchStream); cursor counts samples."""

    def __init__(self, train: np.ndarray, batch_size: int, rows: list[int], seed: int, size):
        self.train, self.b, self.rows, self.seed, self.size = train, batch_size, rows, seed, size

    def tasks(self, epoch: int, cursor: int):
        n, perms = len(self.train), {}

        def perm(e: int) -> np.ndarray:
            if e not in perms:
                perms.clear()
                perms[e] = epoch_permutation(n, self.seed, e).numpy()
            return perms[e]

        while True:
            slots = []
            for _ in range(self.b):
                slots.append((epoch, cursor))
                cursor += 1
                if cursor == n:
                    epoch, cursor = epoch + 1, 0
            items = []
            for r in self.rows:
                e, p = slots[r]
                order = perm(e)
                chain = [int(self.train[order[(p + k) % n]]) for k in range(N_FALLBACKS + 1)]
                items.append((chain, (e, p), self.size))
            yield items, {"epoch": epoch, "cursor": cursor}


class BucketPlan:
    """Aspect-ratio buckets: each batch is one bucket's shape; cursor counts batches."""

    def __init__(self, train, sizes, cfg, batch_size: int, rows: list[int], seed: int):
        b = cfg.buckets
        resolutions = b.resolutions or [cfg.resolution]
        self.buckets, self.bucket_of = assign(sizes, resolutions, b.step, b.max_ratio, b.upscale)
        self.train, self.b, self.rows, self.seed = train, batch_size, rows, seed
        if not epoch_batches(self.bucket_of, batch_size, seed, 0):
            raise DataError(
                f"data.buckets: no bucket holds a full batch of {batch_size}; lower "
                "train.batch_size, raise data.buckets.max_ratio, or turn bucketing off"
            )

    def tasks(self, epoch: int, cursor: int):
        while True:
            batches = epoch_batches(self.bucket_of, self.b, self.seed, epoch)
            while cursor < len(batches):
                members = batches[cursor]
                size = self.buckets[int(self.bucket_of[members[0]])]
                items = []
                for r in self.rows:
                    chain = [
                        int(self.train[members[(r + k) % self.b]]) for k in range(N_FALLBACKS + 1)
                    ]
                    items.append((chain, (epoch, cursor * self.b + r), size))
                cursor += 1
                state = (
                    {"epoch": epoch, "cursor": cursor}
                    if cursor < len(batches)
                    else {"epoch": epoch + 1, "cursor": 0}
                )
                yield items, state
            epoch, cursor = epoch + 1, 0


class ShardPlan:
    """This rank's shard stream; cursor counts records read in the epoch."""

    def __init__(self, source, cfg, n_rows: int, seed: int, rank: int, world: int, keep):
        self.source, self.n, self.seed, self.rank, self.world = source, n_rows, seed, rank, world
        self.buffer, self.keep = cfg.shuffle_buffer, keep
        self.size = (cfg.resolution, cfg.resolution)
        self.caption_of = source.caption_of
        self.labeled = cfg.class_conditional and source.class_names is not None

    def _stream(self, epoch: int, skip: int):
        it = epoch_stream(
            self.source, self.seed, epoch, self.rank, self.world, self.buffer, self.keep
        )
        for _ in range(skip):  # replay to the saved position: read, not decoded
            next(it, None)
        return it

    def tasks(self, epoch: int, cursor: int):
        it, empty_epochs = self._stream(epoch, cursor), 0
        while True:
            items = []
            while len(items) < self.n:
                rec = next(it, None)
                if rec is None:
                    empty_epochs = empty_epochs + 1 if cursor == 0 else 0
                    if empty_epochs > 1:
                        raise DataError(f"rank {self.rank}: its shards hold no usable samples")
                    epoch, cursor = epoch + 1, 0
                    it = self._stream(epoch, 0)
                    continue
                pos = (epoch, cursor) if self.rank == 0 else (epoch, mix_seed(self.rank, cursor))
                label = rec.label if self.labeled else None
                ref = (rec.image, rec.key, label, self.caption_of(rec), rec.path)
                items.append((ref, pos, self.size))
                cursor += 1
            yield items, {"epoch": epoch, "cursor": cursor}


class _PlanSampler:
    """What DataLoader iterates (in the main process): one task per batch, from a start state."""

    def __init__(self, plan, state: dict):
        self.plan, self.state = plan, state

    def __iter__(self):
        return self.plan.tasks(int(self.state["epoch"]), int(self.state["cursor"]))


# ---- Worker side: decode, fit, augment, collate ----


class _Decoder(Dataset):
    def __init__(self, source, cfg, seed: int):
        self.source, self.cfg, self.seed = source, cfg, seed
        self.hflip_p = hflip_probability(cfg)
        self.streaming = getattr(source, "streaming", False)  # shard bytes travel in the task

    def __len__(self) -> int:
        return 2**62

    def _sample(self, img, size, pos) -> torch.Tensor:
        gen = sample_generator(self.seed, *pos)
        offset = tuple(torch.rand(2, generator=gen).tolist())
        img = fit(img, size, self.cfg.resize, offset)
        x = torch.from_numpy(np.array(to_array(img, self.cfg.channels), dtype=np.float32))
        x = x.div_(127.5).sub_(1.0)[None]
        return augment(x, self.cfg.augment, self.hflip_p, gen)[0]

    def _load(self, ref, size, bad: list):
        """(image, label, caption, key) for an item; map items try their fallback chain."""
        cfg, draft = self.cfg, max(size)
        if self.streaming:
            data, key, label, caption, where = ref
            try:
                return (
                    load_normalized(data, cfg.channels, cfg.max_pixels, draft),
                    label,
                    caption,
                    key,
                )
            except BadImage as err:
                bad.append((where, err.reason, err.detail))
                return None
        src = self.source
        for i in ref:
            try:
                img = src.load(i, cfg.channels, cfg.max_pixels, draft)
            except BadImage as err:
                bad.append((src.keys[i], err.reason, err.detail))
                continue
            label = None if src.labels is None else int(src.labels[i])
            return img, label, None if src.captions is None else src.captions[i], src.keys[i]
        return None

    def __getitem__(self, task):
        items, state = task
        bad, rows = [], []
        for ref, pos, size in items:
            got = self._load(ref, size, bad)
            rows.append(None if got is None else (self._sample(got[0], size, pos), *got[1:]))
        ok = [r for r in rows if r is not None]
        if not ok:  # no stand-in possible: the main process counts these and takes the next
            return {"x": None, "bad": bad, "state": state}
        rows = [r if r is not None else ok[j % len(ok)] for j, r in enumerate(rows)]  # stand-ins
        labels = [r[1] for r in rows]
        return {
            "x": torch.stack([r[0] for r in rows]),
            "labels": None
            if any(v is None for v in labels)
            else torch.tensor(labels, dtype=torch.int64),
            "captions": [r[2] for r in rows] if all(r[2] is not None for r in rows) else None,
            "keys": [r[3] for r in rows],
            "bad": bad,
            "state": state,
        }


def _identity(x):
    return x


def _worker_init(worker_id: int) -> None:
    """Workers decode one image at a time: one thread each; library RNGs seeded for safety."""
    torch.set_num_threads(1)
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


class Loader:
    """Batches of decoded, augmented images with a restorable position.

    `next()` returns a Batch; `state()` goes into the checkpoint; `Loader(..., state=...)`
    (or `restore`) resumes exactly. Use `close()` (or `with`) to stop the workers.
    """

    def __init__(
        self,
        source,
        cfg,
        *,
        seed: int,
        batch_size: int,
        grad_accum: int = 1,
        rank: int = 0,
        world: int = 1,
        train_indices=None,
        keep=None,
        state: dict | None = None,
        workers: int | None = None,
    ):
        self.source, self.cfg, self.seed = source, cfg, seed
        self.rows = rank_rows(batch_size, grad_accum, rank, world)
        self.bad = source.bad
        workers = cfg.workers if workers is None else workers
        self.workers = default_workers() if workers is None else workers
        res = (cfg.resolution, cfg.resolution)
        if getattr(source, "streaming", False):
            self.plan = ShardPlan(source, cfg, len(self.rows), seed, rank, world, keep)
        else:
            train = np.arange(len(source)) if train_indices is None else np.asarray(train_indices)
            if cfg.buckets.enabled:
                sizes = _sizes(source, cfg)
                self.plan = BucketPlan(
                    train, [sizes[i] for i in train], cfg, batch_size, self.rows, seed
                )
            else:
                self.plan = PermutationPlan(train, batch_size, self.rows, seed, res)
        self.class_names = source.class_names if cfg.class_conditional else None
        self.num_train = len(self.plan.train) if hasattr(self.plan, "train") else len(source)
        self._state = dict(state or {"epoch": 0, "cursor": 0})
        self._sampler = _PlanSampler(self.plan, self._state)
        self._decoder = _Decoder(source, cfg, seed)
        self._it = None
        self._bad_checked = 0  # first next(): also what the validation split found

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    def __len__(self) -> int:
        """Training samples (for shards: usable samples less the validation share, approx.)."""
        return self.num_train

    def _dataloader(self) -> DataLoader:
        kw = {}
        if self.workers > 0:
            kw = {
                "prefetch_factor": self.cfg.prefetch,
                "worker_init_fn": _worker_init,
                "persistent_workers": False,
            }
        return DataLoader(
            self._decoder,
            batch_size=None,
            sampler=self._sampler,
            num_workers=self.workers,
            collate_fn=_identity,
            generator=torch.Generator().manual_seed(self.seed),
            **kw,
        )

    def next(self) -> Batch:
        """The next batch (this rank's rows)."""
        if self._it is None:
            self._sampler.state = dict(self._state)
            self._it = iter(self._dataloader())
        where = f"data.path = '{self.cfg.path or self.cfg.source}' (found while training)"
        for _ in range(MAX_EMPTY_BATCHES):
            out = next(self._it)
            self._state = out["state"]
            # Files that failed in a worker were replaced in the batch; count them (once each),
            # and hold data.max_bad_fraction as at start: a run must not train on rotten data.
            for key, reason, detail in out["bad"]:
                self.bad.add(key, reason, detail)
            if len(self.bad) > self._bad_checked:  # also samples the shard reader found bad
                self._bad_checked = len(self.bad)
                self.bad.check_rate(self.cfg.max_bad_fraction, where)
            if out["x"] is not None:
                return Batch(out["x"], out["labels"], out["captions"], out["keys"])
        raise DataError(
            f"{where}: {MAX_EMPTY_BATCHES} batches in a row had no sample that decodes "
            f"({self.bad.summary()}); see bad_files.json or run `difftrain data inspect`"
        )

    def __iter__(self):
        while True:
            yield self.next()

    def state(self) -> dict:
        """The position after the last returned batch: save it in the checkpoint."""
        return dict(self._state)

    def restore(self, state: dict) -> None:
        """Continue from a saved position (drops any prefetched batches)."""
        self.close()
        self._state = dict(state)

    def close(self) -> None:
        self._it = None  # DataLoader shuts its workers down when its iterator is collected

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sizes(source, cfg) -> list[tuple[int, int]]:
    """Image sizes for bucketing: from the verify pass, else a header probe now."""
    if source.sizes is not None:
        return source.sizes
    sizes = []
    for i in range(len(source)):
        try:
            sizes.append(source.probe(i, cfg.max_pixels)[0])
        except BadImage:
            sizes.append((cfg.resolution, cfg.resolution))  # fails again at decode: replaced
    return sizes


__all__ = ["Batch", "BadFiles", "Loader", "default_workers", "rank_rows"]
