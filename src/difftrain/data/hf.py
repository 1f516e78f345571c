"""Hugging Face `datasets`: a dataset saved with `save_to_disk`, or local parquet files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from difftrain.data.captions import CAPTION_COLUMNS, apply_policy
from difftrain.data.errors import DataError
from difftrain.data.sources import Source

IMAGE_COLUMNS = ("image", "img", "png", "jpg", "jpeg", "webp", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "class", "cls")


def parquet_files(path: Path) -> list[Path]:
    """`path` itself when it is a .parquet file, else every .parquet under it (sorted)."""
    if path.is_file():
        return [path] if path.suffix == ".parquet" else []
    return sorted(path.rglob("*.parquet"))


def is_saved_dataset(path: Path) -> bool:
    """A folder written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    return path.is_dir() and any(
        (path / n).is_file() for n in ("state.json", "dataset_dict.json", "dataset_info.json")
    )


def _open_dataset(cfg):
    import datasets

    path = Path(cfg.path)
    if is_saved_dataset(path):
        ds = datasets.load_from_disk(str(path))
    else:
        files = parquet_files(path)
        if not files:
            raise DataError(
                f"data.path = '{path}': neither a save_to_disk folder nor .parquet files; "
                "point data.path at one"
            )
        ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    if isinstance(ds, datasets.DatasetDict):
        if cfg.split not in ds:
            raise DataError(f"data.split = {cfg.split!r}: not in {path} (splits: {', '.join(ds)})")
        ds = ds[cfg.split]
    return ds


def _pick(
    columns: list[str], requested: str | None, known: tuple, key: str, what=None, features=None
):
    """The configured column, else the first of the feature type `what`, else a known name."""
    if requested is not None:
        if requested not in columns:
            raise DataError(
                f"data.{key} = {requested!r}: no such column (columns: {', '.join(columns)})"
            )
        return requested
    if what is not None and features is not None:
        typed = [c for c in columns if isinstance(features[c], what)]
        if typed:
            return typed[0]
    return next((c for c in known if c in columns), None)


class HFSource(Source):
    """Rows of a `datasets.Dataset`; the image column is read undecoded and decoded safely here."""

    name = "hf"

    def __init__(self, ds, image_col: str, keys, labels, class_names, captions):
        super().__init__(keys, labels, class_names, captions)
        self.ds, self.image_col = ds, image_col
        self.rows = np.arange(len(ds))

    @classmethod
    def open(cls, cfg) -> HFSource:
        import datasets

        ds = _open_dataset(cfg)
        cols, feats = list(ds.column_names), ds.features
        image_col = _pick(
            cols, cfg.image_column, IMAGE_COLUMNS, "image_column", datasets.Image, feats
        )
        if image_col is None:
            raise DataError(
                f"{cfg.path}: no image column found (columns: {', '.join(cols)}); "
                "set data.image_column"
            )
        if isinstance(feats[image_col], datasets.Image):
            ds = ds.cast_column(image_col, datasets.Image(decode=False))
        label_col = _pick(
            cols, cfg.label_column, LABEL_COLUMNS, "label_column", datasets.ClassLabel, feats
        )
        labels, names = None, None
        if label_col is not None:
            labels = np.asarray(ds[label_col], dtype=np.int64)
            if isinstance(feats[label_col], datasets.ClassLabel):
                names = list(feats[label_col].names)
            elif len(labels):
                names = [str(i) for i in range(int(labels.max()) + 1)]
        text_col = _pick(cols, cfg.caption_column, CAPTION_COLUMNS, "caption_column")
        keys = [f"{cfg.path}#{i}" for i in range(len(ds))]
        captions = None
        if text_col is not None:
            captions = apply_policy(list(ds[text_col]), keys, cfg.caption_policy)
        elif cfg.caption_policy == "filename":
            captions = apply_policy([None] * len(ds), keys, "filename")
        src = cls(ds, image_col, keys, labels, names, captions)
        src.verify(cfg)
        return src

    def raw(self, i: int):
        value = self.ds[int(self.rows[i])][self.image_col]
        if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes", "path"}
            if value.get("bytes"):
                return value["bytes"]
            if value.get("path"):
                return Path(value["path"])
            return b""
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return Path(value)
        return np.asarray(value, dtype=np.uint8)  # an array column (e.g. pixel lists)

    def select(self, keep: list[int]) -> None:
        super().select(keep)
        self.rows = self.rows[np.asarray(keep, dtype=np.int64)]
