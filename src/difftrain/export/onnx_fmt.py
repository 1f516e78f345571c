"""`--format onnx`: the denoiser D(x, σ, class_labels) → x0̂ (backbone + preconditioning) as one
ONNX graph with a dynamic batch axis, checked against PyTorch with onnxruntime before it is kept.

Uses the TorchScript-based exporter (`dynamo=False`): on this 2-core CPU the dynamo exporter took
~75 s for the tiny U-Net against ~5 s. `aten::searchsorted` (VP's σ → timestep lookup) has no
ONNX op, so the exported copy computes the same index as a count of smaller log σ values.
"""

from __future__ import annotations

import copy
import json
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from difftrain.config import ConfigError
from difftrain.diffusion import VPPrecond
from difftrain.export.source import plain_denoiser
from difftrain.pipeline.run import LoadedRun

MODEL, META = "denoiser.onnx", "onnx_model.json"
OPSET = 17
# |ONNX − PyTorch| on x0̂, relative to max(1, |x0̂|): float32 kernels differ in summation order.
CHECK_RTOL = 1e-4


def _sigma_to_t_onnx(self: VPPrecond, sigma: torch.Tensor) -> torch.Tensor:
    """VPPrecond.sigma_to_t without searchsorted: index = number of table entries below log σ."""
    log_sigma = sigma.float().log()
    n = self.log_sigmas.shape[0]
    hi = (self.log_sigmas.view(1, -1) < log_sigma.view(-1, 1)).sum(1).clamp(1, n - 1)
    lo_val, hi_val = self.log_sigmas[hi - 1], self.log_sigmas[hi]
    w = ((log_sigma - lo_val) / (hi_val - lo_val)).clamp(0, 1)
    return (hi - 1).float() + w


class ExportCheckFailed(RuntimeError):
    """The exported file does not reproduce PyTorch within tolerance; nothing is kept."""


class _Graph(nn.Module):
    """The exported signature: (x, sigma[, class_labels]) → x0."""

    def __init__(self, denoiser: nn.Module, conditional: bool):
        super().__init__()
        self.denoiser, self.conditional = denoiser, conditional

    def forward(self, x, sigma, class_labels=None):
        return self.denoiser(x, sigma, class_labels if self.conditional else None)


def exportable(run: LoadedRun) -> nn.Module:
    """A copy of the run's denoiser whose every op has an ONNX equivalent."""
    den = copy.deepcopy(plain_denoiser(run)).eval()
    if isinstance(den, VPPrecond):
        den.sigma_to_t = types.MethodType(_sigma_to_t_onnx, den)
    return _Graph(den, run.num_classes is not None)


def _inputs(shape, batch: int, num_classes: int | None, sigmas: np.ndarray, seed: int) -> dict:
    """Random check inputs at the given σ (x = x0 + σ·ε with x0 in [-1, 1])."""
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, (batch, *shape)).astype(np.float32)
    feed = {
        "x": (x0 + sigmas.reshape(-1, 1, 1, 1) * rng.standard_normal(x0.shape)).astype(np.float32),
        "sigma": sigmas.astype(np.float32),
    }
    if num_classes is not None:  # real classes and the null class
        feed["class_labels"] = rng.integers(0, num_classes + 1, batch).astype(np.int64)
    return feed


def check_onnx(path: Path, graph: nn.Module, run: LoadedRun, shape) -> dict:
    """Compare onnxruntime with PyTorch at two batch sizes across the σ range; raise if off."""
    import onnxruntime as ort

    d = run.config.diffusion
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, seed in ((1, 1), (5, 2)):  # neither is the traced batch size (2)
        sigmas = np.geomspace(d.sigma_min, d.sigma_max, batch)
        feed = _inputs(shape, batch, run.num_classes, sigmas, seed)
        got = sess.run(["x0"], feed)[0]
        with torch.no_grad():
            ref = graph(*(torch.from_numpy(v) for v in feed.values())).numpy()
        err = float((np.abs(got - ref) / np.maximum(1.0, np.abs(ref))).max())
        worst = max(worst, err)
    if not worst <= CHECK_RTOL:
        raise ExportCheckFailed(f"ONNX check failed: relative error {worst:.2e} > {CHECK_RTOL:.0e}")
    return {"max_relative_error": worst, "tolerance": CHECK_RTOL, "batch_sizes": [1, 5]}


def write_onnx(run: LoadedRun, stage: Path) -> dict:
    """denoiser.onnx + onnx_model.json (shape, classes, σ range, sampler defaults, check)."""
    cfg, k = run.config, run.num_classes
    shape = tuple(getattr(run, "sample_shape", ()) or ()) or (
        cfg.data.channels,
        cfg.data.resolution,
        cfg.data.resolution,
    )
    graph = exportable(run)
    names = ["x", "sigma"] + (["class_labels"] if k is not None else [])
    args = (torch.zeros(2, *shape), torch.ones(2))
    if k is not None:
        args += (torch.zeros(2, dtype=torch.long),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python scalars in the U-Net
        torch.onnx.export(
            graph,
            args,
            str(stage / MODEL),
            input_names=names,
            output_names=["x0"],
            dynamic_axes={n: {0: "batch"} for n in [*names, "x0"]},
            opset_version=OPSET,
            dynamo=False,
        )
    check = check_onnx(stage / MODEL, graph, run, shape)
    d = cfg.diffusion
    meta = {
        "format": "difftrain-onnx",
        "version": 1,
        "objective": d.objective,
        "shape": list(shape),
        "num_classes": k,
        "null_class": k,
        "class_names": run.class_names,
        "inputs": names,
        "sigma_min": d.sigma_min,
        "sigma_max": d.sigma_max,
        "rho": cfg.sample.rho,
        "steps": cfg.sample.steps,
        "sampler": cfg.sample.sampler if cfg.sample.sampler in ("euler", "heun") else "heun",
        "check": check,
    }
    (stage / META).write_text(json.dumps(meta, indent=1))
    return check


def check_onnx_supported(run: LoadedRun) -> None:
    """Every pixel-space denoiser exports; refuse anything else with the reason."""
    plain_denoiser(run)
    if run.config.diffusion.objective not in ("edm", "vp", "iddpm", "flow"):
        raise ConfigError(f"diffusion.objective {run.config.diffusion.objective!r}: no ONNX export")
