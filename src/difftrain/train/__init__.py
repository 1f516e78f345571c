"""The training loop and what only training needs: optimizers, EMA, metrics, data order."""

from difftrain.train.loop import RunSummary, train

__all__ = ["RunSummary", "train"]
