"""Evaluation: validation loss, sample-quality metrics, likelihood, reports."""
