"""Seeded generation and image grids. Sample i depends only on (seed, i)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from difftrain.samplers import SAMPLERS, CFGDenoiser, karras_sigmas, randn, sample_generators


def default_labels(num: int, num_classes: int | None) -> torch.Tensor | None:
    """Contiguous blocks of classes: with num = 100 and 10 classes, sample i has label i // 10."""
    if num_classes is None:
        return None
    return torch.arange(num) * num_classes // num


@torch.no_grad()
def generate(
    denoiser: Callable,
    *,
    num: int,
    shape: tuple[int, int, int],
    seed: int,
    labels: torch.Tensor | None = None,
    null_class: int | None = None,
    sampler: str = "heun",
    steps: int = 18,
    guidance: float = 1.0,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    first_index: int = 0,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Generate `num` images in [-1, 1] (float32, N×C×H×W on the CPU)."""
    if guidance != 1.0 and (labels is None or null_class is None):
        raise ValueError("guidance needs a class-conditional model and labels")
    sample_fn = SAMPLERS[sampler]
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho).to(device)
    den = CFGDenoiser(denoiser, guidance, null_class) if null_class is not None else denoiser
    out = []
    for start in range(0, num, batch_size):
        idx = range(first_index + start, first_index + min(start + batch_size, num))
        gens = sample_generators(seed, idx, device="cpu")
        x_T = randn((len(idx), *shape), gens).to(device) * sigmas[0]
        cond = None if labels is None else labels[start : start + len(idx)].to(device)
        x0 = sample_fn(den, x_T, sigmas, cond=cond, generator=gens)
        out.append(x0.float().cpu())
        if callback is not None:
            callback(len(idx))
    return torch.cat(out)


def make_grid(images: torch.Tensor, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 N×C×H×W → one H'×W'×C uint8 array, `ncols` per row (default ≈ √N), white gaps."""
    n, c, h, w = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


def save_image(arr: np.ndarray, path: Path, min_side: int = 0) -> None:
    """Save an H×W×C uint8 array as PNG; upscale (nearest) so the short side is >= min_side."""
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if min_side and min(img.size) < min_side:
        k = math.ceil(min_side / min(img.size))
        img = img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
