"""Data sources, preprocessing, augmentation, the in-memory dataset and the streaming loader."""

from difftrain.data.dataset import ImageData, load_data
from difftrain.data.decode import BadFiles, write_bad_files
from difftrain.data.errors import DataError
from difftrain.data.loader import Batch, Loader
from difftrain.data.registry import SOURCES, open_source
from difftrain.data.streaming import open_loader
from difftrain.data.transforms import augment_batch, random_hflip, to_model_range, to_uint8

__all__ = [
    "SOURCES",
    "BadFiles",
    "Batch",
    "DataError",
    "ImageData",
    "Loader",
    "augment_batch",
    "load_data",
    "open_loader",
    "open_source",
    "random_hflip",
    "to_model_range",
    "to_uint8",
    "write_bad_files",
]
