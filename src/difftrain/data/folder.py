"""Image folders: flat or one sub-folder per class, recursive; captions from metadata/side-cars."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from difftrain.data.captions import apply_policy, caption_column, read_metadata, sidecar_caption
from difftrain.data.errors import DataError
from difftrain.data.sources import IMAGE_EXTENSIONS, Source


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of a directory, links followed; None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def list_images(root: Path) -> tuple[list[Path], int, list[tuple[str, str]]]:
    """Image files under root (sorted, recursive, hidden names skipped), the count of other
    files, and the directories that could not be read as (path, error).

    Directory symlinks are followed, and each real directory is walked once (by device and
    inode): a directory inside root is reached by its own path, never through a link to it,
    so a link back to an ancestor (a cycle) or a second link to one directory adds nothing.
    """
    real = {_identity(d) for d, _, _ in os.walk(root)}  # without links; errors come below
    found, others, unreadable = [], 0, []
    seen: set[tuple[int, int] | None] = set()

    def walk_error(err: OSError) -> None:
        unreadable.append((str(err.filename), f"{type(err).__name__}: {err.strerror}"))

    def wanted(path: str) -> bool:
        ident = _identity(path)
        if ident is None:
            return True  # os.walk reports it through walk_error
        if ident in seen or (ident in real and os.path.islink(path)):
            return False
        seen.add(ident)
        return True

    seen.add(_identity(str(root)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error, followlinks=True):
        dirnames[:] = [
            d
            for d in sorted(dirnames)
            if not d.startswith(".") and wanted(os.path.join(dirpath, d))
        ]
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
            else:
                others += 1
    return found, others, unreadable


class FolderSource(Source):
    """Images under a folder. When every image sits in a sub-folder, the first one is its class."""

    name = "folder"

    def __init__(self, root: Path, files: list[Path], labels, class_names, captions, others: int):
        super().__init__([str(f) for f in files], labels, class_names, captions)
        self.root, self.files, self.other_files = root, files, others

    @classmethod
    def open(cls, cfg) -> FolderSource:
        root = Path(cfg.path)
        files, others, unreadable = list_images(root)
        if not files:
            locked = f"; {len(unreadable)} unreadable: {unreadable[0][0]}" if unreadable else ""
            raise DataError(
                f"data.path = '{root}': no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                f"under it{locked}; point data.path at the image folder (or fix permissions)"
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
        for path, detail in unreadable:  # its images cannot even be listed: one bad entry each
            src.bad.total += 1
            src.bad.add(path, "unreadable", f"directory: {detail}")
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
