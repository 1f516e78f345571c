"""The source registry: `data.source` names one class here. A new source is one class + one line."""

from __future__ import annotations

from difftrain.data.folder import FolderSource
from difftrain.data.hf import HFSource
from difftrain.data.shards import ShardSource
from difftrain.data.sources import DigitsSource, IdxSource, NpzSource

SOURCES = {
    "folder": FolderSource,
    "idx": IdxSource,
    "digits": DigitsSource,
    "npz": NpzSource,
    "hf": HFSource,
    "webdataset": ShardSource,
}


def open_source(cfg):
    """List (and, as data.verify says, check) the configured source's samples."""
    return SOURCES[cfg.source].open(cfg)
