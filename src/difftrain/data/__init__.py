"""Data sources, preprocessing and the in-memory dataset."""

from difftrain.data.dataset import ImageData, load_data
from difftrain.data.sources import DataError
from difftrain.data.transforms import random_hflip, to_model_range, to_uint8

__all__ = ["DataError", "ImageData", "load_data", "random_hflip", "to_model_range", "to_uint8"]
