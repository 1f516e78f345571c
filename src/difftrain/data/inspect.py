"""`difftrain data inspect`: what a dataset holds, before any model loads."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np

from difftrain.data.buckets import assign, bucket_counts
from difftrain.data.decode import BadImage, decode_image, probe_image
from difftrain.data.hf import is_saved_dataset, parquet_files
from difftrain.data.registry import open_source
from difftrain.data.shards import find_shards, is_validation

TOP = 10  # rows shown in each histogram


def guess_source(path: Path) -> str:
    """The data.source a bare path most likely is."""
    if path.is_file():
        if path.suffix == ".npz":
            return "npz"
        if path.suffix == ".parquet":
            return "hf"
        return "webdataset" if find_shards(path) else "folder"
    if (path / "train-images-idx3-ubyte").exists() or (
        path / "train-images-idx3-ubyte.gz"
    ).exists():
        return "idx"
    if is_saved_dataset(path):
        return "hf"
    if any(path.glob("*.tar")) or any(path.glob("*.tar.gz")):
        return "webdataset"
    if parquet_files(path):
        return "hf"
    return "folder"


def _stats(values: list[int]) -> dict:
    if not values:
        return {}
    s = sorted(values)
    return {"min": s[0], "median": s[len(s) // 2], "mean": round(sum(s) / len(s), 2), "max": s[-1]}


def _look(src: Path | bytes, max_pixels: int, full: bool) -> tuple[tuple[int, int], str]:
    """Size (after EXIF) and mode: from a full decode (finds truncation) or the header only."""
    if not full:
        return probe_image(src, max_pixels)
    img = decode_image(src, max_pixels)
    return img.size, img.mode


def _samples(src, cfg, full: bool):
    """(key, size, mode, content bytes, label, caption) per usable sample; bad ones recorded."""
    if src.streaming:
        for rec in src.records(range(len(src.shards))):
            try:
                size, mode = _look(rec.image, cfg.max_pixels, full)
            except BadImage as err:
                src.bad.add(rec.path, err.reason, err.detail)
                continue
            yield rec.key, size, mode, rec.image, rec.label, src.caption_of(rec)
        return
    for i in range(len(src)):
        try:
            raw = src.raw(i)
            if isinstance(raw, np.ndarray):
                size, mode = src.probe(i, cfg.max_pixels)
            else:
                size, mode = _look(raw, cfg.max_pixels, full)
            content = src.content(i)
        except (BadImage, OSError) as err:
            src.bad.add(
                src.keys[i], getattr(err, "reason", "unreadable"), getattr(err, "detail", str(err))
            )
            continue
        label = None if src.labels is None else int(src.labels[i])
        caption = None if src.captions is None else src.captions[i]
        yield src.keys[i], size, mode, content, label, caption


def inspect_data(cfg, batch_size: int = 64, seed: int = 0, full: bool = True) -> dict:
    """Counts, size/mode histograms, class balance, captions, duplicates, bad files, steps.

    `full` decodes every image (finds truncated files); otherwise headers only (faster).
    """
    src = open_source(cfg.model_copy(update={"verify": "none"}))  # probed below, once
    sizes, modes, labels, hashes = Counter(), Counter(), Counter(), {}
    cap_words, n, n_captioned, dims, keys = [], 0, 0, [], []
    for key, size, mode, content, label, caption in _samples(src, cfg, full):
        n += 1
        keys.append(key)
        dims.append(size)
        sizes[f"{size[0]}x{size[1]}"] += 1
        modes[mode] += 1
        if label is not None:
            labels[label] += 1
        if caption is not None and caption.strip():
            n_captioned += 1
            cap_words.append(len(caption.split()))
        hashes.setdefault(hashlib.blake2b(content, digest_size=16).hexdigest(), []).append(key)
    dup_groups = [v for v in hashes.values() if len(v) > 1]
    names = src.class_names
    if src.streaming:
        n_val = sum(is_validation(k, cfg.val_fraction, seed) for k in keys)
    else:
        n_val = int(round(n * cfg.val_fraction))
    n_train = n - n_val
    report = {
        "source": cfg.source,
        "path": str(cfg.path) if cfg.path else None,
        "images": n,
        "bad_files": src.bad.to_dict() | {"total": n + len(src.bad)},
        "sizes": dict(sizes.most_common(TOP)),
        "distinct_sizes": len(sizes),
        "width": _stats([d[0] for d in dims]),
        "height": _stats([d[1] for d in dims]),
        "modes": dict(modes.most_common()),
        "classes": (
            {
                (names[k] if names and k < len(names) else str(k)): c
                for k, c in sorted(labels.items())
            }
            if labels
            else None
        ),
        "captions": {
            "captioned": n_captioned,
            "coverage": round(n_captioned / n, 4) if n else 0.0,
            "words": _stats(cap_words),
        },
        "duplicates": {
            "groups": len(dup_groups),
            "extra_copies": sum(len(g) - 1 for g in dup_groups),
            "examples": dup_groups[:5],
        },
        "train_images": n_train,
        "val_images": n_val,
        "batch_size": batch_size,
        "steps_per_epoch": n_train // batch_size if n_train else 0,
        "memory_bytes_in_memory_loader": n * cfg.channels * cfg.resolution**2,
    }
    if cfg.buckets.enabled and dims:
        b = cfg.buckets
        buckets, bucket_of = assign(
            dims, b.resolutions or [cfg.resolution], b.step, b.max_ratio, b.upscale
        )
        counts = bucket_counts(buckets, bucket_of, batch_size)
        report["buckets"] = counts
        report["steps_per_epoch"] = sum(c["batches"] for c in counts)
    report["bad_files"]["rate"] = round(len(src.bad) / max(1, n + len(src.bad)), 6)
    return report
