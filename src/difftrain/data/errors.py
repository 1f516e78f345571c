"""The data layer's one exception type (defined in difftrain.errors, which imports nothing heavy)."""

from difftrain.errors import DataError

__all__ = ["DataError"]
