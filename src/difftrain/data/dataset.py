"""In-memory image dataset at the training resolution, with a seeded train/validation split."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from difftrain.config.schema import DataConfig
from difftrain.data.decode import BadFiles, BadImage
from difftrain.data.errors import DataError
from difftrain.data.order import split_indices
from difftrain.data.registry import open_source
from difftrain.data.sources import ArraySource
from difftrain.data.transforms import fit_square, pil_to_uint8


@dataclass
class ImageData:
    """uint8 images N×C×H×W at the training resolution, optional int64 labels N and captions."""

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str] | None
    bad: BadFiles = field(default_factory=BadFiles)
    captions: list[str] | None = None
    files: list[str] | None = None  # where each image came from (path or key)
    ids: torch.Tensor | None = None  # each image's index in the loaded set, kept through splits

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    @property
    def skipped(self) -> dict[str, list[str]]:
        """Skipped files by reason (the full report, with details, is `bad`)."""
        return self.bad.by_reason

    def subset(self, idx: torch.Tensor) -> ImageData:
        labels = None if self.labels is None else self.labels[idx]
        rows = idx.tolist()
        captions = None if self.captions is None else [self.captions[i] for i in rows]
        files = None if self.files is None else [self.files[i] for i in rows]
        ids = None if self.ids is None else self.ids[idx]
        return ImageData(self.images[idx], labels, self.class_names, self.bad, captions, files, ids)

    def split(self, val_fraction: float, seed: int) -> tuple[ImageData, ImageData]:
        """A seeded random split; the validation set is never trained on."""
        train, val = split_indices(len(self), val_fraction, seed)
        return self.subset(train), self.subset(val)


def load_data(cfg: DataConfig) -> ImageData:
    """Read the configured source and bring every image to channels×resolution×resolution.

    Bad files are skipped and recorded in `.bad`; above `data.max_bad_fraction` it raises.
    """
    if cfg.buckets.enabled or cfg.resize == "random_crop":
        raise DataError(
            "data.buckets / data.resize = 'random_crop' need per-sample decoding: read this "
            "config with data.open_loader (data.loader: stream), not load_data"
        )
    # Every image is decoded below, which finds every bad file: no separate header pass.
    src = open_source(cfg.model_copy(update={"verify": "none"}))
    if src.streaming:
        return _load_records(src, cfg)
    n = len(src) if cfg.max_images is None else min(cfg.max_images, len(src))
    images = _ready_arrays(src, cfg, n)
    keep = list(range(n))
    if images is None:
        arrays, keep = [], []
        for i in range(n):
            try:
                img = src.load(i, cfg.channels, cfg.max_pixels, draft=cfg.resolution)
            except BadImage as err:
                src.bad.add(src.keys[i], err.reason, err.detail)
                continue
            arrays.append(pil_to_uint8(fit_square(img, cfg.resolution, cfg.resize), cfg.channels))
            keep.append(i)
        src.bad.check_rate(cfg.max_bad_fraction, f"data.path = '{cfg.path or cfg.source}'")
        if not arrays:
            raise DataError(f"{cfg.path or cfg.source}: no usable images ({src.bad.summary()})")
        images = torch.from_numpy(np.stack(arrays))
    src.select(keep)
    labels, names = None, src.class_names
    if cfg.class_conditional and src.labels is not None:
        labels = torch.from_numpy(np.asarray(src.labels))
    else:
        names = None
    ids = torch.arange(len(images))
    return ImageData(images, labels, names, src.bad, src.captions, list(src.keys), ids)


def _ready_arrays(src, cfg: DataConfig, n: int) -> torch.Tensor | None:
    """Arrays already at the training size and channel count need no per-image work."""
    if not isinstance(src, ArraySource) or n == 0:
        return None
    a = src.images[:n]
    gray = a.ndim == 3
    if a.shape[1:3] != (cfg.resolution, cfg.resolution) or gray != (cfg.channels == 1):
        return None
    return torch.from_numpy(np.array(a[:, None] if gray else a.transpose(0, 3, 1, 2), order="C"))


def _load_records(src, cfg: DataConfig) -> ImageData:
    """A shard source read once, in file order, into memory."""
    arrays, labels, captions, keys = [], [], [], []
    for rec in src.records(range(len(src.shards))):
        if cfg.max_images is not None and len(arrays) >= cfg.max_images:
            break
        try:
            img = _decode_record(rec.image, cfg)
        except BadImage as err:
            src.bad.add(rec.path, err.reason, err.detail)
            continue
        arrays.append(img)
        labels.append(rec.label)
        captions.append(src.caption_of(rec))
        keys.append(rec.key)
    src.bad.check_rate(cfg.max_bad_fraction, f"data.path = '{cfg.path}'")
    if not arrays:
        raise DataError(f"{cfg.path}: no usable images ({src.bad.summary()})")
    names = src.class_names if cfg.class_conditional else None
    label_t = torch.tensor(labels, dtype=torch.int64) if names is not None else None
    images = torch.from_numpy(np.stack(arrays))
    caps = captions if src.captions else None
    return ImageData(images, label_t, names, src.bad, caps, keys, torch.arange(len(images)))


def _decode_record(data: bytes, cfg: DataConfig) -> np.ndarray:
    from difftrain.data.decode import load_normalized

    img = load_normalized(data, cfg.channels, cfg.max_pixels, draft=cfg.resolution)
    return pil_to_uint8(fit_square(img, cfg.resolution, cfg.resize), cfg.channels)
