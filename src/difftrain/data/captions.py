"""Captions: Hugging Face imagefolder metadata (metadata.jsonl / metadata.csv), kohya side-cars
(`image.txt` next to `image.png`), and the policy for missing or empty ones."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from difftrain.data.errors import DataError

CAPTION_COLUMNS = ("text", "caption", "prompt", "description")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")


def read_metadata(root: Path) -> dict[Path, dict]:
    """Rows of every metadata.jsonl / metadata.csv under root, keyed by the image's path.

    As in Hugging Face imagefolder, `file_name` is relative to the metadata file's folder.
    """
    rows: dict[Path, dict] = {}
    for name in METADATA_FILES:
        for meta in sorted(root.rglob(name)):
            for n, row in enumerate(_rows(meta), start=1):
                if not isinstance(row, dict) or "file_name" not in row:
                    raise DataError(
                        f"{meta}: row {n} has no 'file_name' (Hugging Face imagefolder format)"
                    )
                rows[(meta.parent / str(row["file_name"])).resolve()] = row
    return rows


def _rows(meta: Path):
    if meta.suffix == ".jsonl":
        with meta.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(f"{meta}: line {n} is not JSON ({err.msg})") from None
    else:
        with meta.open(encoding="utf-8", newline="") as f:
            yield from csv.DictReader(f)


def caption_column(rows: dict[Path, dict], requested: str | None) -> str | None:
    """The metadata column that holds captions: the configured one, else the first known name."""
    if not rows:
        return None
    columns = set().union(*(r.keys() for r in rows.values()))
    if requested is not None:
        if requested not in columns:
            raise DataError(
                f"data.caption_column = {requested!r}: not in the metadata (columns: "
                f"{', '.join(sorted(columns))})"
            )
        return requested
    return next((c for c in CAPTION_COLUMNS if c in columns), None)


def sidecar_caption(image: Path, ext: str) -> str | None:
    """kohya-style caption: same stem, `ext` suffix (e.g. '.txt'), next to the image."""
    side = image.with_suffix(ext)
    if side.is_file():
        return side.read_text(encoding="utf-8", errors="replace").strip()
    return None


def filename_caption(key: str) -> str:
    """'red_panda-02.png' → 'red panda 02'."""
    stem = Path(key).stem if "/" in key or "." in key else key
    return " ".join(stem.replace("_", " ").replace("-", " ").split())


def apply_policy(captions: list[str | None], keys: list[str], policy: str) -> list[str] | None:
    """Fill missing/empty captions: 'empty' → '', 'filename' → the file name, 'error' → DataError.

    With no caption anywhere the dataset has none (None), unless the policy is 'filename'.
    """
    missing = [i for i, c in enumerate(captions) if c is None or not c.strip()]
    if len(missing) == len(captions) and policy != "filename":
        return None
    if missing and policy == "error":
        shown = ", ".join(keys[i] for i in missing[:5])
        raise DataError(
            f"{len(missing)} of {len(captions)} images have no caption (e.g. {shown}) and "
            "data.caption_policy = 'error'; add captions, or set data.caption_policy to "
            "'empty' or 'filename'"
        )
    out = [c.strip() if c is not None else "" for c in captions]
    for i in missing:
        out[i] = filename_caption(keys[i]) if policy == "filename" else ""
    return out
