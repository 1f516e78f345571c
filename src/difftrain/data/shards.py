"""WebDataset tar shards, streamed: shard-level shuffle per epoch, then a sample shuffle buffer.

Members are grouped into samples by WebDataset's rule (webdataset's `base_plus_ext`: key = path
up to the first dot of the file name, field = the rest; consecutive members of one key form a
sample). We read the tar ourselves rather than with webdataset's iterators because those read
every member whole into memory and stop a shard at its first duplicate name: here a member over
`data.max_member_bytes` is never read, and a bad sample (duplicate name, oversized member, bad
`.cls`/`.json`/`.txt`) is skipped, counted by reason and listed while the rest of the shard is
read. A start-up scan lists every sample (side files always; image bytes too with
`data.verify: header|full`) so counts, the bad-file rate and the validation split are known
before training. Reading order is a function of (seed, epoch, rank, world) only;
`epoch_stream` can be replayed to any position exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
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
META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: not sample data
SHARD_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


@dataclass
class Record:
    """One sample as read from a shard: undecoded image bytes, caption and label.

    `bad` is (reason, detail) when the sample cannot be used; `shard` names its file.
    """

    key: str
    image: bytes | None
    caption: str | None
    label: int | None
    bad: tuple[str, str] | None = None
    shard: str = ""

    @property
    def path(self) -> str:
        """How the sample is listed in bad_files.json: shard file name / key."""
        return f"{self.shard}/{self.key}"


def find_shards(path: Path) -> list[Path]:
    """`path` itself when it is a shard, else every shard under it (sorted)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.name.endswith(SHARD_SUFFIXES))


def _label(value) -> int:
    """A class label: a non-negative int (from a .cls text or a JSON number)."""
    if isinstance(value, bytes):
        value = int(value.decode("ascii").strip())  # UnicodeDecodeError is a ValueError
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a non-negative integer")
    return value


def to_record(sample: dict, shard: str = "") -> Record:
    """A sample dict (field → bytes, `__key__`, optional `__bad__`) as a validated Record."""
    key = sample["__key__"]
    if "__bad__" in sample:
        return Record(key, None, None, None, sample["__bad__"], shard)
    image = next((sample[f] for f in IMAGE_FIELDS if f in sample), None)
    caption, label, bad = None, None, None
    cap = next((f for f in CAPTION_FIELDS if f in sample), None)
    try:
        caption = None if cap is None else sample[cap].decode("utf-8")
    except UnicodeDecodeError as err:
        bad = ("bad_caption", f".{cap}: {err}")
    if "cls" in sample and bad is None:
        try:
            label = _label(sample["cls"])
        except ValueError as err:
            bad = ("bad_label", f".cls: {err}")
    if "json" in sample and bad is None:
        try:
            meta = json.loads(sample["json"])
        except ValueError as err:
            bad = ("bad_metadata", f".json: {type(err).__name__}: {err}")
        else:
            bad = _merge_meta(meta, caption, label)
            if bad is None and isinstance(meta, dict):
                if caption is None:
                    caption = meta.get("caption", meta.get("text"))
                if label is None and meta.get("label") is not None:
                    label = meta["label"]
    if bad is not None:
        return Record(key, None, None, None, bad, shard)
    return Record(key, image, caption, label, None, shard)


def _merge_meta(meta, caption, label) -> tuple[str, str] | None:
    """Why a JSON side file's caption/label fields cannot be used (None: they can)."""
    if not isinstance(meta, dict):
        return None  # other JSON is metadata we do not read
    text = meta.get("caption", meta.get("text"))
    if caption is None and text is not None and not isinstance(text, str):
        return ("bad_metadata", f".json: caption {text!r} is not a string")
    if label is None and meta.get("label") is not None:
        try:
            _label(meta["label"])
        except ValueError as err:
            return ("bad_label", f".json label: {err}")
    return None


def iter_samples(
    path: Path,
    max_member: int,
    read_images: bool = True,
    on_error: Callable[[str, str, str], object] | None = None,
) -> Iterator[dict]:
    """Samples of one shard in file order, as webdataset groups them; bad ones carry `__bad__`.

    A member over `max_member` bytes is skipped without being read (tarfile seeks or streams
    past it); with `read_images=False` image members are not read either (b"?" stands in, or
    b"" for an empty one). A shard that cannot be parsed is reported to `on_error` as corrupt
    and ends there; the samples read before stay valid.
    """
    from webdataset.tariterators import base_plus_ext

    seen: set[str] = set()
    current: dict | None = None

    def finish(sample: dict | None) -> dict | None:
        if sample is None:
            return None
        if sample["__key__"] in seen and "__bad__" not in sample:
            sample["__bad__"] = ("duplicate", f"key {sample['__key__']!r} appears twice")
        seen.add(sample["__key__"])
        return sample

    try:
        with tarfile.open(path, "r:*") as tf:
            while (m := tf.next()) is not None:
                tf.members.clear()  # members are not needed again: keep memory flat
                if not m.isreg() or META_MEMBER.match(m.name):
                    continue
                key, field = base_plus_ext(m.name)
                if key is None:
                    continue
                field = field.lower()
                if current is None or key != current["__key__"]:
                    if (done := finish(current)) is not None:
                        yield done
                    current = {"__key__": key}
                if "__bad__" in current:
                    continue
                if field in current:
                    current["__bad__"] = ("duplicate", f"member {m.name!r} appears twice")
                elif m.size > max_member:
                    current["__bad__"] = (
                        "member_too_large",
                        f"{m.name}: {m.size} bytes > data.max_member_bytes = {max_member}",
                    )
                elif field in IMAGE_FIELDS and not read_images:
                    current[field] = b"?" if m.size else b""
                else:
                    current[field] = tf.extractfile(m).read()
    except SHARD_ERRORS as err:
        if on_error is not None:
            on_error(str(path), "corrupt", f"{type(err).__name__}: {err}")
        return  # the partly read sample is dropped with the rest of the shard
    if (done := finish(current)) is not None:
        yield done


def read_shard(path: Path, max_member: int, on_error=None, read_images: bool = True):
    """Every sample of one shard in file order, as Records (bad ones with `.bad` set)."""
    for sample in iter_samples(path, max_member, read_images, on_error):
        yield to_record(sample, path.name)


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
        self.max_member = cfg.max_member_bytes
        self.bad = BadFiles()
        self.bad_keys: set[tuple[int, str]] = set()  # (shard index, key): keys repeat across shards
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
        """Count samples and check side files; with verify != 'none' also probe each image."""
        missing_caption = []
        for s, shard in enumerate(self.shards):
            read_images = cfg.verify != "none"
            for rec in read_shard(shard, self.max_member, self.bad.add, read_images):
                self.bad.total += 1
                try:
                    if rec.bad is not None:
                        raise BadImage(*rec.bad)
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
                    self.bad.add(rec.path, err.reason, err.detail)
                    self.bad_keys.add((s, rec.key))
                    continue
                self.counts[s] += 1
                if rec.caption and rec.caption.strip():
                    self.has_captions = True
                else:
                    missing_caption.append(rec.path)
                if rec.label is not None:
                    self.max_label = max(self.max_label, rec.label)
                else:
                    self.unlabeled += 1
        if self.has_captions and missing_caption and cfg.caption_policy == "error":
            raise DataError(
                f"{len(missing_caption)} samples have no caption (e.g. {missing_caption[0]}) and "
                "data.caption_policy = 'error'; add captions or set it to 'empty' or 'filename'"
            )

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
        """Usable records of these shards in order; `keep(key)` filters (e.g. the train split).

        A sample that turned bad since the scan (the shard changed) is recorded, not yielded.
        """
        for s in shard_ids:
            for rec in read_shard(self.shards[s], self.max_member, self.bad.add):
                if (s, rec.key) in self.bad_keys:
                    continue
                if rec.bad is not None or not rec.image:
                    reason, detail = rec.bad or (
                        ("no_image", "") if rec.image is None else ("empty", "")
                    )
                    self.bad.add(rec.path, reason, detail)
                    self.bad_keys.add((s, rec.key))
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
