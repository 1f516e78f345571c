"""Evaluate a sequence run: generated windows against the real windows of its data.

Real windows are cut from the run's data exactly as in training (same length, stride, missing
rule); generated ones come from the one generation request. Writes nothing unless `plot` names
a PNG (real vs generated windows, data units).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from difftrain.data.sequence import apply_missing_rule, read_series, windows
from difftrain.eval.sequence_metrics import sequence_metrics
from difftrain.pipeline.request import GenerationRequest, plan_request, run_request_tensors
from difftrain.pipeline.run import load_run
from difftrain.pipeline.sequence import SequenceInfo, plot_windows


def real_windows(cfg) -> np.ndarray:
    """The data's windows (N×L×C, data units, NaN = missing) as the run cut them."""
    sc = cfg.sequence
    series = apply_missing_rule(read_series(cfg.data.path, sc.columns, sc.npz_key), sc.missing,
                                cfg.data.path)  # fmt: skip
    x, _ = windows(series.values, sc.length, sc.stride, sc.min_observed)
    return x[:, :, 0, :].permute(0, 2, 1).numpy()


def evaluate_sequence_run(
    run_dir: str | Path, num: int = 200, steps: int | None = None, seed: int = 1,
    plot: Path | None = None,
) -> dict[str, float]:  # fmt: skip
    """Metrics of `num` generated windows (seed, i) against all real windows."""
    run = load_run(run_dir)
    info = SequenceInfo.load(Path(run_dir))
    plan = plan_request(run, GenerationRequest(num=num, seed=seed, steps=steps))
    with torch.no_grad():
        x = torch.cat(list(run_request_tensors(run, plan)))
    fake = info.denormalise(x)[:, :, 0, :].permute(0, 2, 1).numpy()
    real = real_windows(run.config)
    if plot is not None:
        plot_windows(real[np.random.default_rng(0).permutation(len(real))], fake, Path(plot),
                     info.columns)  # fmt: skip
    return {"num": num, "real_windows": len(real), **sequence_metrics(real, fake, seed)}
