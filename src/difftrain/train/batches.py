"""One batch interface for the loop over both data paths: in-memory tensors and streamed files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from difftrain.config import Config
from difftrain.data import (
    Batch,
    ImageData,
    augment_batch,
    load_data,
    open_loader,
    to_model_range,
    write_bad_files,
)
from difftrain.data.decode import BadFiles
from difftrain.data.latent_cache import cache_inputs, open_or_build
from difftrain.data.loader import rank_rows
from difftrain.data.order import split_indices
from difftrain.data.transforms import hflip_probability
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
        self.captions = data.captions  # the training split's captions (text conditioning)

    def __len__(self) -> int:
        return len(self.data)

    def next(self) -> Batch:
        gen = torch.Generator().manual_seed(
            mix_seed(self.cfg.train.seed, self.stream.epoch, self.stream.cursor, 3)
        )
        return self.batch_of(self.stream.next(self.cfg.train.batch_size), gen)

    def batch_of(self, every: torch.Tensor, gen: torch.Generator) -> Batch:
        """This process's rows of the global batch of dataset indices `every`, augmented by `gen`
        (also what a curriculum's easy-to-hard order draws through)."""
        # Augment the whole global batch, then keep this process's rows: a row's flip is the
        # same for any process count (one process: identical to augmenting its rows).
        x = augment_batch(to_model_range(self.data.images[every]), self.cfg.data, gen)[self.rows]
        idx = every[self.rows]
        labels = None if self.data.labels is None else self.data.labels[idx]
        files, ids = self.data.files, self.data.ids
        keys = [
            files[i] if files else str(int(ids[i]) if ids is not None else int(i))
            for i in idx.tolist()
        ]
        captions = None if self.captions is None else [self.captions[i] for i in idx.tolist()]
        return Batch(x, labels, captions, keys)

    def state(self) -> dict:
        return self.stream.state()

    def restore(self, state: dict) -> None:
        self.stream = BatchStream(len(self.data), self.cfg.train.seed, **state)

    def close(self) -> None:
        pass


@dataclass
class LatentVal:
    """Validation rows of a latent run: x0 (scaled posterior means) and labels."""

    x: torch.Tensor
    labels: torch.Tensor | None
    captions: list[str] | None = None  # text models validate on the held-out captions
    latents: object = None  # the run's codec (pipeline.latent.Latents), for decoding samples

    def __len__(self) -> int:
        return len(self.x)


class LatentBatches:
    """Cached latents through the same seeded BatchStream: x0 = (mean + std·ε) × scaling_factor.

    The flip variant and ε of each row come from a generator derived from the stream position,
    so a resume reproduces them without RNG state.
    """

    def __init__(self, cache, rows: torch.Tensor, latents, cfg: Config, rank, world, state: dict):
        self.cache, self.idx, self.latents, self.cfg = cache, rows, latents, cfg
        self.rows = torch.tensor(rank_rows(cfg.train.batch_size, cfg.train.grad_accum, rank, world))
        self.stream = BatchStream(len(rows), cfg.train.seed, **state)
        self.flip_p = hflip_probability(cfg.data) if cache.variants == 2 else 0.0
        self.bad = BadFiles()
        self.class_names = cache.class_names
        self.num_classes = None if cache.class_names is None else len(cache.class_names)
        self.captions = self._captions(rows)  # the training split's (text conditioning)

    def _captions(self, rows: torch.Tensor) -> list[str] | None:
        caps = self.cache.captions
        return None if caps is None else [caps[i] for i in rows.tolist()]

    def __len__(self) -> int:
        return len(self.idx)

    def next(self) -> Batch:
        s = self.stream
        gen = torch.Generator().manual_seed(mix_seed(self.cfg.train.seed, s.epoch, s.cursor, 4))
        b = self.cfg.train.batch_size
        idx = self.idx[s.next(b)[self.rows]]
        # Draws for the whole global batch, kept for this process's rows (any process count).
        flip = (torch.rand(b, generator=gen) < self.flip_p).long()[self.rows]
        mean, logvar = self.cache.gather(idx, flip)
        z = mean
        if self.cfg.latent.sample_posterior:
            eps = torch.randn((b, *mean.shape[1:]), generator=gen)[self.rows]
            z = mean + torch.exp(0.5 * logvar) * eps
        labels = None if self.cache.labels is None else self.cache.labels[idx]
        caps = self.cache.captions
        captions = None if caps is None else [caps[i] for i in idx.tolist()]
        return Batch(self.latents.to_model(z), labels, captions, [str(i) for i in idx.tolist()])

    def validation(self, rows: torch.Tensor) -> LatentVal:
        """Posterior means (unflipped) of `rows`: deterministic, like the pixel validation set."""
        mean, _ = self.cache.gather(rows)
        labels = None if self.cache.labels is None else self.cache.labels[rows]
        return LatentVal(self.latents.to_model(mean), labels, self._captions(rows), self.latents)

    def state(self) -> dict:
        return self.stream.state()

    def restore(self, state: dict) -> None:
        self.stream = BatchStream(len(self.idx), self.cfg.train.seed, **state)

    def close(self) -> None:
        pass


class EncodingBatches:
    """Pixel batches encoded every step (latent.cache = false): any augmentation, slower."""

    def __init__(self, inner: MemoryBatches, latents, cfg: Config):
        self.inner, self.latents, self.cfg = inner, latents, cfg
        self.bad, self.num_classes = inner.bad, inner.num_classes
        self.class_names, self.captions = inner.class_names, inner.captions

    def __len__(self) -> int:
        return len(self.inner)

    def next(self) -> Batch:
        s = self.inner.stream
        gen = torch.Generator().manual_seed(mix_seed(self.cfg.train.seed, s.epoch, s.cursor, 4))
        b = self.inner.next()
        if self.cfg.latent.sample_posterior:
            x = self.latents.encode(b.x, generator=gen)
        else:
            x = self.latents.to_model(self.latents.encode(b.x)[0])
        return Batch(x.cpu(), b.labels, b.captions, b.keys)

    def state(self) -> dict:
        return self.inner.state()

    def restore(self, state: dict) -> None:
        self.inner.restore(state)

    def close(self) -> None:
        pass


def open_latent_batches(cfg: Config, rank: int, world: int, state: dict, run_dir):
    """(training batches, LatentVal) of a latent run; builds or reuses the latent cache."""
    from difftrain.pipeline.latent import (
        Latents,
        autoencoder_hash,
        install_autoencoder,
        load_autoencoder,
    )

    lc, tc = cfg.latent, cfg.train
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae = load_autoencoder(lc.autoencoder).to(device)
    ae_hash = autoencoder_hash(vae)
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        install_autoencoder(vae, Path(run_dir), ae_hash)  # the run dir stays self-contained
    latents = Latents.for_config(cfg, vae)
    val_cap = 512  # bounded cost per validation, as for pixels
    if not lc.cache:
        data, val = prepare_data(cfg, run_dir)
        x = to_model_range(val.images[:val_cap])
        val_x = latents.to_model(latents.encode(x)[0]).cpu() if len(x) else x
        val_y = None if val.labels is None else val.labels[:val_cap]
        inner = MemoryBatches(data, cfg, rank, world, state)
        val_c = None if val.captions is None else val.captions[:val_cap]
        return EncodingBatches(inner, latents, cfg), LatentVal(val_x, val_y, val_c, latents)
    cache_dir = Path(lc.cache_dir or Path(tc.run_dir) / "latents")
    inputs = cache_inputs(cfg.data, ae_hash, exclude=(cache_dir, Path(tc.run_dir)))

    def load() -> ImageData:
        full = load_data(cfg.data)
        if run_dir is not None and full.skipped:
            write_bad_files(run_dir, full.bad)
        return full

    with tqdm(desc="encode latents", unit="img", disable=not cfg.logging.progress) as bar:
        cache, _built = open_or_build(
            cache_dir,
            inputs,
            load,
            lambda x: latents.encode(x),
            shard_size=lc.shard_size,
            batch_size=lc.encode_batch_size,
            progress=bar.update,
        )
    train_rows, val_rows = split_indices(len(cache), cfg.data.val_fraction, tc.seed)
    batches = LatentBatches(cache, train_rows, latents, cfg, rank, world, state)
    return batches, batches.validation(val_rows[:val_cap])


def validation_tensors(val, cap: int = 512) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x0 in the denoiser's space, labels) of at most `cap` validation rows."""
    if isinstance(val, LatentVal) or not hasattr(val, "images"):  # latents, sequence windows
        return val.x[:cap], None if val.labels is None else val.labels[:cap]
    labels = None if val.labels is None else val.labels[:cap]
    return to_model_range(val.images[:cap]), labels


def open_batches(
    cfg: Config, rank: int, world: int, state: dict, run_dir
) -> tuple[object, ImageData | LatentVal]:
    """(training batches, validation set) for pixels (memory or stream) or latents."""
    tc = cfg.train
    if cfg.data.source == "sequence":  # windows of a numeric series (train/sequence_task.py)
        from difftrain.train.sequence_task import open_sequence_batches

        return open_sequence_batches(cfg, rank, world, state, run_dir)
    if cfg.latent.autoencoder is not None:
        return open_latent_batches(cfg, rank, world, state, run_dir)
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


def per_rank_stream(batches) -> bool:
    """Whether the stream position is per process (tar shards), so resuming needs the same count."""
    from difftrain.data.loader import ShardPlan

    return isinstance(getattr(getattr(batches, "inner", batches), "plan", None), ShardPlan)
