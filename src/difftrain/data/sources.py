"""Dataset sources. Each returns raw images (before resizing) with optional labels."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class DataError(ValueError):
    """The data cannot be read as configured; the message says what to fix."""


@dataclass
class RawData:
    """Images as PIL objects or an array N×H×W[×C] of uint8, plus labels and class names."""

    images: list | np.ndarray
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> files


def _open_idx(path: Path) -> bytes:
    return gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format): magic, dims, big-endian sizes, then unsigned bytes."""
    buf = _open_idx(path)
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = buf[3]
    dims = struct.unpack(">" + "I" * ndim, buf[4 : 4 + 4 * ndim])
    data = np.frombuffer(buf, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file ({data.size} values, header says {dims})")
    return data.reshape(dims)


FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory}: missing {stem}[.gz]; point data.path at the IDX directory")


def load_idx(path: Path, split: str) -> RawData:
    """MNIST/Fashion-MNIST IDX files in a directory (train-* or t10k-*)."""
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(path, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(path, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
    names = FASHION_MNIST_CLASSES if "fashion" in str(path).lower() else [str(i) for i in range(10)]
    return RawData(images, labels, names)


def load_digits_source() -> RawData:
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, 17 gray levels)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images / 16.0 * 255.0).astype(np.uint8)
    return RawData(images, d.target.astype(np.int64), [str(i) for i in range(10)])


def load_npz(path: Path) -> RawData:
    """An .npz with `images` (N×H×W or N×H×W×C, uint8 or float in [0,1]) and optional `labels`."""
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z:
            raise DataError(f"{path}: no 'images' array (found: {', '.join(z.files)})")
        images = z["images"]
        labels = z["labels"].astype(np.int64) if "labels" in z else None
    if images.dtype != np.uint8:
        if images.max() > 1.0 or images.min() < 0.0:
            raise DataError(f"{path}: float images must lie in [0, 1] (or store uint8)")
        images = np.round(images * 255).astype(np.uint8)
    names = [str(i) for i in range(int(labels.max()) + 1)] if labels is not None else None
    return RawData(images, labels, names)


def _iter_image_files(root: Path) -> Iterator[Path]:
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            yield p


def load_folder(path: Path) -> RawData:
    """Images under a folder; the first sub-folder name is the class when there are sub-folders."""
    files = list(_iter_image_files(path))
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    classes = sorted({f.relative_to(path).parts[0] for f in files if len(f.relative_to(path).parts) > 1})
    images, labels, skipped = [], [], {}
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError, ValueError) as err:
            skipped.setdefault(type(err).__name__, []).append(str(f))
            continue
        parts = f.relative_to(path).parts
        labels.append(classes.index(parts[0]) if len(parts) > 1 else -1)
    has_labels = classes and all(label >= 0 for label in labels)
    return RawData(
        images,
        np.asarray(labels, dtype=np.int64) if has_labels else None,
        classes if has_labels else None,
        skipped,
    )
