"""Image folders: flat or one sub-folder per class, recursive; captions from metadata/side-cars."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from difftrain.data.captions import apply_policy, caption_column, read_metadata, sidecar_caption
from difftrain.data.errors import DataError
from difftrain.data.sources import IMAGE_EXTENSIONS, Source


def list_images(root: Path) -> tuple[list[Path], int]:
    """Image files under root (sorted, recursive, hidden names skipped) and the count of others."""
    found, others = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
            else:
                others += 1
    return found, others


class FolderSource(Source):
    """Images under a folder. When every image sits in a sub-folder, the first one is its class."""

    name = "folder"

    def __init__(self, root: Path, files: list[Path], labels, class_names, captions, others: int):
        super().__init__([str(f) for f in files], labels, class_names, captions)
        self.root, self.files, self.other_files = root, files, others

    @classmethod
    def open(cls, cfg) -> FolderSource:
        root = Path(cfg.path)
        files, others = list_images(root)
        if not files:
            raise DataError(
                f"data.path = '{root}': no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                "under it; point data.path at the image folder"
            )
        rel = [f.relative_to(root).parts for f in files]
        classes = sorted({p[0] for p in rel if len(p) > 1})
        labels, names = None, None
        if classes and all(len(p) > 1 for p in rel):
            index = {c: k for k, c in enumerate(classes)}
            labels = np.asarray([index[p[0]] for p in rel], dtype=np.int64)
            names = classes
        captions = folder_captions(root, files, cfg)
        src = cls(root, files, labels, names, captions, others)
        src.verify(cfg)
        return src

    def raw(self, i: int) -> Path:
        return self.files[i]

    def select(self, keep: list[int]) -> None:
        super().select(keep)
        self.files = [self.files[i] for i in keep]


def folder_captions(root: Path, files: list[Path], cfg) -> list[str] | None:
    """Per-file captions: metadata row, else side-car file; then the missing-caption policy."""
    rows = read_metadata(root)
    column = caption_column(rows, cfg.caption_column)
    captions: list[str | None] = []
    for f in files:
        row = rows.get(f.resolve()) if column else None
        text = row.get(column) if row else None
        if text is None:
            text = sidecar_caption(f, cfg.caption_ext)
        captions.append(None if text is None else str(text))
    return apply_policy(captions, [str(f) for f in files], cfg.caption_policy)
