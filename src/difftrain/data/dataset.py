"""In-memory image dataset at the training resolution, with a seeded train/validation split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from difftrain.config.schema import DataConfig
from difftrain.data.sources import DataError, RawData, load_digits_source, load_folder, load_idx, load_npz
from difftrain.data.transforms import fit_square, pil_to_uint8, to_mode


@dataclass
class ImageData:
    """uint8 images N×C×H×W at the training resolution, optional int64 labels N."""

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str] | None
    skipped: dict[str, list[str]]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    def subset(self, idx: torch.Tensor) -> ImageData:
        labels = None if self.labels is None else self.labels[idx]
        return ImageData(self.images[idx], labels, self.class_names, self.skipped)

    def split(self, val_fraction: float, seed: int) -> tuple[ImageData, ImageData]:
        """A seeded random split; the validation set is never trained on."""
        n_val = int(round(len(self) * val_fraction))
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(perm[n_val:].sort().values), self.subset(perm[:n_val].sort().values)


def _raw(cfg: DataConfig) -> RawData:
    if cfg.source == "digits":
        return load_digits_source()
    assert cfg.path is not None  # checked at config time
    if cfg.source == "idx":
        return load_idx(cfg.path, cfg.split)
    if cfg.source == "npz":
        return load_npz(cfg.path)
    return load_folder(cfg.path)


def _preprocess(img, cfg: DataConfig) -> np.ndarray:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    img = fit_square(to_mode(img, cfg.channels), cfg.resolution, cfg.resize)
    return pil_to_uint8(img)


def load_data(cfg: DataConfig) -> ImageData:
    """Read the configured source and bring every image to channels×resolution×resolution."""
    raw = _raw(cfg)
    n = len(raw.images) if cfg.max_images is None else min(cfg.max_images, len(raw.images))
    if n == 0:
        raise DataError(f"{cfg.path or cfg.source}: no usable images")
    arrays = [_preprocess(raw.images[i], cfg) for i in range(n)]
    images = torch.from_numpy(np.stack(arrays))
    labels = None
    names = raw.class_names
    if cfg.class_conditional and raw.labels is not None:
        labels = torch.from_numpy(raw.labels[:n])
    else:
        names = None
    return ImageData(images, labels, names, raw.skipped)
