"""Open the decode-on-demand path: source, bad-file check, validation split, Loader."""

from __future__ import annotations

import numpy as np
import torch

from difftrain.data.dataset import ImageData
from difftrain.data.decode import BadImage, load_normalized
from difftrain.data.errors import DataError
from difftrain.data.loader import Loader
from difftrain.data.order import split_indices
from difftrain.data.registry import open_source
from difftrain.data.shards import is_validation
from difftrain.data.transforms import fit_square, pil_to_uint8

MAX_VAL_IMAGES = 2048  # validation images held in memory on the streaming path


def open_loader(
    cfg,
    *,
    seed: int,
    batch_size: int,
    grad_accum: int = 1,
    rank: int = 0,
    world: int = 1,
    state: dict | None = None,
    workers: int | None = None,
) -> tuple[Loader, ImageData]:
    """(train Loader, validation ImageData) for `data.loader: stream`.

    The validation split matches `load_data(cfg).split(cfg.val_fraction, seed)` for map
    sources; for shards it is a hash of each key (see shards.is_validation).
    """
    src = open_source(cfg)
    where = f"data.path = '{cfg.path or cfg.source}'"
    src.bad.check_rate(cfg.max_bad_fraction, where)
    if len(src) == 0:
        raise DataError(f"{where}: no usable images ({src.bad.summary()})")
    if not cfg.class_conditional and not src.streaming:
        src.labels, src.class_names = None, None
    kw = dict(
        seed=seed,
        batch_size=batch_size,
        grad_accum=grad_accum,
        rank=rank,
        world=world,
        state=state,
        workers=workers,
    )
    if src.streaming:
        if len(src.shards) < world:
            raise DataError(
                f"{where}: {len(src.shards)} shards for {world} processes; need one each"
            )

        def keep(key: str) -> bool:
            return not is_validation(key, cfg.val_fraction, seed)

        val = _shard_validation(src, cfg, seed)
        loader = Loader(src, cfg, keep=keep, **kw)
        loader.num_train = max(0, round(len(src) * (1 - cfg.val_fraction)))
        return loader, val
    n = len(src) if cfg.max_images is None else min(cfg.max_images, len(src))
    train, val_idx = split_indices(n, cfg.val_fraction, seed)
    return Loader(src, cfg, train_indices=train.numpy(), **kw), _map_validation(src, cfg, val_idx)


def _image_data(arrays, labels, src, cfg) -> ImageData:
    c, r = cfg.channels, cfg.resolution
    images = (
        torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0, c, r, r, dtype=torch.uint8)
    )
    names = src.class_names if cfg.class_conditional else None
    label_t = torch.tensor(labels, dtype=torch.int64) if names is not None else None
    return ImageData(images, label_t, names, src.bad)


def _map_validation(src, cfg, val_idx: torch.Tensor) -> ImageData:
    arrays, labels = [], []
    for i in val_idx.tolist()[:MAX_VAL_IMAGES]:
        try:
            img = src.load(i, cfg.channels, cfg.max_pixels, cfg.resolution)
        except BadImage as err:
            src.bad.add(src.keys[i], err.reason, err.detail)
            continue
        arrays.append(pil_to_uint8(fit_square(img, cfg.resolution, "crop"), cfg.channels))
        labels.append(None if src.labels is None else int(src.labels[i]))
    return _image_data(arrays, labels, src, cfg)


def _shard_validation(src, cfg, seed: int) -> ImageData:
    arrays, labels = [], []
    if cfg.val_fraction > 0:
        for rec in src.records(
            range(len(src.shards)), lambda k: is_validation(k, cfg.val_fraction, seed)
        ):
            try:
                img = load_normalized(rec.image, cfg.channels, cfg.max_pixels, cfg.resolution)
            except BadImage as err:
                src.bad.add(rec.path, err.reason, err.detail)
                continue
            arrays.append(pil_to_uint8(fit_square(img, cfg.resolution, "crop"), cfg.channels))
            labels.append(rec.label)
            if len(arrays) >= MAX_VAL_IMAGES:
                break
    return _image_data(arrays, labels, src, cfg)
