"""WebDataset tar shards, streamed: shard-level shuffle per epoch, then a sample shuffle buffer.

Tar members are grouped into samples with the `webdataset` package's own iterators (key =
path up to the first dot, field = the rest). A start-up scan lists every sample (tar headers
only, or the image bytes too with `data.verify: header|full`) so counts, the bad-file rate
and the validation split are known before training. Reading order is a function of
(seed, epoch, rank, world) only; `epoch_stream` can be replayed to any position exactly.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from difftrain.data.captions import filename_caption
from difftrain.data.decode import BadFiles, BadImage, decode_image, probe_image
from difftrain.data.errors import DataError
from difftrain.data.order import epoch_permutation, mix_seed

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "image")
CAPTION_FIELDS = ("txt", "caption", "text")


@dataclass
class Record:
    """One sample as read from a shard: undecoded image bytes, caption and label."""

    key: str
    image: bytes | None
    caption: str | None
    label: int | None


def find_shards(path: Path) -> list[Path]:
    """`path` itself when it is a shard, else every shard under it (sorted)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.name.endswith(SHARD_SUFFIXES))


def to_record(sample: dict) -> Record:
    """A webdataset sample dict (field → bytes) as a Record."""
    image = next((sample[f] for f in IMAGE_FIELDS if f in sample), None)
    caption = next(
        (sample[f].decode("utf-8", "replace") for f in CAPTION_FIELDS if f in sample), None
    )
    label = None
    if "cls" in sample:
        label = int(sample["cls"].decode().strip())
    if "json" in sample:
        meta = json.loads(sample["json"])
        if isinstance(meta, dict):
            caption = caption if caption is not None else meta.get("caption", meta.get("text"))
            label = label if label is not None else meta.get("label")
    return Record(sample["__key__"], image, caption, None if label is None else int(label))


def read_shard(path: Path, on_error=None) -> Iterator[Record]:
    """Every sample of one shard in file order (webdataset's tar expander + key grouping)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    def handler(exn: Exception) -> bool:
        if on_error is not None:
            on_error(
                str(path), "corrupt", f"{type(exn).__name__}: {exn.args[0] if exn.args else ''}"
            )
        return False  # stop this shard; what was read stays valid

    with path.open("rb") as stream:
        files = tar_file_expander([{"url": str(path), "stream": stream}], handler=handler)
        for sample in group_by_keys(files, handler=handler):
            yield to_record(sample)


def is_validation(key: str, fraction: float, seed: int) -> bool:
    """Hash split: a sample's side depends on (key, seed) only, so streams need no index."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big")
    return h / 2**64 < fraction


class ShardSource:
    """Tar shards read as streams; `counts[s]` usable samples in shard s after the scan."""

    name = "webdataset"
    streaming = True

    def __init__(self, shards: list[Path], cfg):
        self.shards = shards
        self.caption_policy = cfg.caption_policy
        self.bad = BadFiles()
        self.bad_keys: set[str] = set()
        self.counts = [0] * len(shards)
        self.has_captions = False
        self.max_label = -1
        self.unlabeled = 0
        self.sizes: dict[str, tuple[int, int]] = {}

    @classmethod
    def open(cls, cfg) -> ShardSource:
        shards = find_shards(Path(cfg.path))
        if not shards:
            raise DataError(f"data.path = '{cfg.path}': no .tar shards under it")
        src = cls(shards, cfg)
        src.scan(cfg)
        return src

    def scan(self, cfg) -> None:
        """Count samples; with verify != 'none' also probe each image header (reads the bytes)."""
        missing_caption = []
        for s, shard in enumerate(self.shards):
            for rec in self._scan_records(shard, cfg.verify != "none"):
                self.bad.total += 1
                key = f"{shard.name}/{rec.key}"
                try:
                    if rec.image is None:
                        raise BadImage(
                            "no_image", "no image field (" + ", ".join(IMAGE_FIELDS) + ")"
                        )
                    if not rec.image:
                        raise BadImage("empty")
                    if cfg.verify == "full":
                        self.sizes[rec.key] = decode_image(rec.image, cfg.max_pixels).size
                    elif cfg.verify == "header":
                        self.sizes[rec.key], _ = probe_image(rec.image, cfg.max_pixels)
                except BadImage as err:
                    self.bad.add(key, err.reason, err.detail)
                    self.bad_keys.add(rec.key)
                    continue
                self.counts[s] += 1
                if rec.caption and rec.caption.strip():
                    self.has_captions = True
                else:
                    missing_caption.append(key)
                if rec.label is not None:
                    self.max_label = max(self.max_label, rec.label)
                else:
                    self.unlabeled += 1
        if self.has_captions and missing_caption and cfg.caption_policy == "error":
            raise DataError(
                f"{len(missing_caption)} samples have no caption (e.g. {missing_caption[0]}) and "
                "data.caption_policy = 'error'; add captions or set it to 'empty' or 'filename'"
            )

    def _scan_records(self, shard: Path, read_images: bool) -> Iterator[Record]:
        if read_images:
            yield from read_shard(shard, self.bad.add)
            return
        # Headers only: tarfile seeks over member data; an image member's size stands in.
        from webdataset.tariterators import base_plus_ext

        try:
            with tarfile.open(shard) as tf:
                groups: dict[str, dict] = {}
                for m in tf:
                    base, ext = base_plus_ext(m.name) if m.isreg() else (None, None)
                    if base is not None:
                        groups.setdefault(base, {})[ext.lower()] = m
                for key, fields in groups.items():
                    img = next((fields[f] for f in IMAGE_FIELDS if f in fields), None)
                    cap = next((f for f in CAPTION_FIELDS if f in fields), None)
                    caption = tf.extractfile(fields[cap]).read().decode() if cap else None
                    label = int(tf.extractfile(fields["cls"]).read()) if "cls" in fields else None
                    image = None if img is None else (b"" if img.size == 0 else b"?")
                    yield Record(key, image, caption, label)
        except (tarfile.TarError, OSError) as err:
            self.bad.add(str(shard), "corrupt", f"{type(err).__name__}: {err}")

    def __len__(self) -> int:
        return sum(self.counts)

    @property
    def class_names(self) -> list[str] | None:
        if self.max_label < 0 or self.unlabeled:  # labels only when every sample has one
            return None
        return [str(i) for i in range(self.max_label + 1)]

    @property
    def captions(self) -> bool:
        return self.has_captions or self.caption_policy == "filename"

    def caption_of(self, rec: Record) -> str | None:
        """The record's caption with the missing-caption policy applied (None: no captions)."""
        if not self.captions:
            return None
        if rec.caption and rec.caption.strip():
            return rec.caption.strip()
        return filename_caption(rec.key) if self.caption_policy == "filename" else ""

    def records(self, shard_ids, keep=None) -> Iterator[Record]:
        """Usable records of these shards in order; `keep(key)` filters (e.g. the train split)."""
        for s in shard_ids:
            for rec in read_shard(self.shards[s], self.bad.add):
                if rec.key in self.bad_keys or rec.image is None or not rec.image:
                    continue
                if keep is None or keep(rec.key):
                    yield rec


def rank_shards(n_shards: int, seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """This rank's shards for the epoch: a seeded shard permutation, every world-th one."""
    return epoch_permutation(n_shards, seed, epoch)[rank::world].tolist()


def epoch_stream(
    source: ShardSource, seed: int, epoch: int, rank: int, world: int, buffer_size: int, keep=None
) -> Iterator[Record]:
    """One epoch of this rank's records: shard shuffle, then a seeded shuffle buffer."""
    rng = np.random.Generator(np.random.PCG64(mix_seed(seed, epoch, rank, 0x5B)))
    buf: list[Record] = []
    for rec in source.records(rank_shards(len(source.shards), seed, epoch, rank, world), keep):
        if len(buf) < buffer_size:
            buf.append(rec)
            continue
        j = int(rng.integers(len(buf)))
        buf[j], rec = rec, buf[j]
        yield rec
    while buf:
        yield buf.pop(int(rng.integers(len(buf))))
