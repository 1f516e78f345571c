"""`--format onnx`: the denoiser D(x, σ, cond) → x0̂ (backbone + preconditioning) as one ONNX
graph with a dynamic batch axis, checked against PyTorch with onnxruntime before it is kept.

cond is `class_labels` [B] or, for text runs, `input_ids` [B, L] (the text encoder is inside the
graph). Latent runs add `decoder.onnx` (scaled latents → pixels in [-1, 1]) and text runs a
`tokenizer.json` that frames prompts as difftrain does, so `onnx_sampler` needs no torch.

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
from difftrain.export.tokenizer import framed_tokenizer
from difftrain.pipeline.run import LoadedRun

MODEL, META = "denoiser.onnx", "onnx_model.json"
DECODER, TOKENIZER = "decoder.onnx", "tokenizer.json"
OPSET = 17
# |ONNX − PyTorch| relative to max(1, |PyTorch|): float32 kernels differ in summation order.
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
    """The exported signature: (x, sigma[, cond]) → x0."""

    def __init__(self, denoiser: nn.Module, conditional: bool):
        super().__init__()
        self.denoiser, self.conditional = denoiser, conditional

    def forward(self, x, sigma, cond=None):
        return self.denoiser(x, sigma, cond if self.conditional else None)


class _Decoder(nn.Module):
    """Scaled latents → decoded pixels in [-1, 1], as `Latents.to_images`."""

    def __init__(self, latents):
        super().__init__()
        self.vae, self.scale, self.shift = latents.vae, latents.scale, latents.shift

    def forward(self, x0):
        return self.vae.decode(x0 / self.scale + self.shift).sample.clamp(-1, 1)


def cond_input(run: LoadedRun) -> str | None:
    """Name of the graph's condition input: token ids, class labels, or none."""
    if getattr(run, "text", None) is not None:
        return "input_ids"
    return "class_labels" if run.num_classes is not None else None


def exportable(run: LoadedRun) -> nn.Module:
    """A copy of the run's denoiser whose every op has an ONNX equivalent."""
    den = copy.deepcopy(plain_denoiser(run)).eval()
    if isinstance(den, VPPrecond):
        den.sigma_to_t = types.MethodType(_sigma_to_t_onnx, den)
    return _Graph(den, cond_input(run) is not None)


def _inputs(run: LoadedRun, shape, batch: int, sigmas: np.ndarray, seed: int) -> dict:
    """Random check inputs at the given σ (x = x0 + σ·ε, x0 in [-1, 1]) with conditions:
    real classes and the null class, or random prompts including the empty one."""
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, (batch, *shape)).astype(np.float32)
    feed = {
        "x": (x0 + sigmas.reshape(-1, 1, 1, 1) * rng.standard_normal(x0.shape)).astype(np.float32),
        "sigma": sigmas.astype(np.float32),
    }
    cond = cond_input(run)
    if cond == "input_ids":
        words = ["red", "square", "blue", "disc", "a", "very", "long", "prompt"]
        prompts = [" ".join(rng.choice(words, rng.integers(0, 9))) for _ in range(batch)]
        feed[cond] = run.text.ids(prompts).numpy()
    elif cond == "class_labels":
        feed[cond] = rng.integers(0, run.num_classes + 1, batch).astype(np.int64)
    return feed


def _relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float((np.abs(got - ref) / np.maximum(1.0, np.abs(ref))).max())


def check_onnx(path: Path, graph: nn.Module, run: LoadedRun, shape) -> dict:
    """Compare onnxruntime with PyTorch at two batch sizes across the σ range; raise if off."""
    import onnxruntime as ort

    d = run.config.diffusion
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, seed in ((1, 1), (5, 2)):  # neither is the traced batch size (2)
        sigmas = np.geomspace(d.sigma_min, d.sigma_max, batch)
        feed = _inputs(run, shape, batch, sigmas, seed)
        got = sess.run(["x0"], feed)[0]
        with torch.no_grad():
            ref = graph(*(torch.from_numpy(v) for v in feed.values())).numpy()
        worst = max(worst, _relative_error(got, ref))
    if not worst <= CHECK_RTOL:
        raise ExportCheckFailed(f"ONNX check failed: relative error {worst:.2e} > {CHECK_RTOL:.0e}")
    return {"max_relative_error": worst, "tolerance": CHECK_RTOL, "batch_sizes": [1, 5]}


def _export(module: nn.Module, args: tuple, path: Path, names: list[str], output: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python scalars in the networks
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=[output],
            dynamic_axes={n: {0: "batch"} for n in [*names, output]},
            opset_version=OPSET,
            dynamo=False,
        )


def write_decoder(run: LoadedRun, stage: Path, shape) -> float:
    """decoder.onnx for a latent run, checked like the denoiser; returns its relative error."""
    import onnxruntime as ort

    dec = _Decoder(run.latents).eval()
    _export(dec, (torch.zeros(2, *shape),), stage / DECODER, ["x0"], "images")
    sess = ort.InferenceSession(str(stage / DECODER), providers=["CPUExecutionProvider"])
    x0 = np.random.default_rng(3).standard_normal((3, *shape)).astype(np.float32)
    with torch.no_grad():
        ref = dec(torch.from_numpy(x0)).numpy()
    err = _relative_error(sess.run(["images"], {"x0": x0})[0], ref)
    if not err <= CHECK_RTOL:
        raise ExportCheckFailed(f"ONNX decoder check failed: relative error {err:.2e}")
    return err


def write_onnx(run: LoadedRun, stage: Path) -> dict:
    """denoiser.onnx (+ decoder.onnx, tokenizer.json) + onnx_model.json; returns the check."""
    cfg, k, cond = run.config, run.num_classes, cond_input(run)
    shape = tuple(getattr(run, "sample_shape", ()) or ()) or (
        cfg.data.channels,
        cfg.data.resolution,
        cfg.data.resolution,
    )
    names = ["x", "sigma"] + ([cond] if cond else [])
    args = (torch.zeros(2, *shape), torch.ones(2))
    if cond == "input_ids":
        args += (run.text.ids(["", ""]),)
    elif cond == "class_labels":
        args += (torch.zeros(2, dtype=torch.long),)
    graph = exportable(run)
    _export(graph, args, stage / MODEL, names, "x0")
    check = check_onnx(stage / MODEL, graph, run, shape)
    latent = getattr(run, "latents", None) is not None
    if latent:
        check["decoder_max_relative_error"] = write_decoder(run, stage, shape)
    if cond == "input_ids":
        framed_tokenizer(run.text.tokenizer, pad_and_truncate=True).save(str(stage / TOKENIZER))
    d = cfg.diffusion
    meta = {
        "format": "difftrain-onnx",
        "version": 1,
        "objective": d.objective,
        "shape": list(shape),
        "image_shape": [cfg.data.channels, cfg.data.resolution, cfg.data.resolution],
        "decoder": DECODER if latent else None,
        "cond_input": cond,
        "tokenizer": TOKENIZER if cond == "input_ids" else None,
        "num_classes": k,
        "null_class": k,
        "class_names": run.class_names if k is not None else None,
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
    """Refuse what the torch-free sampler could not feed, naming why."""
    plain_denoiser(run)
    if run.config.text.encoder == "path":
        raise ConfigError(
            "--format onnx: runs with text.encoder = 'path' (a pretrained tokenizer read from "
            "text.path) are not packaged yet; use --format diffusers"
        )
