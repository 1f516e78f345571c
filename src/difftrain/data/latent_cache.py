"""The dataset encoded once into an on-disk latent cache: memory-mapped .npy shards.

Layout: `CACHE_DIR/<key>/` holds `manifest.json`, `shard-NNNNN.mean.npy` and
`shard-NNNNN.logvar.npy` (float32, N×V×C×h×w: the posterior mean and log-variance of V
variants of each image), `labels.npy` and `captions.json` when the data has them.

The key is a hash of the autoencoder (weights + encoder config) and everything that decides
the pixels it encoded (source, path and a fingerprint of its files, resolution, resize,
channels, limits, cached flips), so a stale cache is never found, only a new one built.
Flips: a conv encoder is not flip-equivariant (enc(flip x) ≠ flip(enc x)), so with a flip
probability > 0 both the image and its mirror are encoded (V = 2) and each step picks one.
A cache is built in a hidden temporary folder and renamed into place when complete; nothing
is ever deleted but that temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from difftrain.data.dataset import ImageData
from difftrain.data.errors import DataError
from difftrain.data.transforms import hflip_probability, to_model_range

CACHE_VERSION = 1
MANIFEST = "manifest.json"
Encoder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # pixels → (mean, logvar)


class ShardEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^shard-\d{5}$")  # untrusted: a bare name, never a path
    n: int = Field(gt=0)


class Manifest(BaseModel):
    """manifest.json, validated before any shard is opened."""

    model_config = ConfigDict(extra="forbid")
    version: Literal[1]
    key: str = Field(pattern=r"^[0-9a-f]{20}$")
    inputs: dict
    n: int = Field(gt=0)
    variants: Literal[1, 2]
    latent_shape: tuple[int, int, int]
    dtype: Literal["float32"]
    shard_size: int = Field(gt=0)
    shards: list[ShardEntry]
    class_names: list[str] | None
    has_labels: bool
    has_captions: bool


def source_fingerprint(path: Path | None, exclude: tuple[Path, ...] = ()) -> str | None:
    """Names, sizes and modification times of the data files (a changed file changes the key).

    Folders in `exclude` (the cache and run directories, when they sit inside the data folder)
    are skipped, so writing the cache does not change its own key.
    """
    if path is None:
        return None
    path = Path(path).resolve()
    skip = [Path(e).resolve() for e in exclude]
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        if any(p.is_relative_to(e) for e in skip):
            continue
        st = p.stat()
        name = p.name if p == path else p.relative_to(path).as_posix()
        h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_inputs(data_cfg, autoencoder_hash: str, exclude: tuple[Path, ...] = ()) -> dict:
    """Everything the cached latents depend on (the key is a hash of this)."""
    d = data_cfg
    keys = (
        "source", "split", "resolution", "channels", "resize", "max_images", "class_conditional",
        "image_column", "label_column", "caption_column", "caption_ext", "caption_policy",
        "max_pixels",
    )  # fmt: skip
    inputs = {k: getattr(d, k) for k in keys}
    inputs.update(
        version=CACHE_VERSION,
        autoencoder=autoencoder_hash,
        path=str(Path(d.path).resolve()) if d.path is not None else None,
        fingerprint=source_fingerprint(d.path, exclude),
        variants=2 if hflip_probability(d) > 0 else 1,
    )
    return inputs


def cache_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:20]


class LatentCache:
    """An opened cache: memory-mapped shards, labels, class names and captions."""

    def __init__(self, root: Path, manifest: Manifest):
        self.root, self.manifest = root, manifest
        m = manifest
        self.mean, self.logvar = [], []
        for i, entry in enumerate(m.shards):
            for kind, arrays in (("mean", self.mean), ("logvar", self.logvar)):
                path = root / f"{entry.name}.{kind}.npy"
                try:
                    arr = np.load(path, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as err:
                    raise _damaged(root, f"{path.name}: {err}") from None
                want = (entry.n, m.variants, *m.latent_shape)
                if arr.shape != want or arr.dtype != np.float32:
                    raise _damaged(root, f"{path.name}: {arr.shape} {arr.dtype}, expected {want}")
                if i < len(m.shards) - 1 and entry.n != m.shard_size:
                    raise _damaged(root, f"{entry.name}: {entry.n} rows, expected {m.shard_size}")
                arrays.append(arr)
        if sum(e.n for e in m.shards) != m.n:
            raise _damaged(root, f"shards hold {sum(e.n for e in m.shards)} rows, manifest {m.n}")
        self.labels = None
        if m.has_labels:
            try:
                labels = np.load(root / "labels.npy", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise _damaged(root, f"labels.npy: {err}") from None
            k = len(m.class_names or [])
            if (
                labels.shape != (m.n,)
                or labels.dtype != np.int64
                or not ((labels >= 0) & (labels < k)).all()
            ):
                raise _damaged(root, "labels.npy: wrong shape, dtype or range")
            self.labels = torch.from_numpy(labels)
        self.captions = None
        if m.has_captions:
            try:
                caps = json.loads((root / "captions.json").read_text())
            except (OSError, ValueError) as err:
                raise _damaged(root, f"captions.json: {err}") from None
            if not (isinstance(caps, list) and len(caps) == m.n):
                raise _damaged(root, "captions.json: expected a list with one caption per image")
            if not all(isinstance(c, str) for c in caps):
                raise _damaged(root, "captions.json: captions must be strings")
            self.captions = caps

    def __len__(self) -> int:
        return self.manifest.n

    @property
    def class_names(self) -> list[str] | None:
        return self.manifest.class_names

    @property
    def variants(self) -> int:
        return self.manifest.variants

    def gather(
        self, idx: torch.Tensor, variant: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) rows `idx` (variant 0 = as is, 1 = mirrored), float32 B×C×h×w."""
        idx = idx.numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        var = np.zeros_like(idx) if variant is None else np.asarray(variant)
        size = self.manifest.shard_size
        shard, row = idx // size, idx % size
        mean = np.empty((len(idx), *self.manifest.latent_shape), np.float32)
        logvar = np.empty_like(mean)
        for s in np.unique(shard):
            sel = np.nonzero(shard == s)[0]
            mean[sel] = self.mean[s][row[sel], var[sel]]
            logvar[sel] = self.logvar[s][row[sel], var[sel]]
        return torch.from_numpy(mean), torch.from_numpy(logvar)


def _damaged(root: Path, what: str) -> DataError:
    return DataError(
        f"latent cache {root} is damaged ({what}); remove that folder to rebuild it, or set "
        "latent.cache_dir to another folder"
    )


def open_cache(cache_dir: Path, inputs: dict) -> LatentCache | None:
    """The complete cache for `inputs`, or None when there is none; a damaged one is a DataError."""
    root = Path(cache_dir) / cache_key(inputs)
    if not root.exists():
        return None
    try:
        manifest = Manifest.model_validate_json((root / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise _damaged(root, f"{MANIFEST}: {err}") from None
    except ValidationError as err:
        raise _damaged(root, f"{MANIFEST}: {err.errors()[0]['msg']}") from None
    if manifest.key != root.name or manifest.inputs != json.loads(json.dumps(inputs, default=str)):
        raise _damaged(root, f"{MANIFEST} describes another cache")
    return LatentCache(root, manifest)


@torch.no_grad()
def build_cache(
    cache_dir: Path,
    inputs: dict,
    data: ImageData,
    encode: Encoder,
    *,
    shard_size: int = 4096,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> LatentCache:
    """Encode every image of `data` (and its mirror when inputs['variants'] = 2); atomic."""
    cache_dir, key, variants = Path(cache_dir), cache_key(inputs), inputs["variants"]
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        n, shards, files, shape = len(data), [], None, None
        for start in range(0, n, batch_size):
            x = to_model_range(data.images[start : start + batch_size])
            views = [x, x.flip(-1)][:variants]
            enc = [encode(v) for v in views]  # [(mean, logvar)] per variant
            mean = torch.stack([e[0] for e in enc], 1).float().cpu().numpy()  # B×V×C×h×w
            logvar = torch.stack([e[1] for e in enc], 1).float().cpu().numpy()
            shape = shape or mean.shape[2:]
            for j in range(len(x)):  # rows may cross a shard boundary
                i = start + j
                s, r = divmod(i, shard_size)
                if r == 0:
                    rows = min(shard_size, n - i)
                    shards.append(ShardEntry(name=f"shard-{s:05d}", n=rows))
                    files = [
                        np.lib.format.open_memmap(
                            tmp / f"{shards[-1].name}.{kind}.npy", "w+", np.float32,
                            (rows, variants, *shape),
                        )
                        for kind in ("mean", "logvar")
                    ]  # fmt: skip
                files[0][r], files[1][r] = mean[j], logvar[j]
            if progress is not None:
                progress(len(x))
        del files  # flush the memory maps
        if data.labels is not None:
            np.save(tmp / "labels.npy", data.labels.numpy().astype(np.int64))
        if data.captions is not None:
            (tmp / "captions.json").write_text(json.dumps(data.captions))
        manifest = Manifest(
            version=CACHE_VERSION, key=key, inputs=json.loads(json.dumps(inputs, default=str)),
            n=n, variants=variants, latent_shape=tuple(int(v) for v in shape), dtype="float32",
            shard_size=shard_size, shards=shards, class_names=data.class_names,
            has_labels=data.labels is not None, has_captions=data.captions is not None,
        )  # fmt: skip
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=1))  # last: marks complete
        try:
            os.rename(tmp, cache_dir / key)
        except OSError:
            if not (cache_dir / key).exists():
                raise
            # another process finished the same cache first: use theirs
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)  # only our own temporary folder
    return open_cache(cache_dir, inputs)


def open_or_build(
    cache_dir: Path,
    inputs: dict,
    load: Callable[[], ImageData],
    encode: Encoder,
    **kwargs,
) -> tuple[LatentCache, bool]:
    """(cache, built): the existing cache for `inputs`, or a new one from `load()` + `encode`."""
    cache = open_cache(cache_dir, inputs)
    if cache is not None:
        return cache, False
    return build_cache(cache_dir, inputs, load(), encode, **kwargs), True
