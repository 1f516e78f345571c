"""Dataset sources: one class per kind. A map-style source reads sample i on demand.

Every source exposes the same fields (keys, labels, class_names, captions, bad) and three
readers: `load(i)` (decoded, mode-normalized PIL image), `probe(i)` (size and mode from the
header only) and `content(i)` (bytes, for duplicate hashing). `open(cfg)` lists the samples and,
as `data.verify` asks, checks each one, so bad inputs are counted before training starts.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from difftrain.data.decode import BadFiles, BadImage, load_normalized, normalize_mode, probe_image
from difftrain.data.errors import DataError

__all__ = ["DataError", "Source", "ArraySource", "IdxSource", "DigitsSource", "NpzSource"]

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class Source:
    """Base of map-style sources: N samples, each readable by index."""

    name: ClassVar[str] = ""
    streaming: ClassVar[bool] = False

    def __init__(
        self,
        keys: list[str],
        labels: np.ndarray | None = None,
        class_names: list[str] | None = None,
        captions: list[str] | None = None,
        bad: BadFiles | None = None,
    ):
        self.keys = keys
        self.labels = labels
        self.class_names = class_names
        self.captions = captions
        self.bad = bad if bad is not None else BadFiles(total=len(keys))
        self.sizes: list[tuple[int, int]] | None = None  # (w, h) after EXIF, filled by verify

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def open(cls, cfg) -> Source:
        raise NotImplementedError

    def raw(self, i: int) -> Path | bytes | np.ndarray:
        """What sample i is read from: a path, encoded bytes or a decoded array."""
        raise NotImplementedError

    def load(self, i: int, channels: int, max_pixels: int, draft: int | None = None) -> Image.Image:
        """Sample i decoded and mode-normalized; raises BadImage."""
        src = self.raw(i)
        if isinstance(src, np.ndarray):
            return normalize_mode(Image.fromarray(src), channels)
        return load_normalized(src, channels, max_pixels, draft)

    def probe(self, i: int, max_pixels: int) -> tuple[tuple[int, int], str]:
        src = self.raw(i)
        if isinstance(src, np.ndarray):
            return (src.shape[1], src.shape[0]), "L" if src.ndim == 2 else "RGB"
        return probe_image(src, max_pixels)

    def content(self, i: int) -> bytes:
        src = self.raw(i)
        if isinstance(src, np.ndarray):
            return src.tobytes()
        return src if isinstance(src, bytes) else src.read_bytes()

    def verify(self, cfg) -> None:
        """Check every sample as `data.verify` says; drop the bad ones and record why."""
        if cfg.verify == "none":
            return
        keep, sizes = [], []
        for i in range(len(self)):
            try:
                if cfg.verify == "full":
                    img = self.load(i, cfg.channels, cfg.max_pixels)
                    size = img.size
                else:
                    size, _ = self.probe(i, cfg.max_pixels)
            except BadImage as err:
                self.bad.add(self.keys[i], err.reason, err.detail)
                continue
            keep.append(i)
            sizes.append(size)
        self.select(keep)
        self.sizes = sizes

    def select(self, keep: list[int]) -> None:
        """Keep only these samples (in this order); subclasses narrow their own arrays too."""
        self.keys = [self.keys[i] for i in keep]
        if self.labels is not None:
            self.labels = self.labels[np.asarray(keep, dtype=np.int64)]
        if self.captions is not None:
            self.captions = [self.captions[i] for i in keep]
        if self.sizes is not None:
            self.sizes = [self.sizes[i] for i in keep]


class ArraySource(Source):
    """Decoded uint8 arrays N×H×W[×C] already in memory (IDX, npz, digits): nothing can be bad."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        class_names: list[str] | None,
        where: str,
    ):
        super().__init__([f"{where}[{i}]" for i in range(len(images))], labels, class_names)
        self.images = images
        self.sizes = [(images.shape[2], images.shape[1])] * len(images)

    def raw(self, i: int) -> np.ndarray:
        return self.images[i]

    def verify(self, cfg) -> None:
        pass  # arrays were decoded when read

    def select(self, keep: list[int]) -> None:
        super().select(keep)
        self.images = self.images[np.asarray(keep, dtype=np.int64)]


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
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"{directory}: missing {stem}[.gz]; point data.path at the IDX directory")


class IdxSource(ArraySource):
    """MNIST/Fashion-MNIST IDX files in a directory (train-* or t10k-*)."""

    name = "idx"

    @classmethod
    def open(cls, cfg) -> IdxSource:
        path = Path(cfg.path)
        prefix = "train" if cfg.split == "train" else "t10k"
        images = read_idx(_find(path, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(path, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if len(images) != len(labels):
            raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
        fashion = "fashion" in str(path).lower()
        names = FASHION_MNIST_CLASSES if fashion else [str(i) for i in range(10)]
        return cls(images, labels, names, str(path / prefix))


class DigitsSource(ArraySource):
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, 17 gray levels)."""

    name = "digits"

    @classmethod
    def open(cls, cfg) -> DigitsSource:
        from sklearn.datasets import load_digits

        d = load_digits()
        images = np.round(d.images / 16.0 * 255.0).astype(np.uint8)
        return cls(images, d.target.astype(np.int64), [str(i) for i in range(10)], "digits")


class NpzSource(ArraySource):
    """An .npz with `images` (N×H×W or N×H×W×C, uint8 or float in [0,1]) and optional `labels`."""

    name = "npz"

    @classmethod
    def open(cls, cfg) -> NpzSource:
        path = Path(cfg.path)
        images, labels = read_npz(path)
        names = [str(i) for i in range(int(labels.max()) + 1)] if labels is not None else None
        return cls(images, labels, names, str(path))


def _npz_array(z, path: Path, name: str) -> np.ndarray:
    """One array of an open npz; object arrays (pickles) are refused, never loaded."""
    try:
        return z[name]
    except ValueError as err:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        raise DataError(
            f"{path}: array '{name}' is an object (pickled) array, which is never unpickled; "
            f"store numbers ({err})"
        ) from None


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 images N×H×W[×C], int64 labels or None), checked; DataError names file and array."""
    import zipfile

    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not an .npz with an 'images' array")
    with z:
        if "images" not in z:
            raise DataError(f"{path}: no 'images' array (found: {', '.join(z.files) or 'none'})")
        images = _npz_array(z, path, "images")
        labels = _npz_array(z, path, "labels") if "labels" in z else None
    return _check_images(images, path), _check_labels(labels, len(images), path)


def _check_images(images: np.ndarray, path: Path) -> np.ndarray:
    where = f"{path}: array 'images'"
    if images.dtype.kind not in "uif":
        raise DataError(f"{where} has dtype {images.dtype}; store uint8, or float in [0, 1]")
    if images.ndim not in (3, 4):
        raise DataError(f"{where} has shape {images.shape}; expected N×H×W or N×H×W×C")
    if len(images) == 0 or images.size == 0:
        raise DataError(f"{where} has shape {images.shape}: no images")
    if images.ndim == 4 and images.shape[-1] not in (1, 3, 4):
        raise DataError(f"{where} has {images.shape[-1]} channels; expected 1, 3 or 4 (last axis)")
    if images.dtype.kind == "f":
        nan = np.isnan(images)
        if nan.any():
            first = np.argwhere(nan)[0].tolist()
            raise DataError(
                f"{where} holds {int(nan.sum())} NaN value(s), first at index {first}; "
                "fix or drop those images"
            )
        if not np.isfinite(images).all():
            raise DataError(f"{where} holds infinite values; fix or drop those images")
    if images.dtype != np.uint8:
        if images.max() > 1.0 or images.min() < 0.0:
            raise DataError(
                f"{where}: {images.dtype} values must lie in [0, 1] (found "
                f"{images.min()}..{images.max()}); scale them, or store uint8"
            )
        images = np.round(images * 255).astype(np.uint8)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    return images


def _check_labels(labels: np.ndarray | None, n: int, path: Path) -> np.ndarray | None:
    if labels is None:
        return None
    where = f"{path}: array 'labels'"
    if labels.dtype.kind not in "uif" or labels.ndim != 1:
        raise DataError(
            f"{where} has dtype {labels.dtype} and shape {labels.shape}; expected N integers"
        )
    if len(labels) != n:
        raise DataError(f"{where}: {len(labels)} labels for {n} images")
    if labels.dtype.kind == "f" and not (np.isfinite(labels).all() and (labels % 1 == 0).all()):
        raise DataError(f"{where}: class labels must be whole numbers")
    if n and labels.min() < 0:
        raise DataError(f"{where}: class labels must be >= 0 (found {labels.min()})")
    return labels.astype(np.int64)
