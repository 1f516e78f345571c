"""Hyperparameter sweeps: Optuna studies whose trials are ordinary training runs."""

from difftrain.sweep.space import Param, load_space
from difftrain.sweep.study import SweepResult, report_study, run_sweep

__all__ = ["Param", "SweepResult", "load_space", "report_study", "run_sweep"]
